"""Tile maths, areas and plans: pure functions, no files but GeoJSON."""

from __future__ import annotations

import json

import mercantile
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from tilesdata import HELSINKI, bbox_of, block

from geo_pix2pix.errors import OptionError
from geo_pix2pix.tiles import Area, ChipGrid, native_zoom, parse_zoom_range
from geo_pix2pix.tiles.plan import Plan
from geo_pix2pix.tiles.tilemath import parse_expire, resolution_at, tiles_at_zoom


def test_zoom_ranges():
    assert tuple(parse_zoom_range("14-17")) == (14, 15, 16, 17)
    assert parse_zoom_range("15") == (15, 15)
    for bad in ("17-14", "x", "-1", "3-99", "14-"):
        with pytest.raises(OptionError, match="--zoom"):
            parse_zoom_range(bad)


@pytest.mark.parametrize("bbox,match", [
    ("24.9,60.1,24.8,60.2", "west must be less than east"),
    ("24.9,60.2,25.0,60.1", "south must be less than north"),
    ("0,80,10,89", "Web Mercator"),
    ("0,-89,10,0", "Web Mercator"),
    ("1,2,3", "four numbers"),
    ("0,0,200,1", r"\[-180, 180\]"),
])
def test_bad_bbox(bbox, match):
    with pytest.raises(OptionError, match=match):
        Area.from_bbox(bbox)


def test_native_zoom_matches_ground_resolution():
    # The shipped model's 2.12 m/px: z15 in Helsinki (2.38 m/px), z16 at the equator (2.39).
    assert native_zoom(2.12, 60.17) == 15
    assert native_zoom(2.12, 0.0) == 16
    for z in (3, 12, 19):
        assert native_zoom(resolution_at(z, 45.0), 45.0) == z


def test_bbox_tile_counts():
    tiles = block(16, HELSINKI.x, HELSINKI.y, 3, 2)
    area = Area.from_bbox(bbox_of(tiles))
    assert area.tiles(16) == sorted(tiles, key=lambda t: (t.y, t.x))
    assert len(area.tiles(17)) == 24
    expected_15 = {mercantile.parent(t) for t in tiles}
    assert set(area.tiles(15)) == expected_15
    plan = Plan(area, parse_zoom_range("15-17"), 16, meta_size=2)
    assert plan.total == len(expected_15) + 6 + 24


def _write_aoi(path, geometry):
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": geometry}]}))
    return path


def test_aoi_polygon_tile_counts(tmp_path):
    b = mercantile.bounds(HELSINKI)
    w, s = b.west, b.south
    dx, dy = (b.east - b.west), (b.north - b.south)
    # A triangle over 4×4 tiles at z16: its hypotenuse runs diagonally through them.
    tri = [[w, s], [w + 4 * dx, s], [w, s + 4 * dy], [w, s]]
    path = _write_aoi(tmp_path / "aoi.geojson", {"type": "Polygon", "coordinates": [tri]})
    area = Area.from_geojson(path)
    poly = shapely.Polygon(tri)
    for z in (16, 17, 18):
        box_tiles = list(mercantile.tiles(*poly.bounds, [z]))
        expected = {t for t in box_tiles
                    if poly.intersection(shapely.box(*mercantile.bounds(t))).area > 0}
        got = area.tiles(z)
        assert set(got) == expected
        assert len(got) < len(box_tiles)


