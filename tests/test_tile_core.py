"""One tile core for every path: local render, Dask render and XYZ metatiles give the same
pixels where their grids coincide; explicit starts and chip subsets round-trip exactly."""

from __future__ import annotations

import mercantile
import numpy as np
import pytest
import rasterio
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from rasterio.transform import from_origin
from tilesdata import HELSINKI, map_pixels

from geo_pix2pix import render
from geo_pix2pix.grid.core import render_array
from geo_pix2pix.grid.tiling import TileGrid
from geo_pix2pix.tiles.tilemath import ChipGrid

#: Web Mercator's half width, metres.
WORLD = 20037508.342789244
#: Side of the test raster, px: 4 chip strides of 192 and 3 XYZ tiles, so render's grid
#: (overlap 64) and the chip grid (buffer 32) are the same chips over it.
SIDE = 768


class Wobbly(torch.nn.Module):
    """A cheap nonlinear map whose outputs have all their mantissa bits in use."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(1.7 * x + torch.sin(13.0 * x))


def _aligned_block(z: int = 16) -> tuple[int, int, np.ndarray]:
    """(world px x0, y0, map pixels (3, SIDE, SIDE)) of a 3 × 3 tile block starting on a chip start + buffer."""
    x0, y0 = (HELSINKI.x * 256 // SIDE) * SIDE, (HELSINKI.y * 256 // SIDE) * SIDE
    rgb = np.zeros((3, SIDE, SIDE), np.uint8)
    for j in range(3):
        for i in range(3):
            t = mercantile.Tile(x0 // 256 + i, y0 // 256 + j, z)
            rgb[:, j * 256 : (j + 1) * 256, i * 256 : (i + 1) * 256] = map_pixels(t)
    return x0, y0, rgb


def _canvas(rgb: np.ndarray, chips: ChipGrid, ks: range) -> tuple[np.ndarray, np.ndarray, TileGrid, int]:
    """The image on the canvas of chips ``ks`` × ``ks`` (nodata around it), as a metatile builds it."""
    grid = chips.tile_grid(ks, ks)
    off = -chips.chip_start(ks.start)  # the image's first pixel on the canvas
    canvas = np.zeros((3, grid.height, grid.width), np.uint8)
    valid = np.zeros((grid.height, grid.width), bool)
    canvas[:, off : off + SIDE, off : off + SIDE] = rgb
    valid[off : off + SIDE, off : off + SIDE] = True
    return canvas, valid, grid, off


def test_the_chip_grid_through_the_core_gives_renders_pixels_and_a_chip_subset_its_tiles():
    """The core over the world-anchored chips (a canvas with nodata around the image, as
    a metatile has) gives render's pixels wherever both grids have the same chips; run
    only the chips touching one tile, that tile's pixels are unchanged."""
    _, _, rgb = _aligned_block()
    model = Wobbly()
    want, _, _ = render_array(rgb, model, tile_size=256, overlap=64)
    chips = ChipGrid(buffer=32)
    ks = range(-1, 5)  # render's chips 0..3, and one more on each side as a metatile runs
    canvas, valid, grid, off = _canvas(rgb, chips, ks)
    got, mask, run = render_array(canvas, model, valid, grid=grid)
    assert np.array_equal(mask, valid) and run == len(grid)
    inner = slice(32, SIDE - 32)  # beyond the reach of the extra chips
    assert np.array_equal(got[:, off:, off:][:, inner, inner], want[:, inner, inner])
    # Only the chips touching the middle tile (and its 2 px margin), as for one stale tile:
    near = chips.chips(256 - 2, 512 + 2)
    sub, _, run_sub = render_array(canvas, model, valid, grid=grid,
                                   keep=lambda c: ks[c.row] in near and ks[c.col] in near)
    assert run_sub == len(near) ** 2 < run
    tile = np.s_[:, off + 254 : off + 514, off + 254 : off + 514]
    assert np.array_equal(sub[tile], got[tile])


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_identity_round_trip_with_explicit_starts_and_a_chip_subset(data):
    h, w = data.draw(st.integers(1, 200)), data.draw(st.integers(1, 200))
    tile = data.draw(st.sampled_from([16, 32]))
    overlap = data.draw(st.integers(0, tile - 1))

    def starts(length: int) -> list[int]:
        first = -data.draw(st.integers(0, tile - 1))
        out = [first]
        while out[-1] + tile < length:
            out.append(out[-1] + data.draw(st.integers(1, tile)))
        return out

    grid = TileGrid(h, w, tile, overlap, row_starts=starts(h), col_starts=starts(w))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    img = rng.integers(0, 256, (3, h, w), dtype=np.uint8)
    valid = rng.random((h, w)) < data.draw(st.sampled_from([0.3, 1.0]))
    out, mask, _ = render_array(img, torch.nn.Identity(), valid, grid=grid)
    assert np.array_equal(mask, valid) and np.array_equal(out[:, valid], img[:, valid])
    # A chip subset: exact wherever every chip covering the pixel was run.
    kept = {c.index for c in grid if rng.random() < 0.6}
    out, _, _ = render_array(img, torch.nn.Identity(), valid, grid=grid, keep=lambda c: c.index in kept)
    missed = np.zeros((h + 2 * tile, w + 2 * tile), bool)
    for c in grid:
        if c.index not in kept:
            missed[c.row_off + tile : c.row_off + 2 * tile, c.col_off + tile : c.col_off + 2 * tile] = True
    exact = valid & ~missed[tile : tile + h, tile : tile + w]
    assert np.array_equal(out[:, exact], img[:, exact])


