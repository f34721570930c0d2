"""Real data at the edges, through ``tiles`` (issue 15, items 12, 13, 16 and 17).

- Malformed inputs are one line, not a traceback: AOI GeoJSON with short rings,
  features that are not objects, strings, NaN or Infinity for coordinates; an expire
  file that is not text; an MBTiles source with a non-integer zoom_level. A NULL
  tile_data is one failed tile (exit code 3), the others are made.
- Messages name what the user gave: ``--render-zoom 30`` (not ``--zoom 30-30``), a
  raster beyond 180° (not a ``--bbox`` never given).
- Provenance: the source's attribution (a raster's ATTRIBUTION tag, an XYZ folder's
  tilejson.json, MBTiles metadata) is carried next to "synthetic imagery"; the
  software's version and the model's identity are recorded; no local path is written.
- Standards: ``--url-base`` gives tilejson.json absolute tile URLs (TileJSON 3.0.0); the
  MBTiles ``version`` is the tileset's revision, not the spec's "1.3".
"""

from __future__ import annotations

import json
import sqlite3

import mercantile
import numpy as np
import pytest
import rasterio
from clihelpers import assert_user_error, cli, message_lines
from rasterio.transform import from_origin
from tilesdata import HELSINKI, Identity, bbox_of, block, map_pixels, png_bytes, write_xyz

from geo_pix2pix import __version__
from geo_pix2pix.errors import OptionError
from geo_pix2pix.tiles import Area, CopyModel, make_tiles

TILES = block(16, HELSINKI.x, HELSINKI.y, 2, 2)
ARGS = ["--zoom", "16", "--bbox", bbox_of(TILES), "--no-model", "--meta-size", "2"]


def _geojson(tmp, doc, raw: str | None = None) -> str:
    path = tmp / "aoi.geojson"
    path.write_text(raw if raw is not None else json.dumps(doc))
    return str(path)


