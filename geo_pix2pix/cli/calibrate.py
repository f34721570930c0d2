"""``geo-pix2pix calibrate``: a checkpoint's int8 calibration on map tiles."""

from __future__ import annotations

import click

from .common import check_new_file, pair_source
from .options import count, overwrite_opt, weights_opt


@click.command()
@click.argument("data", nargs=-1, required=True, type=click.Path())
@click.option("--out", "-o", "out_path", required=True, type=click.Path(dir_okay=False),
              help="Checkpoint to write: WEIGHTS with the int8 calibration added.")
@weights_opt
@click.option("--layout", type=click.Choice(["maps", "side-by-side", "folders"]), default="maps", show_default=True,
              help="maps: DATA are map rasters or images; side-by-side / folders: DATA is a paired "
                   "training folder, as for train (the map halves of its training split are used).")
@click.option("--direction", type=click.Choice(["AtoB", "BtoA"]), default="BtoA", show_default=True,
              help="side-by-side only: BtoA = right half is the map.")
@click.option("--tiles", "max_tiles", type=count(), default=1024, show_default=True,
              help="Map tiles to observe (spread evenly over DATA).")
@click.option("--bands", type=str, default=None,
              help="maps layout: bands of DATA to read as R,G,B (1-based), as render --bands.")
@overwrite_opt
@click.pass_context
def calibrate(ctx, data, out_path, weights, layout, direction, max_tiles, bands, overwrite):
    """Calibrate WEIGHTS for --precision int8 on the map tiles in DATA.

    Runs the model on up to --tiles 256×256 map tiles, records the range of every
    layer's activations and writes a copy of the checkpoint holding them. Use maps
    like the ones you will render.
    """
    from ..errors import OptionError
    from ..model.accel.int8 import calibrate as calibrate_fn
    from ..model.checkpoints import export_checkpoint
    from ..model.load import default_model_path
    from ..model.spec import resolve_model
    from ..train.calibration import calibration_batches

    out_file = check_new_file(out_path, overwrite)
    src_weights = weights or default_model_path()
    model = resolve_model(src_weights, "cpu")
    if layout == "maps":
        batches = calibration_batches(data, bands=bands, limit=max_tiles)
    else:
        if len(data) != 1:
            raise OptionError(f"--layout {layout} takes one DATA folder, not {len(data)}")
        if bands:
            raise OptionError(f"--bands applies to --layout maps; --layout {layout} reads the map halves "
                              "of RGB training tiles: drop --bands")
        batches = calibration_batches(pair_source(layout, data[0], direction, None), limit=max_tiles,
                                      label=data[0])
    calibration = calibrate_fn(model.generator, batches)
    calibration["data"] = ", ".join(map(str, data))
    export_checkpoint(src_weights, out_file, int8=calibration)
    if not ctx.meta.get("quiet"):
        click.echo(f"wrote {out_file} (int8 calibration on {calibration['tiles']} map tiles)", err=True)
