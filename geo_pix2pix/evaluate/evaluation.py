"""Score a model against real aerials and against two baselines, on held-out pairs.

Each pair is brought to the evaluation size (256 × 256, PIL bicubic, map and aerial
alike) and the model is applied to the map exactly as ``geo-pix2pix render`` applies
it to a 256 × 256 map image: through the tile core (:func:`grid.core.render_rows`),
with render's grid, nodata rule, NaN check, blend and rounding to 8 bits; the tiles of
all images share the model's batches. ``tests/test_evaluate.py`` checks that the
pixels are identical to those of :func:`geo_pix2pix.render` on a PNG of the map.

Figures (definitions in :mod:`metrics`), per method:

- ``l1``, ``psnr``, ``ssim``: means over the tiles of the per-tile figures;
- ``hist_distance``: colour-histogram distance of all outputs vs all real aerials;
- ``sharpness_ratio``: mean neighbour difference of the outputs over that of the real
  aerials (1.0 = as sharp as real imagery);
- ``structure_ratio``: the structure score (:mod:`judge`): mean IoU of a segmentation
  network trained on real aerials, reading the map's classes from the outputs, over the
  mean IoU it reaches on the real aerials of the same tiles (1.0 = as much of the map's
  structure as a photo shows); ``miou`` and ``road_iou`` are the outputs' own figures.

The baselines (:mod:`baselines`) and the judge are fitted on the training split only,
whichever split is scored.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from torch import nn

from ..errors import DatasetError, OptionError
from ..grid.blend import RowMerger
from ..grid.core import render_rows
from ..grid.cut import ArrayReader
from ..grid.tiling import DEFAULT_OVERLAP, TileGrid
from ..model.spec import resolve_model
from ..train import regions
from ..train.data import PairSource
from . import judge as judging
from . import metrics
from .baselines import MeanColour, PaletteLookup

__all__ = ["EVAL_SIZE", "Evaluation", "Scores", "Structure", "evaluate", "format_table", "render_tiles", "resize",
           "write_report"]

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
    structure_ratio: float | None = None  # None: not measured (structure=False)
    miou: float | None = None
    road_iou: float | None = None


@dataclass(frozen=True)
class Structure:
    """The judge's figures on the real aerials, and which judge it was."""

    real_miou: float
    real_road_iou: float
    real_class_iou: dict[str, float]  # classes present in the scored maps
    judge: Path  # its cache file
    trained: bool  # trained by this evaluation (else read from the cache)
    train_seconds: float  # wall clock
    train_cpu_seconds: float
    train_tiles: int
    recipe: judging.JudgeRecipe

    def to_dict(self) -> dict:
        return {"real_miou": _json_number(self.real_miou), "real_road_iou": _json_number(self.real_road_iou),
                "real_class_iou": {k: _json_number(v) for k, v in self.real_class_iou.items()},
                "judge": str(self.judge), "judge_trained_now": self.trained,
                "judge_train_seconds": _json_number(round(self.train_seconds, 1)),
                "judge_train_cpu_seconds": _json_number(round(self.train_cpu_seconds, 1)),
                "judge_train_tiles": self.train_tiles,
                "judge_recipe": asdict(self.recipe)}


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
    structure: Structure | None = None

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
            "structure": self.structure.to_dict() if self.structure else None,
        }


def _json_number(v: float | None) -> float | str | None:
    if v is None:
        return None
    return round(v, 6) if math.isfinite(v) else str(v)  # JSON has no inf


def resize(img: np.ndarray, size: int = EVAL_SIZE) -> np.ndarray:
    """uint8 (H, W, 3) → (size, size, 3), PIL bicubic (antialiased when shrinking)."""
    from PIL import Image

    if img.shape[:2] == (size, size):
        return np.ascontiguousarray(img)
    return np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BICUBIC))


