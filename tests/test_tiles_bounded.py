"""Bounded memory and time for ``tiles`` (issue 15, items 5 and 6).

- Plans are streamed: a whole-world box at zoom 15 (10⁹ tiles) is counted without
  listing a tile and its first metatiles come at once, in a few MB; the run itself is
  refused at once with its size unless ``--max-tiles`` allows it.
- A source whose metadata claims the whole world, an expire list ``0/0/0`` and an AOI
  ring drawn across the antimeridian are each planned in bounded memory (the AOI as two
  narrow pieces, as a W > E ``--bbox`` is).
- A tile server that trickles bytes or sleeps cannot hold a tile past its deadline:
  the tile fails (exit code 3) and the run ends in bounded time. The servers run on
  127.0.0.1 in this process and stop with the test.
"""

from __future__ import annotations

import http.server
import json
import sqlite3
import threading
import time
import tracemalloc
from contextlib import contextmanager

import mercantile
import pytest
import shapely
from clihelpers import assert_user_error, cli, message_lines
from tilesdata import HELSINKI, Identity, bbox_of, block, map_pixels, png_bytes, read_tree, write_xyz

from geo_pix2pix.errors import OptionError, TileSourceError
from geo_pix2pix.tiles import Area, CopyModel, make_tiles, parse_zoom_range
from geo_pix2pix.tiles.plan import Expiry, Plan
from geo_pix2pix.tiles.sources import TileServer
from geo_pix2pix.tiles.tilemath import ChipGrid, parse_expire

WORLD = "-180,-85,180,85"


