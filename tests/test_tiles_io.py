"""Tile sources and sinks: XYZ, MBTiles (read back with sqlite3), PMTiles (read back with the
pmtiles reader), a tile server and a tile cache served on 127.0.0.1, rasters in other CRSs."""

from __future__ import annotations

import functools
import http.server
import sqlite3
import threading
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import mercantile
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from tilesdata import HELSINKI, Identity, bbox_of, block, decode, map_pixels, read_tree, write_xyz

from geo_pix2pix.errors import DestinationBusyError, OutputExistsError, TileSourceError
from geo_pix2pix.tiles import Area, CopyModel, make_tiles, open_source
from geo_pix2pix.tiles.manifest import destination_lock, work_dir

SRC_TILES = block(16, HELSINKI.x, HELSINKI.y, 4, 4)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return write_xyz(tmp_path_factory.mktemp("src"), SRC_TILES)


@pytest.fixture(scope="module")
def xyz_out(source, tmp_path_factory):
    dest = tmp_path_factory.mktemp("out") / "xyz"
    r = make_tiles(source, dest, zooms="15-16", model=Identity(), meta_size=2)
    parents = {mercantile.parent(t) for t in SRC_TILES}
    assert (r.rendered, r.empty, r.failed, r.render_zoom) == (16 + len(parents), 0, 0, 16)
    return dest


@contextmanager
def serve(directory):
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_xyz_copy_is_exact(source, xyz_out):
    out = read_tree(xyz_out)
    assert {k for k in out if k[0] == 16} == {(16, t.x, t.y) for t in SRC_TILES}
    for t in SRC_TILES:
        assert np.array_equal(decode(out[(16, t.x, t.y)])[..., :3].transpose(2, 0, 1), map_pixels(t))
    assert (xyz_out / "tilejson.json").exists()
    assert not list(xyz_out.rglob("*.tmp"))  # atomic writes leave no temporary files


def test_mbtiles_rows_are_tms_and_metadata_complete(source, xyz_out, tmp_path):
    dest = tmp_path / "out.mbtiles"
    make_tiles(source, dest, zooms="15-16", model=Identity(), meta_size=2)
    xyz = read_tree(xyz_out)
    with sqlite3.connect(dest) as db:
        meta = dict(db.execute("SELECT name, value FROM metadata"))
        rows = db.execute("SELECT zoom_level, tile_column, tile_row, tile_data FROM tiles").fetchall()
    for key in ("name", "format", "bounds", "center", "minzoom", "maxzoom", "attribution"):
        assert meta.get(key), key
    assert meta["format"] == "png" and (meta["minzoom"], meta["maxzoom"]) == ("15", "16")
    w, s, e, n = (float(v) for v in meta["bounds"].split(","))
    lon, lat, cz = meta["center"].split(",")
    assert w < float(lon) < e and s < float(lat) < n and 15 <= int(cz) <= 16
    assert len(rows) == len(xyz)
    for z, col, row, data in rows:
        y = 2**z - 1 - row  # TMS → XYZ
        assert y != row
        b = mercantile.bounds(mercantile.Tile(col, y, z))
        assert b.west < e and b.east > w and b.south < n and b.north > s  # inside the area
        assert bytes(data) == xyz[(z, col, y)]


def test_pmtiles_readable_with_pmtiles_reader(source, xyz_out, tmp_path):
    from pmtiles.reader import MmapSource, Reader, all_tiles
    from pmtiles.tile import TileType

    dest = tmp_path / "out.pmtiles"
    make_tiles(source, dest, zooms="15-16", model=Identity(), meta_size=2)
    xyz = read_tree(xyz_out)
    with open(dest, "rb") as f:
        reader = Reader(MmapSource(f))
        header, meta = reader.header(), reader.metadata()
        assert header["tile_type"] == TileType.PNG
        assert (header["min_zoom"], header["max_zoom"]) == (15, 16)
        assert meta["format"] == "png" and meta["attribution"]
        for (z, x, y), data in xyz.items():
            assert reader.get(z, x, y) == data
        assert len(list(all_tiles(reader.get_bytes))) == len(xyz)


