"""The tile pipeline: read strips → cut tiles → run the model → blend → finished rows.

:class:`TilePipeline` is shared by everything that applies a model to an image larger
or smaller than a tile: :func:`geo_pix2pix.render` (rows go to a GeoTIFF), the
evaluator (rows go to memory) and the XYZ tile renderer (metatiles). It needs only a
*reader*: an object with ``height``, ``width`` and ``read(row_off, col_off, height,
width) -> (rgb uint8 (3, h, w), valid bool (h, w))`` that fills out-of-bounds pixels
by reflection (:class:`geo_pix2pix.raster.MapRaster`, or :class:`ArrayReader` for an
in-memory image).

Order of work, chosen for bounded memory and full batches:

- one strip of rows (one tile high) is read at a time; tiles are cut from it and
  tiles that are entirely nodata are dropped (no model call);
- tiles are gathered row-major into batches that may span two tile rows, so batches
  stay full on any raster width;
- outputs are blended in row-major order, and before the first tile of a new tile
  row is blended the rows the previous tile row finished are handed out: the blend
  buffer never holds more than one tile's height of rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from torch import nn

from .engine import COMPUTE_CHUNK
from .errors import ModelOutputError
from .model import model_device, run_batch
from .mosaic import StripMosaic
from .tiling import Chip, TileGrid, clip_window, reflect_window

__all__ = ["ArrayReader", "TilePipeline", "fill_nodata", "render_array", "run_tiles", "strip_tiles", "to_uint8"]

POP_ROWS = 32  # rows turned from float sums into uint8 at a time (keeps temporaries small)


def to_uint8(blended: np.ndarray) -> np.ndarray:
    """Network scale [-1, 1] → uint8, rounding to nearest (exact for identity output)."""
    out = blended + 1.0
    out *= 127.5
    np.rint(out, out=out)
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


def fill_nodata(tile: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """The one rule for nodata pixels inside a model input: (3, h, w) uint8 with the
    ``missing`` pixels (bool (h, w)) filled from the tile's valid pixels.

    Each missing pixel takes the valid pixel mirrored across its nearest valid pixel,
    or that nearest valid pixel where the mirror is missing or off the tile. Along a
    straight nodata edge this is the reflection render pads a raster's own edges with,
    so the model sees a collar as it sees the edge of the raster cropped to its data:
    no dark band pulled through the receptive field, and per-tile (instance)
    normalisation statistics of map-like content. Every path applies it (render, its
    Dask tasks, tile metatiles, evaluation) before the model; the output is masked
    there afterwards. A tile with no valid pixel is not filled: it is never rendered.
    """
    if not missing.any() or missing.all():
        return tile
    from scipy import ndimage

    h, w = missing.shape
    ny, nx = ndimage.distance_transform_edt(missing, return_distances=False, return_indices=True)
    yy, xx = np.mgrid[0:h, 0:w]
    my, mx = 2 * ny - yy, 2 * nx - xx
    ok = (my >= 0) & (my < h) & (mx >= 0) & (mx < w)
    ok[ok] = ~missing[my[ok], mx[ok]]
    sy, sx = np.where(ok, my, ny), np.where(ok, mx, nx)
    return tile[:, sy, sx]


def strip_tiles(reader, grid: TileGrid, r: int) -> list[tuple[Chip, np.ndarray]]:
    """The model inputs of tile row ``r``: (chip, uint8 (3, t, t)) for every tile with a
    valid pixel, its nodata filled (:func:`fill_nodata`), read as one strip of rows.

    Pixels past the raster's edges are reflections of the raster (the reader pads so);
    a reflection of a nodata pixel is nodata too and is filled like it.
    """
    t = grid.tile_size
    x0, x1 = grid.col_starts[0], grid.col_starts[-1] + t
    row_off = grid.row_starts[r]
    strip, valid = reader.read(row_off, x0, t, x1 - x0)
    content = None
    if not valid.all():
        # What each pixel shows is valid: the raster's mask, reflected as the pixels are.
        (r0, r1, c0, c1), pads = clip_window(row_off, x0, t, x1 - x0, reader.height, reader.width)
        (top, _), (left, _) = pads
        core = valid[top : top + r1 - r0, left : left + c1 - c0]
        if not core.all():
            content = np.pad(core, pads, mode="reflect")
    out = []
    for chip in grid.row(r):
        c = chip.col_off - x0
        if not valid[:, c : c + t].any():
            continue  # all nodata (or outside the raster): no model call
        tile = strip[:, :, c : c + t].copy()  # a copy: frees the strip
        if content is not None:
            tile = fill_nodata(tile, ~content[:, c : c + t])
        out.append((chip, tile))
    return out


def run_tiles(model: nn.Module, tiles: np.ndarray, device=None) -> np.ndarray:
    """:func:`model.run_batch`, refusing NaN (and infinite) outputs: the one place every path (render,
    its Dask tasks, tile metatiles, evaluation) runs the model on a batch of tiles.

    NaN would be written as black pixels, and a finished, wrong image looks like a
    success.
    """
    out = run_batch(model, tiles, device)
    bad = np.isnan(out).any(axis=(1, 2, 3))
    if bad.any():
        raise ModelOutputError(
            f"the model returned NaN or infinite values for {int(bad.sum())} of {len(bad)} tiles of a batch: "
            "its weights are broken (a training run that diverged, a damaged file) or it is not a "
            "map-to-aerial model: use another checkpoint, or omit --weights for the default model")
    return out


class ArrayReader:
    """A reader over an in-memory image: rgb uint8 (3, H, W), optional valid (H, W)."""

    def __init__(self, rgb: np.ndarray, valid: np.ndarray | None = None) -> None:
        if rgb.ndim != 3 or rgb.shape[0] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"rgb must be uint8 of shape (3, H, W), not {rgb.dtype} {rgb.shape}")
        self.rgb = rgb
        self.valid = valid
        self.height, self.width = rgb.shape[1:]

    def read(self, row_off: int, col_off: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        rgb, inside = reflect_window(self.rgb, row_off, col_off, height, width)
        if self.valid is not None:
            v, _ = reflect_window(self.valid[None], row_off, col_off, height, width)
            inside &= v[0]
        return rgb, inside


class TilePipeline:
    """Iterate ``(first_row, rows)`` of the rendered image, top to bottom.

    ``rows`` is uint8 (3, n, width). After iteration, :attr:`rendered` is the number of
    tiles sent to the model and ``len(self.grid)`` the number in the grid.
    """

    def __init__(self, reader, model: nn.Module, *, tile_size: int = 256, overlap: int = 64,
                 batch_size: int = 8, progress: Callable[[int, int], None] | None = None) -> None:
        self.reader, self.model = reader, model
        self.tile_size, self.batch_size, self.progress = tile_size, batch_size, progress
        self.grid = TileGrid(reader.height, reader.width, tile_size, overlap)
        self.rendered = 0

    def __len__(self) -> int:
        return len(self.grid)

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        grid = self.grid
        mosaic = StripMosaic(grid)
        device = model_device(self.model)
        pending: list[tuple[Chip, np.ndarray]] = []
        blended_row = -1  # highest tile row whose tiles are (being) blended

        def finished(upto_tile_row: int) -> Iterator[tuple[int, np.ndarray]]:
            upto = grid.rows_done_after(upto_tile_row)
            while mosaic.top < upto:
                first, rows, _ = mosaic.pop_rows(min(upto, mosaic.top + POP_ROWS))
                yield first, to_uint8(rows)

        def run() -> Iterator[tuple[int, np.ndarray]]:
            nonlocal blended_row
            outputs = run_tiles(self.model, np.stack([tile for _, tile in pending]), device)
            for (chip, _), out in zip(pending, outputs, strict=True):
                if chip.row > blended_row:
                    # Every tile of the rows above is blended: hand their rows out first,
                    # so the buffer holds one tile row only.
                    yield from finished(chip.row - 1)
                    blended_row = chip.row
                mosaic.add(chip, out)
            self.rendered += len(pending)
            pending.clear()

        reported = -1

        def report(done: int) -> None:
            nonlocal reported
            if self.progress is not None and done != reported:  # each count once
                reported = done
                self.progress(done, len(grid))

        ncols = grid.shape[1]
        for r in range(grid.shape[0]):
            for chip, tile in strip_tiles(self.reader, grid, r):
                pending.append((chip, tile))
                if len(pending) >= max(self.batch_size, 1):
                    yield from run()
            if not pending:
                yield from finished(r)
                blended_row = max(blended_row, r)
            report((r + 1) * ncols - len(pending))
        if pending:
            yield from run()
        yield from finished(grid.shape[0] - 1)
        report(len(grid))


def render_array(rgb: np.ndarray, model: nn.Module, valid: np.ndarray | None = None, *,
                 tile_size: int = 256, overlap: int = 64, batch_size: int = COMPUTE_CHUNK) -> np.ndarray:
    """Render an in-memory map image (3, H, W) uint8 exactly as render would a file."""
    pipe = TilePipeline(ArrayReader(rgb, valid), model, tile_size=tile_size, overlap=overlap,
                        batch_size=batch_size)
    out = np.zeros_like(rgb)
    for first, rows in pipe:
        out[:, first : first + rows.shape[1]] = rows
    return out
