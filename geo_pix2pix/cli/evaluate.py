"""``geo-pix2pix evaluate``: a model's scores on paired tiles, against two baselines."""

from __future__ import annotations

import click

from .common import check_new_file, model_spec, pair_source, progress_bar
from .options import FRACTION, count, device_opt, overlap_opt, overwrite_opt, precision_opt, weights_opt


@click.command()
@click.argument("data", type=click.Path())
@click.option("--layout", type=click.Choice(["side-by-side", "folders", "rasters"]), default="side-by-side",
              show_default=True,
              help="As for train: side-by-side, folders (DATA/map, DATA/aerial) or rasters.")
@click.option("--direction", type=click.Choice(["AtoB", "BtoA"]), default="BtoA", show_default=True,
              help="side-by-side only: BtoA = right half is the map (the pix2pix maps dataset).")
@click.option("--aerial", type=click.Path(), default=None, help="rasters layout: the aerial raster.")
@click.option("--split", type=click.Choice(["val", "train", "all"]), default="val", show_default=True,
              help="Tiles scored; val is the split the trainer holds out at the same --val-fraction.")
@click.option("--val-fraction", type=FRACTION, default=0.1, show_default=True)
@click.option("--split-by", type=click.Choice(["region", "hash"]), default="region", show_default=True,
              help="As for train: region = whole neighbourhoods held out; hash = a hash of the file names.")
@click.option("--limit", type=count(), default=None, help="Score only the first N tiles of the split.")
@weights_opt
@device_opt
@precision_opt
@overlap_opt
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write the figures to this JSON file.")
@click.option("--grid", "grid_path", type=click.Path(dir_okay=False), default=None,
              help="Write a PNG grid: map | palette baseline | model | real, one tile a row.")
@click.option("--grid-tiles", type=count(), default=8, show_default=True, help="Rows of the --grid image.")
@click.option("--no-structure", is_flag=True,
              help="Skip the structure score (its judge trains for minutes the first time on a split; "
                   "it is then cached in ~/.cache/geo-pix2pix/judges).")
@overwrite_opt
@click.pass_context
def evaluate(ctx, data, layout, direction, aerial, split, val_fraction, split_by, limit, weights, device, precision,
             overlap, json_path, grid_path, grid_tiles, no_structure, overwrite):
    """Score a model on paired tiles in DATA against real aerials and two baselines.

    Prints L1, PSNR, SSIM, colour-histogram distance and sharpness ratio for the model,
    a palette-lookup baseline and a mean-colour baseline (both fitted on the training
    split), and the structure score: how much of the map's roads, water and green a
    segmenter trained on the training split's real aerials finds in the outputs,
    relative to the real aerials (1 = as much as a photo).
    """
    from ..evaluate.evaluation import evaluate as evaluate_fn
    from ..evaluate.evaluation import format_table, write_report
    from ..grid.tiling import DEFAULT_OVERLAP
    from ..model.spec import resolve_model

    json_file, grid_file = check_new_file(json_path, overwrite), check_new_file(grid_path, overwrite)
    source = pair_source(layout, data, direction, aerial)
    model = resolve_model(model_spec(weights, device, precision))
    bar, update = progress_bar(ctx, "evaluate")
    with bar:
        result = evaluate_fn(source, model, split=split, val_fraction=val_fraction, split_by=split_by, limit=limit,
                             overlap=DEFAULT_OVERLAP if overlap is None else overlap,
                             grid_tiles=grid_tiles if grid_file else 0, structure=not no_structure,
                             progress=update)
    click.echo(format_table(result))
    for p in write_report(result, model, data, weights, json_path=json_file, grid_path=grid_file):
        if not ctx.meta.get("quiet"):
            click.echo(f"wrote {p}", err=True)