# -- the three paths end to end ------------------------------------------------------------

def _xyz_image(root, x0: int, y0: int, z: int) -> np.ndarray:
    out = np.zeros((3, SIDE, SIDE), np.uint8)
    for j in range(3):
        for i in range(3):
            im = Image.open(root / str(z) / str(x0 // 256 + i) / f"{y0 // 256 + j}.png")
            assert im.mode == "RGB"  # every pixel valid: the tile lies inside the raster
            out[:, j * 256 : (j + 1) * 256, i * 256 : (i + 1) * 256] = np.asarray(im).transpose(2, 0, 1)
    return out


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::geo_pix2pix.errors.ResolutionWarning")  # the tiny model has none
def test_local_render_dask_render_and_metatiles_give_the_same_pixels(tmp_path):
    pytest.importorskip("distributed")
    from geo_pix2pix.model.checkpoints import save_checkpoint
    from geo_pix2pix.model.networks import Generator
    from geo_pix2pix.tiles import make_tiles
    from geo_pix2pix.tiles.options import CopyModel

    z = 16
    x0, y0, rgb = _aligned_block(z)
    res = 2 * WORLD / (256 * 2**z)
    src = tmp_path / "map.tif"
    with rasterio.open(src, "w", driver="GTiff", width=SIDE, height=SIDE, count=3, dtype="uint8", crs="EPSG:3857",
                       transform=from_origin(-WORLD + x0 * res, WORLD - y0 * res, res, res)) as ds:
        ds.write(rgb)
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "tiny.pt", Generator(base_width=8, norm="instance").eval())

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the single-threaded workers: the model's bits depend on the thread count
    try:
        render(src, tmp_path / "local.tif", model=ckpt)
        render(src, tmp_path / "dask.tif", model=ckpt, client="local:1")  # a LocalCluster on 127.0.0.1
        make_tiles(src, tmp_path / "copy", zooms=z, model=CopyModel(), render_zoom=z)
        make_tiles(src, tmp_path / "xyz", zooms=z, model=ckpt, render_zoom=z)
    finally:
        torch.set_num_threads(threads)
    with rasterio.open(tmp_path / "local.tif") as a, rasterio.open(tmp_path / "dask.tif") as b:
        local, remote = a.read(), b.read()
    assert np.array_equal(local, remote)

    assert np.array_equal(_xyz_image(tmp_path / "copy", x0, y0, z), rgb)  # the tiles see the raster's pixels
    tiles = _xyz_image(tmp_path / "xyz", x0, y0, z)
    inner = slice(32, SIDE - 32)  # the chips beyond the raster reach 32 px into it
    assert np.array_equal(tiles[:, inner, inner], local[:, inner, inner])