def _feature(coords):
    return {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": coords}}]}


BAD_AOI = {
    "two-point-ring": (_feature([[[24.9, 60.1], [25.0, 60.2]]]), None, "at least 3 corners"),
    "three-positions-open": (_feature([[[24.9, 60.1], [25.0, 60.2], [24.9, 60.1]]]), None, "at least 3 corners"),
    "feature-is-a-number": ({"type": "FeatureCollection", "features": [1]}, None, "feature 0 is a number"),
    "feature-is-a-string": ({"type": "FeatureCollection", "features": ["x"]}, None, "feature 0 is a string"),
    "features-not-a-list": ({"type": "FeatureCollection", "features": {"a": 1}}, None, "not a list"),
    "geometry-is-a-string": ({"type": "Feature", "geometry": "POLYGON"}, None, "not a GeoJSON object"),
    "string-coordinates": (_feature([[["24.9", 60.1], [25.0, 60.2], [25.0, 60.1], ["24.9", 60.1]]]), None,
                           "every position must be [lon, lat] in numbers"),
    "coordinates-a-string": (_feature("24.9 60.1"), None, "not a list of rings"),
    "nan-coordinates": (None, '{"type": "Polygon", "coordinates": [[[NaN, 60.1], [25.0, 60.2], [25.0, 60.1], '
                              '[NaN, 60.1]]]}', "finite numbers (not NaN or Infinity)"),
    "infinite-coordinates": (None, '{"type": "Polygon", "coordinates": [[[Infinity, 60.1], [25.0, 60.2], '
                                   '[25.0, 60.1], [Infinity, 60.1]]]}', "finite numbers"),
    "null-position": (_feature([[None, [25.0, 60.2], [25.0, 60.1], None]]), None, "has the position null"),
    "unknown-geometry-type": ({"type": "Feature", "geometry": {"type": "Circle", "radius": 3}}, None,
                              "of type 'Circle'"),
    "not-utf8": (None, None, "not readable GeoJSON"),
}


@pytest.mark.parametrize("case", list(BAD_AOI))
def test_malformed_aoi_is_one_line(tmp_path, case):
    doc, raw, fragment = BAD_AOI[case]
    src = write_xyz(tmp_path / "src", TILES)
    if case == "not-utf8":
        path = tmp_path / "aoi.geojson"
        path.write_bytes(b"\xff\xfe\x00binary\x80")
        path = str(path)
    else:
        path = _geojson(tmp_path, doc, raw)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert_user_error(cli("tiles", src, tmp_path / "out.mbtiles", "--zoom", "16", "--aoi", path, "--no-model"),
                      fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_unclosed_ring_is_closed_as_ogr_does(tmp_path):
    b = mercantile.bounds(HELSINKI)
    ring = [[b.west, b.south], [b.east, b.south], [b.east, b.north], [b.west, b.north]]  # not closed
    area = Area.from_geojson(_geojson(tmp_path, _feature([ring])))
    assert area.tiles(16) == [HELSINKI]


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\x00\x00binary\xff\xfe", b"15/1/2\n\x00\x00\x00\n"])
def test_expire_file_that_is_not_a_list_is_one_line(tmp_path, content):
    src = write_xyz(tmp_path / "src", TILES)
    expire = tmp_path / "expire.list"
    expire.write_bytes(content)
    assert_user_error(cli("tiles", src, tmp_path / "out", *ARGS, "--expire", expire), "--expire")
    assert not (tmp_path / "out").exists()


def _mbtiles(path, rows, meta=()):
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE metadata (name TEXT, value TEXT);"
                     "CREATE TABLE tiles (zoom_level, tile_column INTEGER, tile_row INTEGER, tile_data BLOB);")
    db.executemany("INSERT INTO metadata VALUES (?, ?)", list(meta))
    db.executemany("INSERT INTO tiles VALUES (?, ?, ?, ?)", rows)
    db.commit()
    db.close()
    return path


def _row(t, data="png"):
    return (t.z, t.x, 2**t.z - 1 - t.y, png_bytes(map_pixels(t)) if data == "png" else data)


def test_mbtiles_source_with_a_null_tile_fails_that_tile_only(tmp_path):
    bad = TILES[3]
    src = _mbtiles(tmp_path / "map.mbtiles", [_row(t) for t in TILES[:3]] + [_row(bad, None)])
    result = cli("tiles", src, tmp_path / "out", *ARGS)
    assert result.exit_code == 3, result.output
    failed = [s for s in message_lines(result.output) if s.startswith("failed ")]
    assert len(failed) == 1 and failed[0].startswith(f"failed 16/{bad.x}/{bad.y}: ")
    assert "tile_data is NULL" in failed[0]
    assert "3 rendered" in result.output


@pytest.mark.parametrize("zoom", ["16", 16.5, "sixteen"])
def test_mbtiles_source_with_a_zoom_that_is_not_an_integer_is_one_line(tmp_path, zoom):
    rows = [_row(t) for t in TILES] + [(zoom, TILES[0].x, 0, png_bytes(map_pixels(TILES[0])))]
    src = _mbtiles(tmp_path / "map.mbtiles", rows)
    assert_user_error(cli("tiles", src, tmp_path / "out", *ARGS), "zoom_level")


def test_render_zoom_is_named_as_given(tmp_path):
    src = write_xyz(tmp_path / "src", TILES)
    with pytest.raises(OptionError, match=r"--render-zoom 30 must be a zoom from 0 to 24") as info:
        make_tiles(src, tmp_path / "out", zooms="16", model=CopyModel(), render_zoom=30)
    assert "--zoom 30" not in str(info.value)
    line = assert_user_error(cli("tiles", src, tmp_path / "out", *ARGS, "--render-zoom", "30"), "--render-zoom 30")
    assert "--zoom 30" not in line
    # a render zoom the source lacks: the option is named, not the model
    line = assert_user_error(cli("tiles", src, tmp_path / "out", *ARGS, "--render-zoom", "15"), "--render-zoom 15")
    assert "model runs" not in line


def _raster_4326(path, west: float, tags=None):
    data = np.stack([np.full((100, 100), v, np.uint8) for v in (90, 140, 60)])
    with rasterio.open(path, "w", driver="GTiff", width=100, height=100, count=3, dtype="uint8",
                       crs="EPSG:4326", transform=from_origin(west, 10.0, 0.001, 0.001)) as ds:
        ds.write(data)
        if tags:
            ds.update_tags(**tags)
    return path


def test_raster_beyond_180_degrees_is_named_not_a_bbox(tmp_path):
    src = _raster_4326(tmp_path / "pacific.tif", 190.0)
    line = assert_user_error(cli("tiles", src, tmp_path / "out", "--zoom", "12", "--no-model"), "beyond ±180°")
    assert "pacific.tif" in line and "--bbox 190" not in line


def test_source_extent_that_is_not_usable_is_named_as_the_source(tmp_path):
    rows = [_row(t) for t in TILES]
    src = _mbtiles(tmp_path / "map.mbtiles", rows, [("bounds", "200,10,210,20")])
    # the metadata's bounds are ignored where the tiles say better: the tiles' extent is used
    assert cli("-q", "tiles", src, tmp_path / "out", "--zoom", "16", "--no-model").exit_code == 0
    with pytest.raises(OptionError, match=r"the extent of source 'm.mbtiles' \(190,10,200,20\) lies beyond"):
        Area.of_source((190.0, 10.0, 200.0, 20.0), "m.mbtiles")
    world = Area.of_source((-180, -90, 180, 90), "world.mbtiles")  # clamped, not refused
    assert world.bounds[1] > -85.06 and world.bounds[3] < 85.06


def _metadata(path) -> dict:
    db = sqlite3.connect(path)
    try:
        return dict(db.execute("SELECT name, value FROM metadata"))
    finally:
        db.close()


def test_raster_attribution_is_carried_next_to_synthetic_imagery(tmp_path):
    b = mercantile.bounds(HELSINKI)
    src = tmp_path / "map.tif"
    with rasterio.open(src, "w", driver="GTiff", width=256, height=256, count=3, dtype="uint8", crs="EPSG:4326",
                       transform=from_origin(b.west, b.north, (b.east - b.west) / 256,
                                             (b.north - b.south) / 256)) as ds:
        ds.write(map_pixels(HELSINKI))
        ds.update_tags(ATTRIBUTION="© OpenStreetMap contributors, ODbL", SOURCE="Helsinki.osm.pbf")
    dest = tmp_path / "out.mbtiles"
    make_tiles(src, dest, zooms="16", model=Identity())
    meta = _metadata(dest)
    assert meta["attribution"].startswith("Synthetic aerial imagery")
    assert meta["attribution"].endswith("map data: © OpenStreetMap contributors, ODbL")
    assert meta["generator"] == f"geo-pix2pix {__version__}"
    assert len(meta["model"]) == 64  # the model's identity: a hash of its weights
    assert "map.tif" in meta["description"] and __version__ in meta["description"]
    assert all(str(tmp_path) not in str(v) for v in meta.values())  # no local path published
    assert meta["version"] == "1"  # the tileset's first revision, not MBTiles 1.3


def test_xyz_source_attribution_and_tilejson(tmp_path):
    src = write_xyz(tmp_path / "src", TILES)
    (src / "tilejson.json").write_text(json.dumps({"tilejson": "3.0.0", "attribution": "© Map makers",
                                                   "tiles": ["{z}/{x}/{y}.png"]}))
    dest = tmp_path / "out"
    make_tiles(src, dest, zooms="16", area=Area.from_bbox(bbox_of(TILES)), model=Identity(), meta_size=2)
    doc = json.loads((dest / "tilejson.json").read_text())
    assert doc["attribution"].startswith("Synthetic aerial imagery") and doc["attribution"].endswith("© Map makers")
    assert doc["tiles"] == ["{z}/{x}/{y}.png"]  # relative: to the tilejson.json's own URL
    assert doc["version"] == "1.0.0" and doc["generator"] == f"geo-pix2pix {__version__}" and doc["model"]
    assert str(tmp_path) not in json.dumps(doc)
    # --url-base: absolute URLs, as TileJSON 3.0.0 asks
    result = cli("-q", "tiles", src, dest, *ARGS, "--url-base", "https://tiles.example.org/aerial/")
    assert result.exit_code == 0, result.output
    doc = json.loads((dest / "tilejson.json").read_text())
    assert doc["tiles"] == ["https://tiles.example.org/aerial/{z}/{x}/{y}.png"]
    # the copy's attribution is the source's own
    assert doc["attribution"] == "© Map makers"


def test_url_base_must_be_absolute_and_for_a_folder(tmp_path):
    src = write_xyz(tmp_path / "src", TILES)
    assert_user_error(cli("tiles", src, tmp_path / "out", *ARGS, "--url-base", "aerial/"), "absolute URL")
    assert_user_error(cli("tiles", src, tmp_path / "out.mbtiles", *ARGS, "--url-base", "https://x.org/a"),
                      "drop --url-base")


def test_version_counts_the_revisions_that_changed_tiles(tmp_path):
    src = write_xyz(tmp_path / "src", TILES)
    dest = tmp_path / "out.mbtiles"
    for variant, expect in ((0, "1"), (0, "1"), (1, "2")):
        write_xyz(src, TILES, variant=variant)
        assert cli("-q", "tiles", src, dest, *ARGS).exit_code == 0
        assert _metadata(dest)["version"] == expect


def test_description_of_a_url_source_has_no_query_string(tmp_path):
    from geo_pix2pix.tiles.sources import TileServer

    src = TileServer("https://user:secret@tiles.example.org/{z}/{x}/{y}.png?access_token=SECRET")
    assert src.public_name() == "https://tiles.example.org/{z}/{x}/{y}.png"
