"""Properties of the tiling and blend maths over many random sizes (hypothesis)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geo_pix2pix.grid.blend import BlendWeights
from geo_pix2pix.grid.core import TilePipeline, render_array
from geo_pix2pix.grid.cut import ArrayReader
from geo_pix2pix.grid.tiling import TileGrid, axis_starts, blend_window

sizes = st.integers(min_value=1, max_value=3000)


@st.composite
def grids(draw, max_len=3000):
    tile = draw(st.sampled_from([1, 2, 7, 16, 64, 100, 256, 512]))
    overlap = draw(st.integers(min_value=0, max_value=tile - 1))
    length = draw(st.integers(min_value=1, max_value=max_len))
    return length, tile, overlap


@settings(max_examples=3000, deadline=None)
@given(grids())
def test_axis_starts_cover_every_pixel_with_at_least_the_overlap(args):
    length, tile, overlap = args
    starts = axis_starts(length, tile, overlap)
    assert starts == sorted(starts)
    assert starts[0] <= 0 and starts[-1] + tile >= length  # every pixel covered
    for a, b in zip(starts, starts[1:], strict=False):
        assert b > a  # progress
        assert a + tile - b >= overlap  # neighbours overlap at least as asked
    # the margin beyond the raster is never more than a tile
    assert -starts[0] < tile and starts[-1] + tile - length < tile


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from([4, 16, 64, 256]), st.data())
def test_blend_window_is_positive_symmetric_and_one_inside(tile, data):
    overlap = data.draw(st.integers(0, tile - 1))
    w = blend_window(tile, overlap)
    assert w.shape == (tile, tile)
    assert (w > 0).all() and (w <= 1).all()
    assert np.allclose(w, w.T) and np.allclose(w, w[::-1, ::-1])
    ramp = min(overlap, tile // 2)
    if tile - 2 * ramp > 0:
        assert (w[ramp : tile - ramp, ramp : tile - ramp] == 1).all()


def _window_sum(grid: TileGrid) -> np.ndarray:
    """Σ of every tile's 2-D window at every pixel, tile by tile (float64)."""
    total = np.zeros((grid.height + 2 * grid.tile_size, grid.width + 2 * grid.tile_size))
    w, t = blend_window(grid.tile_size, grid.overlap), grid.tile_size
    for chip in grid:
        total[chip.row_off + t : chip.row_off + 2 * t, chip.col_off + t : chip.col_off + 2 * t] += w
    return total[t : t + grid.height, t : t + grid.width]


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 600), st.integers(1, 600), st.sampled_from([16, 64, 256]), st.data())
def test_every_pixel_has_positive_weight_and_the_coverage_product_is_the_weight_sum(h, w, tile, data):
    overlap = data.draw(st.integers(0, tile - 1))
    grid = TileGrid(h, w, tile, overlap)
    wsum = BlendWeights.of(grid).weight_sum(0, h)
    assert (wsum > 0).all()  # every pixel covered by some tile with positive weight
    # The product of the 1-D coverages is the 2-D sum (to float32 accuracy; 1e-5 is 300×
    # below what could change a uint8 after rounding).
    assert np.allclose(wsum, _window_sum(grid), rtol=1e-5, atol=0)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 300), st.integers(1, 300), st.sampled_from([16, 32, 256]), st.data())
def test_identity_round_trip_exact_with_nodata_tiles_skipped(h, w, tile, data):
    """Tiles cut from an image, run through an identity model and blended back give the
    image exactly (uint8 after rounding), with the mask it was read with; tiles that
    would be all nodata are skipped."""
    overlap = data.draw(st.integers(0, tile - 1))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    img = rng.integers(0, 256, (3, h, w), dtype=np.uint8)
    valid = rng.random((h, w)) < data.draw(st.sampled_from([0.0, 0.01, 0.5, 1.0]))
    out, mask, run = render_array(img, torch.nn.Identity(), valid, tile_size=tile, overlap=overlap)
    assert np.array_equal(mask, valid)
    assert np.array_equal(out[:, valid], img[:, valid])
    assert run <= len(TileGrid(h, w, tile, overlap)) and (run > 0) == valid.any()


def _peak_bytes(height: int) -> int:
    img = np.zeros((3, height, 300), np.uint8)
    pipe = TilePipeline(ArrayReader(img), torch.nn.Identity(), tile_size=64, overlap=16, batch_size=8)
    tracemalloc.start()
    try:
        done = sum(rows.shape[1] for _, rows, _ in pipe)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert done == height
    return peak


def test_the_pipeline_hands_rows_out_as_it_goes_memory_bounded_by_a_tile_row():
    short, tall = _peak_bytes(300), _peak_bytes(3000)
    assert tall < 1.2 * short  # a tile row or two, not the raster


def test_grid_len_and_order():
    grid = TileGrid(700, 523, 256, 64)
    chips = list(grid)
    assert len(chips) == len(grid) == grid.shape[0] * grid.shape[1]
    assert [c.index for c in chips] == list(range(len(grid)))
    assert "TileGrid" in repr(grid)


def test_grid_rejects_bad_arguments():
    with pytest.raises(ValueError, match="overlap"):
        TileGrid(10, 10, 256, 256)
    with pytest.raises(ValueError, match="at least 1"):
        TileGrid(0, 10)


def test_explicit_starts_are_checked_and_kept():
    grid = TileGrid(300, 200, 64, 16, row_starts=[-10, 40, 90, 140, 190, 240], col_starts=[0, 64, 128, 136])
    assert grid.shape == (6, 4) and grid.row_starts[0] == -10 and grid.rows_done_after(0) == 40
    for starts, match in (([0, 64], "cover"), ([5, 60, 120, 180, 240], "cover"), ([-64, 0, 64, 128, 192, 256], "cover"),
                          ([0, 64, 128, 192, 256, 300], "cover"), ([0, 65, 130, 195, 250], "gap"),
                          ([0, 0, 64, 128, 192, 256], "increase")):
        with pytest.raises(ValueError, match=match):
            TileGrid(300, 200, 64, 16, row_starts=starts)


def test_row_groups_hold_enough_tiles():
    grid = TileGrid(2000, 500, 256, 64)  # 3 tiles a row
    groups = list(grid.row_groups(8))
    assert [len(g) for g in groups[:-1]] == [3] * (len(groups) - 1)
    assert [r for g in groups for r in g] == list(range(grid.shape[0]))
