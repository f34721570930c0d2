"""``geo-pix2pix export-onnx``: the generator as an ONNX model."""

from __future__ import annotations

import click

from .common import check_new_file
from .options import overwrite_opt, weights_opt


@click.command("export-onnx")
@click.argument("dst", type=click.Path(dir_okay=False))
@weights_opt
@overwrite_opt
@click.pass_context
def export_onnx(ctx, dst, weights, overwrite):
    """Write the generator of WEIGHTS (default: the shipped model) as an ONNX model DST.

    Run it with --weights DST (onnxruntime, CPU; needs geo-pix2pix[onnx]).
    """
    from ..model.accel.onnx import export_onnx as export_fn
    from ..model.spec import resolve_model

    out = check_new_file(dst, overwrite)
    model = resolve_model(weights, "cpu")
    export_fn(model, out)
    if not ctx.meta.get("quiet"):
        click.echo(f"wrote {out}", err=True)