@pytest.mark.parametrize("geometry,match", [
    ({"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}, "invalid"),
    ({"type": "Polygon", "coordinates": []}, "empty"),
    ({"type": "LineString", "coordinates": [[0, 0], [1, 1]]}, "Polygon"),
    ({"type": "Polygon", "coordinates": [[[2e6, 8e6], [2.1e6, 8e6], [2.1e6, 8.1e6], [2e6, 8e6]]]},
     "EPSG:4326"),
])
def test_bad_aoi(tmp_path, geometry, match):
    with pytest.raises(OptionError, match=match):
        Area.from_geojson(_write_aoi(tmp_path / "a.geojson", geometry))


def test_aoi_missing_or_not_geojson(tmp_path):
    with pytest.raises(OptionError, match="does not exist"):
        Area.from_geojson(tmp_path / "nope.geojson")
    (tmp_path / "x.geojson").write_text("{nope")
    with pytest.raises(OptionError, match="not readable GeoJSON"):
        Area.from_geojson(tmp_path / "x.geojson")


@settings(max_examples=60, deadline=None)
@given(buffer=st.integers(0, 127), x=st.integers(2, 1000), y=st.integers(2, 1000))
def test_dependencies_and_dependents_are_inverse(buffer, x, y):
    grid = ChipGrid(buffer)
    t = mercantile.Tile(x, y, 12)
    for d in grid.dependents(t):
        assert t in grid.dependencies(d)
    for d in grid.dependencies(t):
        assert t in grid.dependents(d)
        # chips reach one tile, and the 2-px interpolation margin at most a pixel further
        assert abs(d.x - t.x) <= 2 and abs(d.y - t.y) <= 2


@settings(max_examples=60, deadline=None)
@given(buffer=st.integers(0, 127), lo=st.integers(-2000, 2000), n=st.integers(1, 600))
def test_chips_cover_every_pixel(buffer, lo, n):
    grid = ChipGrid(buffer)
    ks = grid.chips(lo, lo + n)
    starts = [grid.chip_start(k) for k in ks]
    assert all(s < lo + n and s + 256 > lo for s in starts)  # each touches the span
    covered = set()
    for s in starts:
        covered.update(range(max(s, lo), min(s + 256, lo + n)))
    assert covered == set(range(lo, lo + n))
    # no chip outside the range touches it
    assert grid.chip_start(ks.start - 1) + 256 <= lo and grid.chip_start(ks.stop) >= lo + n


def test_default_buffer_dependents_are_the_3x3_neighbourhood():
    grid = ChipGrid()
    assert grid.overlap == 64
    t = mercantile.Tile(100, 200, 16)
    around = {mercantile.Tile(100 + i, 200 + j, 16) for i in (-1, 0, 1) for j in (-1, 0, 1)}
    assert set(grid.dependents(t)) == around
    with pytest.raises(OptionError, match="--buffer"):
        ChipGrid(128)


def test_plan_levels():
    area = Area.from_bbox(bbox_of(block(16, HELSINKI.x, HELSINKI.y, 2, 2)))
    p = Plan(area, parse_zoom_range("14-17"), 15)
    assert p.stored_levels == [14, 15, 16, 17]
    assert p.overview_levels == [14] and p.upsampled_levels == [16, 17]
    hidden = Plan(area, parse_zoom_range("12-13"), 15)
    assert hidden.stored_levels == [12, 13, 14, 15] and hidden.overview_levels == [14, 13, 12]
    above = Plan(area, parse_zoom_range("17"), 15)
    assert above.stored_levels == [17] and above.overview_levels == []
    base = next(iter(above.tiles(15)))
    assert set(above.family(base)) <= set(tiles_at_zoom(base, 17))
    with pytest.raises(OptionError, match="upsampled"):
        Plan(area, parse_zoom_range("14-22"), 15)
    with pytest.raises(OptionError, match="--meta-size"):
        Plan(area, parse_zoom_range("15"), 15, meta_size=0)


def test_expire_lists():
    assert parse_expire(["15/18654/9478", "", "# comment", "16/1/2  # trailing"]) == [
        mercantile.Tile(18654, 9478, 15), mercantile.Tile(1, 2, 16)]
    with pytest.raises(OptionError, match="line 2"):
        parse_expire(["1/0/0", "15/x/1"])
    with pytest.raises(OptionError, match="does not exist"):
        parse_expire(["2/4/0"])