def render_tiles(model: nn.Module, maps: np.ndarray, overlap: int = DEFAULT_OVERLAP,
                 tile_size: int = EVAL_SIZE, batch_size: int = 64) -> np.ndarray:
    """Apply ``model`` to map images (N, H, W, 3) uint8 as :func:`render` would (the model
    resolved as render resolves it); uint8 out."""
    model = resolve_model(model)
    n, h, w = maps.shape[:3]
    grid = TileGrid(h, w, tile_size, overlap)
    readers = [ArrayReader(np.ascontiguousarray(img.transpose(2, 0, 1))) for img in maps]
    rows = ((reader, grid, r, None) for reader in readers for r in range(grid.shape[0]))
    result = np.empty_like(maps)
    mergers = [RowMerger(grid) for _ in range(n)]
    for k, row in enumerate(render_rows(model, rows, batch_size)):  # each image's rows, in order
        for first, rgb, _ in mergers[k // grid.shape[0]].add(row):
            result[k // grid.shape[0], first : first + rgb.shape[1]] = rgb.transpose(1, 2, 0)
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


def _pairs(source: PairSource, indices: Sequence[int]) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(map as read, map and aerial at the evaluation size) of each pair."""
    for i in indices:
        m, a = source.read(i)
        yield m, resize(m), resize(a)


class _Judging:
    """The structure score's confusion matrices, one per method and one for the real aerials."""

    def __init__(self, net: judging.JudgeNet, size: int) -> None:
        self.net, self.size = net, size
        self.confusion = {name: judging.Confusion() for name in (*METHODS, "real")}

    def add(self, maps: Sequence[np.ndarray], images: dict[str, np.ndarray]) -> None:
        truth = np.stack([judging.judge_labels(m, self.size) for m in maps])
        for name, batch in images.items():
            seen = np.stack([judging.judge_image(img, self.size) for img in batch])
            self.confusion[name].add(judging.segment(self.net, seen), truth)

    def scores(self, name: str) -> dict[str, float]:
        c, real = self.confusion[name], self.confusion["real"].miou()
        return {"miou": c.miou(), "road_iou": float(c.iou()[judging.ROAD]),
                "structure_ratio": c.miou() / real if real > 0 else float("nan")}


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
    structure: bool = True,
    judge_recipe: judging.JudgeRecipe | None = None,
    judge_cache: Path | None = None,
    progress: ProgressCallback | None = None,
) -> Evaluation:
    """Score ``model`` and the baselines on ``split`` of ``source`` (see module docstring).

    ``limit`` scores only the first N tiles of the split; ``structure=False`` skips the
    structure score; the judge comes from ``judge_cache`` (default
    :func:`judge.default_cache_dir`) or is trained there. ``progress(done, total)``
    counts training tiles fitted, judge training steps (when it is trained), then tiles
    scored.
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

    recipe = judge_recipe or judging.DEFAULT_RECIPE
    judge_set = judging.JudgeSet(recipe.size) if structure else None
    mean, palette = MeanColour(), PaletteLookup()
    for k, (m_read, m, a) in enumerate(_pairs(source, train), 1):
        mean.update(m, a)
        palette.update(m, a)
        if judge_set is not None:
            judge_set.add(m_read, a)
        if progress is not None and (k % 16 == 0 or k == len(train)):
            progress(k, total)
    mean.finish()
    palette.finish()

    done = len(train)
    info = judges = None
    if judge_set is not None:
        def step(s: int, n: int) -> None:
            if progress is not None and (s % 10 == 0 or s == n):
                progress(len(train) + s, total + n)

        net, info = judging.judge_for(judge_set, recipe, cache_dir=judge_cache, step_callback=step,
                                      meta={"source": source.label(train[0]), "split_by": split_by,
                                            "val_fraction": val_fraction})
        judges = _Judging(net, recipe.size)
        if info.trained:
            done, total = done + recipe.steps, total + recipe.steps

    tallies = {name: _Tally() for name in (*METHODS, "real")}
    rows: list[np.ndarray] = []
    pairs = _pairs(source, scored)
    for start in range(0, len(scored), batch_images):
        batch = [next(pairs) for _ in range(min(batch_images, len(scored) - start))]
        maps = np.stack([m for _, m, _ in batch])
        reals = np.stack([a for _, _, a in batch])
        outputs = {"model": render_tiles(model, maps, overlap),
                   "palette_lookup": palette.predict(maps),
                   "mean_colour": mean.predict(maps)}
        for name, out in outputs.items():
            tallies[name].add(out, reals)
        tallies["real"].add(reals, reals)
        if judges is not None:
            judges.add([m for m, _, _ in batch], {**outputs, "real": reals})
        for i in range(min(grid_tiles - len(rows), len(batch))):
            rows.append(np.concatenate([maps[i], outputs["palette_lookup"][i], outputs["model"][i],
                                        reals[i]], axis=1))
        done += len(batch)
        if progress is not None:
            progress(done, total)

    real = tallies["real"]
    scores = {name: tallies[name].scores(real) for name in METHODS}
    found = None
    if judges is not None and info is not None:
        scores = {name: replace(s, **judges.scores(name)) for name, s in scores.items()}
        confusion = judges.confusion["real"]
        iou = confusion.iou()
        found = Structure(
            real_miou=confusion.miou(), real_road_iou=float(iou[judging.ROAD]),
            real_class_iou={c: float(iou[k]) for k, c in enumerate(regions.CLASSES) if confusion.present()[k]},
            judge=info.path, trained=info.trained, train_seconds=info.train_seconds,
            train_cpu_seconds=info.train_cpu_seconds, train_tiles=info.train_tiles,
            recipe=recipe)
    return Evaluation(
        scores=scores,
        split=split, split_by=split_by, val_fraction=val_fraction, tiles=len(scored), train_tiles=len(train),
        real_sharpness=float(np.mean(real.sharp)), palette_cells=palette.seen_cells, overlap=overlap,
        grid=np.concatenate(rows, axis=0) if rows else None, structure=found,
    )


def _cell(v: float | None, fmt: str) -> str:
    return f"{'-':>8}" if v is None else format(v, fmt)


def format_table(ev: Evaluation) -> str:
    """The scores as a plain-text table, one row per method."""
    head = f"{'':16}{'L1':>8}{'PSNR':>8}{'SSIM':>8}{'hist':>8}{'sharp':>8}{'struct':>8}{'road':>8}"
    lines = [f"{ev.tiles} {ev.split} tiles (split by {ev.split_by}) at {EVAL_SIZE}×{EVAL_SIZE}, model rendered "
             f"with overlap {ev.overlap} (baselines fitted on {ev.train_tiles} training tiles)", head]
    labels = {"model": "model", "palette_lookup": "palette lookup", "mean_colour": "mean colour"}
    for name, s in ev.scores.items():
        lines.append(f"{labels.get(name, name):16}{s.l1:8.3f}{s.psnr:8.2f}{s.ssim:8.3f}"
                     f"{s.hist_distance:8.3f}{s.sharpness_ratio:8.3f}"
                     f"{_cell(s.structure_ratio, '8.3f')}{_cell(s.road_iou, '8.3f')}")
    lines.append("L1: 0-1 scale, lower is better; PSNR dB and SSIM: higher is better; hist: colour-"
                 "histogram distance to the real aerials, 0 = same colours; sharp: sharpness over "
                 "that of the real aerials, 1 = as sharp")
    st = ev.structure
    if st is None:
        lines.append("struct, road: not measured (--no-structure)")
    else:
        took = f"{st.train_seconds:.0f} s ({st.train_cpu_seconds:.0f} s of CPU)"
        how = f"trained now in {took}" if st.trained else f"read from the cache (trained in {took})"
        lines.append(f"struct: the judge's mIoU of the map's classes ({', '.join(st.real_class_iou)}) on the "
                     f"outputs over its mIoU on the real aerials ({st.real_miou:.3f}), 1 = as much structure as "
                     f"a photo; road: road IoU on the outputs (real aerials: {st.real_road_iou:.3f})")
        lines.append(f"judge: {st.recipe.size}×{st.recipe.size} segmenter trained on the {st.train_tiles} "
                     f"training tiles' real aerials, {how}: {st.judge}")
    return "\n".join(lines)


def write_report(ev: Evaluation, model, data: str | Path, weights: str | Path | None = None,
                 json_path: str | Path | None = None, grid_path: str | Path | None = None) -> list[Path]:
    """Write ``ev`` as a JSON record (the figures, ``data`` and the resolved ``model``'s
    identity; ``weights`` None: the default model) and its grid as an image (format from
    ``grid_path``'s suffix), each atomically. Returns the paths written."""
    import json

    from ..io.atomic import replacing

    written = []
    if json_path is not None:
        record = ev.to_dict()
        record["data"] = str(data)
        record["model"] = {"weights": str(weights) if weights else "default",
                           "identity": model.identity, "steps": model.provenance.get("steps"),
                           "precision": model.precision,
                           "ground_resolution": model.ground_resolution}
        with replacing(json_path) as tmp:
            tmp.write_text(json.dumps(record, indent=2) + "\n")
        written.append(Path(json_path))
    if grid_path is not None and ev.grid is not None:
        from PIL import Image

        with replacing(grid_path, suffix=Path(grid_path).suffix) as tmp:  # the suffix names the image format
            Image.fromarray(ev.grid).save(tmp)
        written.append(Path(grid_path))
    return written
