"""One metatile job: read the source around it, decide what is stale, render, cut tiles.

Runs in the main process or in a worker; it reads the source and runs the model but
writes nothing (the writer in the main process does). Steps:

1. read the source tiles under the chips of every tile of the metatile and hash them;
2. each tile's key is the hash of the run's settings, the tile's position and those
   digests (:mod:`.manifest`); tiles whose key matches the manifest are left alone;
3. the chips touching the stale tiles (:class:`.tilemath.ChipGrid`) are cut from the
   source, run through the model and blended by the tile core that render runs
   (:func:`geo_pix2pix.grid.core.render_array`, the chips a grid with explicit starts) —
   every pixel of a stale tile gets all the chips that cover it, in a fixed order, and
   the weights of the world-wide grid, so its value does not depend on the metatile;
4. stale tiles are cut from the blend: render-zoom tiles directly, deeper zooms
   upsampled (bicubic, reading across tile borders), and encoded.

Missing source tiles are nodata; a chip with some nodata has it filled by render's rule
(:func:`geo_pix2pix.grid.cut.fill_nodata`, a function of the chip alone) and the output
is masked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mercantile
import numpy as np
from torch import nn

from ..errors import TileSourceError
from ..grid.core import render_array
from .imaging import encode, upsample
from .manifest import tile_key
from .sources import SourceTile, TileSource
from .tilemath import TILE_SIZE, ChipGrid

__all__ = ["MetaJob", "MetaResult", "RenderSettings", "run_metatile"]

#: Chips handed to the model per call (run_batch cuts them into fixed chunks).
CHIPS_PER_CALL = 32
NO_TILE, UNREADABLE = "-", "!"


@dataclass(frozen=True)
class RenderSettings:
    grid: ChipGrid
    fmt: str
    quality: int
    digest: str  # settings digest: model identity and the options that change pixels


@dataclass(frozen=True)
class MetaJob:
    index: int
    base: tuple[mercantile.Tile, ...]  # render-zoom tiles of the metatile, in the area
    families: tuple[tuple[mercantile.Tile, ...], ...]  # per base tile: the tiles made from it
    old: dict = field(default_factory=dict)  # Tile → key, for tiles recorded and present
    forced: frozenset = frozenset()  # base tiles to redo whatever their keys say


@dataclass
class MetaResult:
    index: int
    keys: dict  # base Tile → key (None: its own source tile is unreadable)
    outputs: list  # (Tile, key, bytes | None): tiles made; None = no data (empty)
    failed: list  # (base Tile, reason)
    chips: int = 0  # chips run through the model


def run_metatile(job: MetaJob, source: TileSource, model: nn.Module, settings: RenderSettings) -> MetaResult:
    grid = settings.grid
    deps = {b: grid.dependencies(b) for b in job.base}
    read: dict[mercantile.Tile, SourceTile | None] = {}
    errors: dict[mercantile.Tile, str] = {}
    for t in sorted({d for ds in deps.values() for d in ds}, key=lambda t: (t.y, t.x)):
        try:
            read[t] = source.get(t)
        except TileSourceError as exc:
            errors[t] = str(exc)

    keys = _keys(job.base, deps, read, errors, settings.digest)
    targets = {b: [t for t in fam if b in job.forced or job.old.get(t) != keys[b]]
               for b, fam in zip(job.base, job.families, strict=True) if keys[b] is not None}
    targets = {b: ts for b, ts in targets.items() if ts}
    result = MetaResult(job.index, keys, [], [(b, errors[b]) for b in job.base if b in errors])
    if not targets:
        return result

    # Decode what the stale tiles' chips read; a tile that fails to decode is unreadable.
    needed = sorted({d for b in targets for d in deps[b]}, key=lambda t: (t.y, t.x))
    pixels = {}
    for t in needed:
        if read.get(t) is not None:
            try:
                pixels[t] = source.pixels(t, read[t])
            except TileSourceError as exc:
                errors[t] = str(exc)
    if any(t in errors for t in needed):
        keys.update(_keys(job.base, deps, read, errors, settings.digest))
        result.failed = [(b, errors[b]) for b in job.base if b in errors]
        targets = {b: ts for b, ts in targets.items() if keys[b] is not None}

    rgb, valid, (x0, y0), result.chips = _render(list(targets), pixels, model, grid)
    for b, tiles in targets.items():
        for t in tiles:
            if t.z == b.z:
                c0, r0 = b.x * TILE_SIZE - x0, b.y * TILE_SIZE - y0
                rows, cols = slice(r0, r0 + TILE_SIZE), slice(c0, c0 + TILE_SIZE)
                px = (rgb[:, rows, cols], valid[rows, cols])
            else:
                f = 2 ** (t.z - b.z)
                left, top = t.x * TILE_SIZE / f - x0, t.y * TILE_SIZE / f - y0
                px = upsample(rgb, valid, (left, top, left + TILE_SIZE / f, top + TILE_SIZE / f))
            result.outputs.append((t, keys[b], encode(px[0], px[1], settings.fmt, settings.quality)))
    return result


def _keys(base, deps, read, errors, digest: str) -> dict:
    keys = {}
    for b in base:
        if b in errors:
            keys[b] = None
            continue
        parts = [f"{b.z}/{b.x}/{b.y}"]
        for d in deps[b]:
            st = read.get(d)
            mark = UNREADABLE if d in errors else (st.digest if st is not None else NO_TILE)
            parts.append(f"{d.x - b.x},{d.y - b.y}={mark}")
        keys[b] = tile_key(digest, parts)
    return keys


def _render(stale: list[mercantile.Tile], pixels: dict, model: nn.Module, grid: ChipGrid):
    """Blend the chips over ``stale`` tiles: (rgb uint8, valid, (x0, y0) origin, chips run).

    The arrays cover the stale tiles' bounding box plus ``grid.margin`` pixels; only
    the stale tiles and their margins hold final values (every chip covering them is run).
    """
    m, n = grid.margin, TILE_SIZE
    x0 = min(t.x for t in stale) * n - m
    y0 = min(t.y for t in stale) * n - m
    width = (max(t.x for t in stale) + 1) * n + m - x0
    height = (max(t.y for t in stale) + 1) * n + m - y0
    chips = {(ky, kx) for t in stale for ky in grid.tile_chips(t.y) for kx in grid.tile_chips(t.x)}
    rows = range(min(k[0] for k in chips), max(k[0] for k in chips) + 1)
    cols = range(min(k[1] for k in chips), max(k[1] for k in chips) + 1)
    tiles = grid.tile_grid(rows, cols)

    # The canvas: source pixels under every chip, nodata where there is no tile.
    cx0, cy0 = grid.chip_start(cols.start), grid.chip_start(rows.start)
    ch, cw = tiles.height, tiles.width
    canvas = np.zeros((3, ch, cw), np.uint8)
    cvalid = np.zeros((ch, cw), bool)
    for t, (trgb, tvalid) in pixels.items():
        c, r = t.x * n - cx0, t.y * n - cy0
        a0, b0 = max(r, 0), max(c, 0)
        a1, b1 = min(r + n, ch), min(c + n, cw)
        if a1 > a0 and b1 > b0:
            canvas[:, a0:a1, b0:b1] = trgb[:, a0 - r:a1 - r, b0 - c:b1 - c]
            cvalid[a0:a1, b0:b1] = tvalid[a0 - r:a1 - r, b0 - c:b1 - c]

    rgb, valid, run = render_array(canvas, model, cvalid, grid=tiles, batch_size=CHIPS_PER_CALL,
                                   keep=lambda c: (rows.start + c.row, cols.start + c.col) in chips)
    region = np.s_[y0 - cy0 : y0 - cy0 + height, x0 - cx0 : x0 - cx0 + width]
    return rgb[(slice(None), *region)], valid[region], (x0, y0), run