def test_mbtiles_and_url_sources_give_the_same_tiles(source, xyz_out, tmp_path):
    mb = tmp_path / "src.mbtiles"
    make_tiles(source, mb, zooms="16", model=CopyModel())
    expected = read_tree(xyz_out)
    out = tmp_path / "from_mbtiles"
    make_tiles(mb, out, zooms="15-16", model=Identity(), meta_size=2)
    assert read_tree(out) == expected
    with serve(source) as url:
        out2 = tmp_path / "from_url"
        area = Area.from_bbox(bbox_of(SRC_TILES))
        r = make_tiles(url + "/{z}/{x}/{y}.png", out2, zooms="15-16", area=area, model=Identity(),
                       meta_size=2)
    assert r.failed == 0
    assert read_tree(out2) == expected


def test_dest_served_over_http_answers_pngs(xyz_out):
    with serve(xyz_out) as url:
        for t in (SRC_TILES[0], SRC_TILES[-1], mercantile.parent(SRC_TILES[5])):
            with urllib.request.urlopen(f"{url}/{t.z}/{t.x}/{t.y}.png", timeout=10) as resp:
                assert resp.status == 200 and resp.headers["Content-Type"] == "image/png"
                data = resp.read()
            assert data[:8] == b"\x89PNG\r\n\x1a\n"
            assert decode(data).shape == (256, 256, 4)
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"{url}/16/0/0.png", timeout=10)


def test_raster_in_utm_is_read_through_a_warped_view(tmp_path):
    # A 1 m UTM 35N raster in Helsinki, 600 m square: tiles in Web Mercator, masked outside.
    rng = np.random.default_rng(1)
    data = np.repeat(np.repeat(rng.integers(30, 220, (3, 60, 60), dtype=np.uint8), 10, 1), 10, 2)
    src = tmp_path / "utm.tif"
    with rasterio.open(src, "w", driver="GTiff", width=600, height=600, count=3, dtype="uint8",
                       crs="EPSG:32635", transform=from_origin(385_000, 6_672_000, 1.0, 1.0)) as ds:
        ds.write(data)
    dest = tmp_path / "out"
    r = make_tiles(src, dest, zooms="16", model=CopyModel())
    assert r.rendered >= 1 and r.failed == 0
    tiles = read_tree(dest)
    alpha = np.concatenate([decode(d)[..., 3].ravel() for d in tiles.values()])
    assert (alpha == 0).any() and (alpha == 255).any()  # data and masked surroundings
    # the warped raster covers about 600 m × 600 m, i.e. ~(600 / 1.19)² px at z16 in Helsinki
    assert 0.8 < (alpha == 255).sum() / (600 / 1.19) ** 2 < 1.2


def test_source_errors(tmp_path):
    with pytest.raises(TileSourceError, match="does not exist"):
        open_source(tmp_path / "missing")
    (tmp_path / "empty" / "3").mkdir(parents=True)
    with pytest.raises(TileSourceError, match="holds no"):
        open_source(tmp_path / "empty")
    with pytest.raises(TileSourceError, match=r"\{z\}"):
        open_source("http://127.0.0.1:9/tiles.png")
    (tmp_path / "bad.mbtiles").write_bytes(b"not sqlite")
    with pytest.raises(TileSourceError, match="not an SQLite"):
        open_source(tmp_path / "bad.mbtiles")


def test_second_writer_is_refused_and_foreign_dest_protected(source, tmp_path):
    dest = tmp_path / "c.mbtiles"
    with destination_lock(work_dir(dest, "mbtiles"), str(dest)):
        with pytest.raises(DestinationBusyError, match="another geo-pix2pix process"):
            make_tiles(source, dest, zooms="16", model=Identity())
    foreign = tmp_path / "foreign"
    (foreign / "16").mkdir(parents=True)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        make_tiles(source, foreign, zooms="16", model=Identity())
    make_tiles(source, foreign, zooms="16", model=Identity(), overwrite=True)


SAMPLE = Path(__file__).resolve().parent.parent / "sample_tiles" / "xyz"


@pytest.mark.skipif(not SAMPLE.is_dir(), reason="sample_tiles/xyz is not there")
def test_sample_xyz_tiles_are_a_source_for_the_default_models_zoom():
    src = open_source(SAMPLE)
    assert src.zooms() == {14, 15, 16}
    w, s, e, n = src.bounds()
    assert w < 24.944 < e and s < 60.171 < n
    from geo_pix2pix.tiles import native_zoom

    assert native_zoom(2.12, (s + n) / 2) == 15  # the default model reads the z15 tiles
    tile = mercantile.tile(24.944, 60.171, 15)
    rgb, valid = src.pixels(tile, src.get(tile))
    assert rgb.shape == (3, 256, 256) and valid.any()
