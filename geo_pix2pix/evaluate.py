"""Score a model against real aerials and against two baselines, on held-out pairs.

Each pair is brought to the evaluation size (256 × 256, PIL bicubic, map and aerial
alike) and the model is applied to the map exactly as ``geo-pix2pix render`` applies
it to a 256 × 256 map image: the same tile grid (:class:`tiling.TileGrid`, by default
with render's overlap, so a 256 px image is covered by four reflection-padded tiles),
the same tiles and nodata rule (:func:`pipeline.strip_tiles`), the same batching and
NaN check (:func:`pipeline.run_tiles`), the same blending (:class:`mosaic.StripMosaic`)
and the same rounding to 8 bits. ``tests/test_evaluate.py`` checks that the pixels are
identical to those of :func:`geo_pix2pix.render` on a PNG of the map.

Figures (definitions in :mod:`metrics`), per method:

- ``l1``, ``psnr``, ``ssim``: means over the tiles of the per-tile figures;
- ``hist_distance``: colour-histogram distance of all outputs vs all real aerials;
- ``sharpness_ratio``: mean neighbour difference of the outputs over that of the real
  aerials (1.0 = as sharp as real imagery).

The baselines (:mod:`baselines`) are fitted on the training split only, whichever
split is scored.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from torch import nn

from . import metrics, regions
from .baselines import MeanColour, PaletteLookup
from .data import PairSource
from .errors import DatasetError, OptionError
from .model import model_device
from .mosaic import StripMosaic
from .pipeline import ArrayReader, run_tiles, strip_tiles
from .tiling import DEFAULT_OVERLAP, TileGrid

__all__ = ["EVAL_SIZE", "Evaluation", "Scores", "evaluate", "format_table", "render_tiles", "resize"]

#: Height and width of the images scored.
EVAL_SIZE = 256
#: Bins of the colour histograms.
HIST_BINS = 64
SPLITS = ("val", "train", "all")
METHODS = ("model", "palette_lookup", "mean_colour")

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class Scores:
    l1: float
    psnr: float
    ssim: float
    hist_distance: float
    sharpness_ratio: float


@dataclass(frozen=True)
class Evaluation:
    """What :func:`evaluate` measured; ``grid`` is map | palette | model | real rows."""

    scores: dict[str, Scores]
    split: str
    split_by: str
    val_fraction: float
    tiles: int  # tiles scored
    train_tiles: int  # tiles the baselines were fitted on
    real_sharpness: float
    palette_cells: int  # quantised map colours seen in training
    overlap: int  # tile overlap the model was applied with (render's --overlap)
    grid: np.ndarray | None

    def to_dict(self) -> dict:
        return {
            "split": self.split,
            "split_by": self.split_by,
            "val_fraction": self.val_fraction,
            "tiles": self.tiles,
            "baseline_train_tiles": self.train_tiles,
            "image_size": EVAL_SIZE,
            "overlap": self.overlap,
            "real_sharpness": round(self.real_sharpness, 6),
            "palette_cells_seen": self.palette_cells,
            "scores": {k: {f: _json_number(v) for f, v in asdict(s).items()} for k, s in self.scores.items()},
        }


def _json_number(v: float) -> float | str:
    return round(v, 6) if math.isfinite(v) else str(v)  # JSON has no inf


def resize(img: np.ndarray, size: int = EVAL_SIZE) -> np.ndarray:
    """uint8 (H, W, 3) → (size, size, 3), PIL bicubic (antialiased when shrinking)."""
    from PIL import Image

    if img.shape[:2] == (size, size):
        return np.ascontiguousarray(img)
    return np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BICUBIC))


def _tiles_of(img: np.ndarray, grid: TileGrid) -> list[np.ndarray]:
    """The tiles of one (3, H, W) image, cut from row strips as render cuts them."""
    reader = ArrayReader(np.ascontiguousarray(img))
    return [tile for r in range(grid.shape[0]) for _, tile in strip_tiles(reader, grid, r)]


def render_tiles(model: nn.Module, maps: np.ndarray, overlap: int = DEFAULT_OVERLAP,
                 tile_size: int = EVAL_SIZE) -> np.ndarray:
    """Apply ``model`` to map images (N, H, W, 3) uint8 as :func:`render` would; uint8 out."""
    n, h, w = maps.shape[:3]
    grid = TileGrid(h, w, tile_size, overlap)
    tiles = [t for img in maps for t in _tiles_of(img.transpose(2, 0, 1), grid)]
    outputs = run_tiles(model, np.stack(tiles), model_device(model)) if tiles else []
    result = np.empty_like(maps)
    per = len(grid)
    for i in range(n):
        mosaic = StripMosaic(grid)
        for chip, y in zip(grid, outputs[i * per : (i + 1) * per], strict=True):
            mosaic.add(chip, y)
        _, blended, _ = mosaic.pop_rows(h)
        result[i] = np.rint((blended + 1.0) * 127.5).clip(0, 255).astype(np.uint8).transpose(1, 2, 0)
    return result


class _Tally:
    """Running per-tile figures and set-wide histogram/sharpness of one method."""

    def __init__(self) -> None:
        self.l1: list[float] = []
        self.psnr: list[float] = []
        self.ssim: list[float] = []
        self.sharp: list[float] = []
        self.hist = np.zeros((3, HIST_BINS), np.int64)

    def add(self, outputs: np.ndarray, reals: np.ndarray) -> None:
        for o, r in zip(outputs, reals, strict=True):
            self.l1.append(metrics.l1(o, r))
            self.psnr.append(metrics.psnr(o, r))
            self.ssim.append(metrics.ssim(o, r))
            self.sharp.append(metrics.sharpness(o))
        self.hist += metrics.colour_histogram(outputs, HIST_BINS)

    def scores(self, real: _Tally) -> Scores:
        real_sharp = float(np.mean(real.sharp))
        return Scores(
            l1=float(np.mean(self.l1)),
            psnr=float(np.mean(self.psnr)),
            ssim=float(np.mean(self.ssim)),
            hist_distance=metrics.histogram_distance_from_counts(self.hist, real.hist),
            sharpness_ratio=float(np.mean(self.sharp)) / real_sharp if real_sharp > 0 else float("nan"),
        )


def split_indices(source: PairSource, split: str, val_fraction: float,
                  split_by: str = "region") -> tuple[list[int], list[int]]:
    """(indices to score, training indices the baselines are fitted on)."""
    if split not in SPLITS:
        raise OptionError(f"--split {split!r} must be one of {', '.join(SPLITS)}")
    if not 0 <= val_fraction < 1:
        raise OptionError(f"--val-fraction {val_fraction} must be in [0, 1)")
    train, val = regions.split_by(source, split_by, val_fraction)
    scored = {"val": val, "train": train, "all": sorted(train + val)}[split]
    if not scored:
        raise DatasetError(f"the {split} split of {len(source)} tiles is empty at val fraction "
                           f"{val_fraction}: raise --val-fraction or use --split all")
    if not train:
        raise DatasetError("the training split is empty, so the baselines cannot be fitted: "
                           "lower --val-fraction")
    return scored, train


def _pairs(source: PairSource, indices: Sequence[int]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for i in indices:
        m, a = source.read(i)
        yield resize(m), resize(a)


def evaluate(
    source: PairSource,
    model: nn.Module,
    *,
    split: str = "val",
    val_fraction: float = 0.1,
    split_by: str = "region",
    limit: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    grid_tiles: int = 8,
    batch_images: int = 8,
    progress: ProgressCallback | None = None,
) -> Evaluation:
    """Score ``model`` and the baselines on ``split`` of ``source`` (see module docstring).

    ``limit`` scores only the first N tiles of the split; ``progress(done, total)``
    counts training tiles fitted, then tiles scored.
    """
    if limit is not None and limit < 1:
        raise OptionError(f"--limit {limit} must be at least 1")
    if not 0 <= overlap < EVAL_SIZE:
        raise OptionError(f"--overlap {overlap} must be at least 0 and less than the tile size {EVAL_SIZE}; "
                          f"the default is render's, {DEFAULT_OVERLAP}")
    scored, train = split_indices(source, split, val_fraction, split_by)
    scored = scored[:limit] if limit else scored
    total = len(train) + len(scored)
    model.eval()

    mean, palette = MeanColour(), PaletteLookup()
    for k, (m, a) in enumerate(_pairs(source, train), 1):
        mean.update(m, a)
        palette.update(m, a)
        if progress is not None and (k % 16 == 0 or k == len(train)):
            progress(k, total)
    mean.finish()
    palette.finish()

    tallies = {name: _Tally() for name in (*METHODS, "real")}
    rows: list[np.ndarray] = []
    done = len(train)
    pairs = _pairs(source, scored)
    for start in range(0, len(scored), batch_images):
        batch = [next(pairs) for _ in range(min(batch_images, len(scored) - start))]
        maps = np.stack([m for m, _ in batch])
        reals = np.stack([a for _, a in batch])
        outputs = {"model": render_tiles(model, maps, overlap),
                   "palette_lookup": palette.predict(maps),
                   "mean_colour": mean.predict(maps)}
        for name, out in outputs.items():
            tallies[name].add(out, reals)
        tallies["real"].add(reals, reals)
        for i in range(min(grid_tiles - len(rows), len(batch))):
            rows.append(np.concatenate([maps[i], outputs["palette_lookup"][i], outputs["model"][i],
                                        reals[i]], axis=1))
        done += len(batch)
        if progress is not None:
            progress(done, total)

    real = tallies["real"]
    return Evaluation(
        scores={name: tallies[name].scores(real) for name in METHODS},
        split=split, split_by=split_by, val_fraction=val_fraction, tiles=len(scored), train_tiles=len(train),
        real_sharpness=float(np.mean(real.sharp)), palette_cells=palette.seen_cells, overlap=overlap,
        grid=np.concatenate(rows, axis=0) if rows else None,
    )


def format_table(ev: Evaluation) -> str:
    """The scores as a plain-text table, one row per method."""
    head = f"{'':16}{'L1':>8}{'PSNR':>8}{'SSIM':>8}{'hist':>8}{'sharp':>8}"
    lines = [f"{ev.tiles} {ev.split} tiles (split by {ev.split_by}) at {EVAL_SIZE}×{EVAL_SIZE}, model rendered "
             f"with overlap {ev.overlap} (baselines fitted on {ev.train_tiles} training tiles)", head]
    labels = {"model": "model", "palette_lookup": "palette lookup", "mean_colour": "mean colour"}
    for name, s in ev.scores.items():
        lines.append(f"{labels.get(name, name):16}{s.l1:8.3f}{s.psnr:8.2f}{s.ssim:8.3f}"
                     f"{s.hist_distance:8.3f}{s.sharpness_ratio:8.3f}")
    lines.append("L1: 0-1 scale, lower is better; PSNR dB and SSIM: higher is better; hist: colour-"
                 "histogram distance to the real aerials, 0 = same colours; sharp: sharpness over "
                 "that of the real aerials, 1 = as sharp")
    return "\n".join(lines)