def test_world_bbox_at_zoom_15_is_counted_and_streamed_in_bounded_memory():
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        plan = Plan(Area.from_bbox(WORLD), parse_zoom_range("10-15"), 15)
        counted = plan.total, plan.work(), plan.metatile_count()
        first = []
        for _, tiles in plan.metatiles():
            first.append((tiles[0], len(tiles), len(plan.families(tiles))))
            if len(first) == 50:
                break
        blocks = next(plan.overview_blocks(14))
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    n15 = plan.count(15)
    assert n15 == 2**15 * (mercantile.tile(0, -85 + 1e-11, 15).y - mercantile.tile(0, 85, 15).y + 1)
    assert counted[0] == sum(plan.count(z) for z in range(10, 16)) > 10**9
    rows = plan.area.rows(15)
    assert counted[2] == 4096 * ((rows.stop - 1) // 8 - rows.start // 8 + 1)
    assert all(0 < n <= 64 and fams == n for _, n, fams in first)
    assert 0 < len(blocks[0]) <= 64 * 64 and 2 * len(blocks[0]) < len(blocks[1]) <= 4 * len(blocks[0])
    assert seconds < 10, seconds  # about 0.1 s here
    assert peak < 30 * 2**20, peak  # a few MB: one row of metatiles at most


def test_world_run_is_refused_at_once_with_its_size(tmp_path):
    src = write_xyz(tmp_path / "src", block(15, HELSINKI.x // 2, HELSINKI.y // 2, 2, 2)
                    + block(14, HELSINKI.x // 4, HELSINKI.y // 4, 1, 1))
    t0 = time.perf_counter()
    line = assert_user_error(cli("tiles", src, tmp_path / "out.mbtiles", "--zoom", "15", "--bbox", WORLD,
                                 "--no-model"), "1,070,268,416 tiles to make")
    assert time.perf_counter() - t0 < 30
    assert "more than --max-tiles 100,000,000" in line and "narrow the area" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # nothing written
    # The same size is refused under any limit below it, and the limit is the user's.
    assert_user_error(cli("tiles", src, tmp_path / "out.mbtiles", "--zoom", "12-14", "--bbox", "20,55,30,65",
                          "--no-model", "--max-tiles", "1000"), "more than --max-tiles 1,000")


def test_aoi_size_is_bounded_from_its_area_before_any_count(tmp_path):
    aoi = tmp_path / "world.geojson"
    # (edges shorter than 180° of longitude: a longer one would be read as crossing the antimeridian)
    aoi.write_text(json.dumps({"type": "Polygon", "coordinates": [
        [[-179, -80], [0, -80], [179, -80], [179, 80], [0, 80], [-179, 80], [-179, -80]]]}))
    area = Area.from_geojson(aoi)
    plan = Plan(area, parse_zoom_range("20"), 20)
    t0 = time.perf_counter()
    assert plan.at_least() > 10**11  # instant: the polygon's area in tiles
    assert time.perf_counter() - t0 < 1
    src = write_xyz(tmp_path / "src", block(16, HELSINKI.x, HELSINKI.y, 1, 1))
    t0 = time.perf_counter()
    assert_user_error(cli("tiles", src, tmp_path / "o", "--zoom", "20", "--aoi", aoi, "--no-model",
                          "--render-zoom", 16), "is at least ")
    assert time.perf_counter() - t0 < 30


def mbtiles_source(path, tiles, meta_bounds: str):
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE metadata (name TEXT, value TEXT);"
                     "CREATE TABLE tiles (zoom_level INTEGER, tile_column INTEGER, tile_row INTEGER, tile_data BLOB);")
    db.execute("INSERT INTO metadata VALUES ('bounds', ?)", (meta_bounds,))
    db.execute("INSERT INTO metadata VALUES ('attribution', '© Map makers')")
    for t in tiles:
        db.execute("INSERT INTO tiles VALUES (?, ?, ?, ?)", (t.z, t.x, 2**t.z - 1 - t.y, png_bytes(map_pixels(t))))
    db.commit()
    db.close()
    return path


def test_source_whose_metadata_claims_the_world_is_planned_on_its_data(tmp_path):
    tiles = block(16, HELSINKI.x, HELSINKI.y, 2, 2)
    src = mbtiles_source(tmp_path / "map.mbtiles", tiles, "-180,-85.0511,180,85.0511")
    r = make_tiles(src, tmp_path / "out", zooms="16", model=CopyModel(), meta_size=2)
    assert r.total == 4 and r.rendered == 4
    # A source whose tiles really span the world is refused at once, with its size.
    corners = [mercantile.Tile(0, 0, 16), mercantile.Tile(2**16 - 1, 2**16 - 1, 16)]
    world = mbtiles_source(tmp_path / "world.mbtiles", corners, "-180,-85.0511,180,85.0511")
    line = assert_user_error(cli("tiles", world, tmp_path / "w.mbtiles", "--zoom", "16", "--no-model"),
                             "SOURCE's extent: the default area")
    assert "4,294,967,296 tiles" in line and "--bbox" in line


def test_expire_line_for_the_whole_world_is_one_entry(tmp_path):
    tiles = block(16, HELSINKI.x, HELSINKI.y, 4, 4)
    src = write_xyz(tmp_path / "src", tiles)
    dest = tmp_path / "out"
    make_tiles(src, dest, zooms="16", model=Identity(), meta_size=2)
    expiry = Expiry(parse_expire(["0/0/0"]), 16, ChipGrid())
    assert expiry.coarse == {0: {(0, 0)}} and not expiry.fine  # not 4**16 tiles
    assert expiry(tiles[0]) and expiry(mercantile.Tile(0, 0, 16))
    (tmp_path / "all.list").write_text("0/0/0\n")
    r = make_tiles(src, dest, zooms="16", model=Identity(), meta_size=2, expire=tmp_path / "all.list")
    assert r.rendered == 16  # the world changed: every tile is made again
    # a deep line reaches only the tiles whose chips read it
    r = make_tiles(src, dest, zooms="16", model=Identity(), meta_size=2, expire=[f"18/{tiles[0].x * 4}/"
                                                                                  f"{tiles[0].y * 4}"])
    assert r.rendered == len(set(ChipGrid().dependents(tiles[0])) & set(tiles))


def ring(*points):
    return {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [list(points)]}}


@pytest.mark.parametrize("coords", [
    [[170, -10], [-170, -10], [-170, 10], [170, 10], [170, -10]],  # drawn across: a jump of 340°
    [[170, -10], [190, -10], [190, 10], [170, 10], [170, -10]],  # drawn on, past 180°
])
def test_aoi_across_the_antimeridian_is_two_narrow_pieces(tmp_path, coords):
    path = tmp_path / "pacific.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [ring(*coords)]}))
    area = Area.from_geojson(path)
    pieces = shapely.get_parts(area.geometry)
    assert len(pieces) == 2
    assert sorted(round(p.bounds[0]) for p in pieces) == [-180, 170]
    assert all(p.bounds[2] - p.bounds[0] <= 10 + 1e-9 for p in pieces)  # not a 340°-wide band
    box = Area.from_bbox("170,-10,-170,10")  # the same area as a W > E --bbox
    for z in (4, 8, 12):
        assert area.count(z) == box.count(z) == len(area.tiles(z))
    z = 8
    xs = {t.x for t in area.tiles(z)}
    n = 2**z
    assert xs == {x for x in range(n) if x < n * 10 / 360 or x + 1 > n * 350 / 360}
    assert area.tiles(z) == box.tiles(z)
    assert abs(area.centre[0]) > 170 and abs(box.centre[0]) >= 170  # the middle is in the Pacific
    band = Area.from_bbox("-170,-10,170,10")  # what the ring was planned as before
    assert area.count(12) * 16 < band.count(12)  # two narrow strips, not a band round the world


def test_bbox_with_west_greater_than_east(tmp_path):
    assert Area.from_bbox("170,-10,-170,10").crosses_antimeridian
    with pytest.raises(OptionError, match="west must be less than east"):
        Area.from_bbox("24.98,60.15,24.90,60.19")  # W and E swapped, not a box round the world


# -- slow tile servers ------------------------------------------------------------------
class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


@contextmanager
def slow_server(behaviour: str):
    """A server on 127.0.0.1 that answers every request slowly: ``trickle`` sends a PNG's
    headers, then one byte every 0.2 s; ``sleep`` waits 60 s before answering. Both give
    up as soon as the test ends."""
    stop = threading.Event()
    data = png_bytes(map_pixels(HELSINKI))

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            try:
                if behaviour == "sleep":
                    stop.wait(60)
                    if stop.is_set():
                        return
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                for i in range(len(data)):
                    if stop.wait(0.2):
                        return
                    self.wfile.write(data[i:i + 1])
                    self.wfile.flush()
            except OSError:
                pass  # the client gave up: as it should

    server = _Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{{z}}/{{x}}/{{y}}.png"
    finally:
        stop.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def short_deadline(monkeypatch):
    monkeypatch.setattr(TileServer, "deadline", 0.6)
    monkeypatch.setattr(TileServer, "backoff", 0.05)


@pytest.mark.parametrize("behaviour", ["trickle", "sleep"])
def test_slow_tile_server_fails_tiles_at_the_deadline(short_deadline, behaviour):
    with slow_server(behaviour) as url:
        src = TileServer(url)
        t0 = time.perf_counter()
        with pytest.raises(TileSourceError, match=r"no complete answer within 0.6 s") as info:
            src.get(HELSINKI)
        seconds = time.perf_counter() - t0
        assert 3 * 0.6 <= seconds < 3 * 0.6 + 3, seconds  # three tries, each cut at its deadline
        assert "failed 3 times" in str(info.value) and "?" not in str(info.value)
        # After `breaker` tiles failed in a row, a tile gets one try: a dead server costs
        # a deadline per tile, not tries × deadline.
        for _ in range(TileServer.breaker - 1):
            with pytest.raises(TileSourceError):
                src.get(HELSINKI)
        t0 = time.perf_counter()
        with pytest.raises(TileSourceError, match="once"):
            src.get(HELSINKI)
        assert time.perf_counter() - t0 < 0.6 + 1.5


def test_run_on_a_trickling_server_ends_with_failed_tiles_and_exit_code_3(short_deadline, tmp_path):
    with slow_server("trickle") as url:
        t0 = time.perf_counter()
        result = cli("tiles", url, tmp_path / "out", "--zoom", "16", "--bbox", bbox_of([HELSINKI]), "--no-model",
                     "--buffer", "0")
        seconds = time.perf_counter() - t0
    assert result.exit_code == 3, result.output
    failed = [s for s in message_lines(result.output) if s.startswith("failed 16/")]
    assert failed and "no complete answer within 0.6 s" in failed[0]
    assert seconds < 60, seconds  # 9 source tiles: the breaker keeps it to a deadline each
    assert read_tree(tmp_path / "out") == {}
