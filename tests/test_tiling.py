"""Properties of the tiling and mosaic maths over many random sizes (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geo_pix2pix.mosaic import StripMosaic
from geo_pix2pix.tiling import TileGrid, axis_starts, blend_window

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


def _normalised_weights(height, width, tile, overlap, skip=frozenset()):
    """Per-tile normalised weights of every pixel, via the mosaic's own bookkeeping."""
    grid = TileGrid(height, width, tile, overlap)
    mosaic = StripMosaic(grid, channels=1)
    for chip in grid:
        if chip.index in skip:
            continue
        mosaic.add(chip, np.ones((1, tile, tile), np.float32))
    first, blended, wsum = mosaic.pop_rows(height)
    return grid, blended[0], wsum


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 600), st.integers(1, 600), st.sampled_from([16, 64, 256]), st.data())
def test_every_pixel_has_positive_weight_and_weights_normalise_to_one(h, w, tile, data):
    overlap = data.draw(st.integers(0, tile - 1))
    grid, blended, wsum = _normalised_weights(h, w, tile, overlap)
    assert (wsum > 0).all()  # every pixel covered by some tile with positive weight
    # Blending all-ones outputs gives one: the normalised weights sum to one (to float32
    # accuracy; 1e-5 is 300× below what could change a uint8 after rounding).
    assert np.allclose(blended, 1.0, atol=1e-5)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 400), st.integers(1, 400), st.sampled_from([16, 32, 256]), st.data())
def test_identity_mosaic_round_trip_exact_with_nodata_tiles_skipped(h, w, tile, data):
    """Tiles cut from an image and blended back give the image exactly (uint8 after
    rounding); tiles that would be all nodata are skipped and leave weight 0 only where
    no other tile covers."""
    overlap = data.draw(st.integers(0, tile - 1))
    seed = data.draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (3, h, w), dtype=np.uint8)
    valid = rng.random((h, w)) < data.draw(st.sampled_from([0.0, 0.01, 0.5, 1.0]))
    grid = TileGrid(h, w, tile, overlap)
    mosaic = StripMosaic(grid)
    m = overlap // 2 + tile  # pad generously so every chip can be cut
    padded = np.pad(img, ((0, 0), (m, m), (m, m)), mode="reflect" if min(h, w) > 1 else "edge")
    vpad = np.pad(valid, ((m, m), (m, m)))
    for chip in grid:
        ys, xs = chip.row_off + m, chip.col_off + m
        if not vpad[ys : ys + tile, xs : xs + tile].any():
            continue
        t = padded[:, ys : ys + tile, xs : xs + tile].astype(np.float32) / 127.5 - 1
        mosaic.add(chip, t)
    _, blended, wsum = mosaic.pop_rows(h)
    out = np.rint((blended + 1) * 127.5).clip(0, 255).astype(np.uint8)
    assert (wsum[valid] > 0).all()  # every valid pixel got some tile
    assert np.array_equal(out[:, valid], img[:, valid])


def test_strip_mosaic_pops_rows_incrementally_and_bounds_memory():
    h, w, tile, overlap = 5000, 300, 256, 64
    grid = TileGrid(h, w, tile, overlap)
    mosaic = StripMosaic(grid)
    popped, peak = 0, 0
    for r in range(grid.shape[0]):
        for chip in grid.row(r):
            mosaic.add(chip, np.zeros((3, tile, tile), np.float32))
        first, rows, _ = mosaic.pop_rows(grid.rows_done_after(r))
        assert first == popped
        popped += rows.shape[1]
        peak = max(peak, mosaic.rows_held + rows.shape[1])
    assert popped == h
    assert peak <= 2 * tile  # a strip, not the raster


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
