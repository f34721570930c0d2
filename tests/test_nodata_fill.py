"""The one rule for nodata inside tiles (issue 15, item 11): nodata pixels are filled
before the model by mirroring valid pixels across the nearest valid pixel
(:func:`grid.cut.fill_nodata`), and masked after. Every path uses it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from geo_pix2pix import render
from geo_pix2pix.grid import cut
from geo_pix2pix.grid.cut import fill_nodata
from geo_pix2pix.grid.tiling import TileGrid

SAMPLE = Path(__file__).resolve().parent.parent / "sample_tiles" / "helsinki_map.tif"


def test_a_straight_nodata_edge_is_filled_by_reflection():
    """What render pads a raster's own edges with (numpy's 'reflect'), corners included."""
    rng = np.random.default_rng(0)
    data = rng.integers(1, 256, (3, 40, 30), dtype=np.uint8)
    tile = np.zeros((3, 64, 64), np.uint8)
    tile[:, 10:50, 20:50] = data
    missing = np.ones((64, 64), bool)
    missing[10:50, 20:50] = False
    want = np.pad(data, ((0, 0), (10, 14), (20, 14)), mode="reflect")
    assert np.array_equal(fill_nodata(tile, missing), want)


def test_holes_take_only_valid_pixels_and_clean_tiles_are_untouched():
    rng = np.random.default_rng(1)
    tile = rng.integers(1, 256, (3, 50, 50), dtype=np.uint8)
    missing = rng.random((50, 50)) > 0.6
    tile[:, missing] = 0
    filled = fill_nodata(tile, missing)
    assert np.array_equal(filled[:, ~missing], tile[:, ~missing])
    assert (filled != 0).all()  # no missing pixel's value was copied
    assert fill_nodata(tile, np.zeros((50, 50), bool)) is tile
    assert fill_nodata(tile, np.ones((50, 50), bool)) is tile  # never rendered anyway


def test_every_path_fills_nodata_with_the_one_rule(tmp_path, monkeypatch):
    """render, its Dask row tasks and tile metatiles all hand the model tiles filled by
    grid.cut.fill_nodata: the model never sees the nodata black."""
    from tilesdata import HELSINKI, bbox_of, block, write_xyz

    from geo_pix2pix.grid.core import render_tile_rows
    from geo_pix2pix.tiles import make_tiles
    from geo_pix2pix.tiles.area import Area

    calls = []

    def spy(tile, missing):
        if missing.any() and not missing.all():
            calls.append(missing.mean())
        return fill_nodata(tile, missing)

    monkeypatch.setattr(cut, "fill_nodata", spy)

    class NoBlack(torch.nn.Module):
        def forward(self, x):
            black = (x == -1).all(dim=1).flatten(1)  # run_batch pads a chunk with black tiles
            assert not (black.any(dim=1) & ~black.all(dim=1)).any(), "the model was fed nodata black"
            return x

    rng = np.random.default_rng(2)
    data = rng.integers(1, 256, (3, 300, 280), dtype=np.uint8)
    data[:, 200:] = 0
    data[:, :, :50] = 0
    with rasterio.open(tmp_path / "in.tif", "w", driver="GTiff", width=280, height=300, count=3, dtype="uint8",
                       nodata=0) as ds:
        ds.write(data)
    render(tmp_path / "in.tif", tmp_path / "out.tif", model=NoBlack())
    assert calls
    calls.clear()
    reader = cut.ArrayReader(data, (data != 0).any(axis=0))
    grid = TileGrid(300, 280, 256, 64)
    render_tile_rows(reader, NoBlack(), grid, range(grid.shape[0]))
    assert calls
    calls.clear()
    tiles = block(16, HELSINKI.x, HELSINKI.y, 3, 3)
    src = write_xyz(tmp_path / "src", [t for t in tiles if t.x != HELSINKI.x + 2])  # a column missing
    make_tiles(src, tmp_path / "xyz", zooms=16, model=NoBlack(), area=Area.from_bbox(bbox_of(tiles)))
    assert calls


def _collar_case(kind: str):
    """(full raster with a nodata=0 collar, the data alone, (rows, cols) of the data in the full raster).

    Sizes are multiples of the grid's stride (192 px for 256 px tiles, overlap 64), so the
    tiles of the cropped raster are tiles of the full raster too; with another grid every
    tile would see other pixels, and a GAN's output differs by far more than the collar's.
    """
    with rasterio.open(SAMPLE) as ds:
        data = ds.read(window=((0, 384), (0, 384)))  # no pixel of the sample is (0, 0, 0)
    if kind == "bottom-rows":
        full = np.zeros((3, 576, 384), np.uint8)
        where = (slice(0, 384), slice(0, 384))
    else:  # a gdalwarp-style black collar on every side, declared as nodata 0
        full = np.zeros((3, 768, 768), np.uint8)
        where = (slice(192, 576), slice(192, 576))
    full[:, where[0], where[1]] = data
    return full, data, where


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bottom-rows", "black-collar"])
def test_valid_pixels_by_a_nodata_collar_match_the_cropped_render(make_raster, tmp_path, kind):
    """With the default model: valid pixels farther than the blend width (the overlap,
    64 px) from the collar are within 1 grey level of a render of the raster cropped to
    its data (filled as it is, they are the same; before the rule, up to 160 off)."""
    full, data, (rows, cols) = _collar_case(kind)
    with rasterio.open(SAMPLE) as ds:
        res = ds.res[0]  # the sample's grid: rendered as it is, no resampling
    src = make_raster(*full.shape[1:], data=full, nodata=0, name="collar.tif", res=res)
    crop = make_raster(*data.shape[1:], data=data, name="crop.tif", res=res)
    assert not render(src, tmp_path / "collar_out.tif").resampled
    assert not render(crop, tmp_path / "crop_out.tif").resampled
    with rasterio.open(tmp_path / "collar_out.tif") as a, rasterio.open(tmp_path / "crop_out.tif") as b:
        got = a.read()[:, rows, cols].astype(int)
        want = b.read().astype(int)
        mask = a.dataset_mask()
    assert (mask[rows, cols] > 0).all() and (mask == 0).sum() == full.shape[1] * full.shape[2] - data[0].size
    blend = 64
    h, w = data.shape[1:]
    far = np.zeros((h, w), bool)
    top, left = (rows.start > 0) * blend, (cols.start > 0) * blend
    bottom = h - blend if rows.stop < full.shape[1] else h
    right = w - blend if cols.stop < full.shape[2] else w
    far[top:bottom, left:right] = True
    diff = np.abs(got - want)[:, far]
    assert diff.max() <= 1, (diff.max(), diff.mean())
