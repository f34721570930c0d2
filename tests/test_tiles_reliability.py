"""Reliability of ``tiles`` (issue 6): bad options, locked MBTiles, unreadable tiles, two runs.

What test_tiles_plan, test_tiles_seed and test_tiles_io check already (zoom, bbox and AOI
rules, a kill -9 then resume, the lock between two runs in one process) is not repeated:
here the same rules are seen through the command line (one line, exit code 1, nothing
written), and the cases that need another program or another process are added.
docs/reliability.md lists each case with its test.
"""

from __future__ import annotations

import json
import os
import resource
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from clihelpers import assert_user_error, cli, message_lines
from tilesdata import HELSINKI, Identity, bbox_of, block, read_tree, source_with_broken_tile, write_xyz

from geo_pix2pix.tiles import make_tiles

TILES = block(16, HELSINKI.x, HELSINKI.y, 2, 2)








def copy_run(src, dest, *extra):
    """The tiles command without a model (fast), on the 2×2 test block."""
    return cli("-q", "tiles", src, dest, "--zoom", "16", "--bbox", bbox_of(TILES), "--no-model", "--meta-size", "2",
               *extra)


def mbtiles_rows(path: Path, tables=("tiles", "metadata")) -> list[tuple]:
    db = sqlite3.connect(path)
    try:
        return [row for table in tables for row in sorted(db.execute(f"SELECT * FROM {table}"))]
    finally:
        db.close()


def _aoi(tmp: Path, geometry) -> str:
    path = tmp / "aoi.geojson"
    path.write_text(json.dumps({"type": "Feature", "properties": {}, "geometry": geometry}))
    return str(path)


BOWTIE = {"type": "Polygon", "coordinates": [[[24.9, 60.1], [25.0, 60.2], [25.0, 60.1], [24.9, 60.2], [24.9, 60.1]]]}
BAD_OPTIONS = {
    "zoom-reversed": (lambda tmp: ["--zoom", "17-15"], "--zoom"),
    "zoom-not-a-number": (lambda tmp: ["--zoom", "x"], "--zoom"),
    "zoom-too-deep": (lambda tmp: ["--zoom", "3-99"], "--zoom"),
    "bbox-beyond-web-mercator": (lambda tmp: ["--zoom", "16", "--bbox", "0,86,1,87"], "Web Mercator"),
    "bbox-south-of-web-mercator": (lambda tmp: ["--zoom", "16", "--bbox", "0,-89,10,0"], "Web Mercator"),
    "aoi-invalid": (lambda tmp: ["--zoom", "16", "--aoi", _aoi(tmp, BOWTIE)], "invalid"),
    "aoi-empty": (lambda tmp: ["--zoom", "16", "--aoi", _aoi(tmp, {"type": "Polygon", "coordinates": []})],
                  "empty"),
    "aoi-not-geojson": (lambda tmp: ["--zoom", "16", "--aoi", (tmp / "x.geojson", (tmp / "x.geojson")
                                                                .write_text("{nope"))[0]], "not readable GeoJSON"),
}


@pytest.mark.parametrize("case", list(BAD_OPTIONS))
def test_bad_zoom_bbox_or_aoi_is_one_line_and_writes_nothing(case, tmp_path):
    src = write_xyz(tmp_path / "src", TILES)
    build, fragment = BAD_OPTIONS[case]
    args = build(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert_user_error(cli("tiles", src, tmp_path / "out.mbtiles", *args, "--no-model"), fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no DEST, no work folder


def test_unreadable_source_tile_is_reported_with_exit_code_3_and_retried(tmp_path):
    tiles, src, bad = source_with_broken_tile(tmp_path)
    dest = tmp_path / "out"
    args = ["tiles", src, dest, "--zoom", "16", "--bbox", bbox_of(tiles), "--no-model", "--meta-size", "2"]
    result = cli(*args)
    assert result.exit_code == 3, result.output
    failed = [s for s in message_lines(result.output) if s.startswith("failed ")]
    assert len(failed) == 1 and failed[0].startswith(f"failed 16/{bad.x}/{bad.y}: ")
    assert "8 rendered" in result.output and "1 failed" in result.output  # the run went on
    assert len(read_tree(dest)) == 8
    write_xyz(src, [bad])
    result = cli(*args)
    assert result.exit_code == 0 and "0 failed" in result.output
    assert len(read_tree(dest)) == 9


@pytest.mark.parametrize("lock", ["IMMEDIATE", "EXCLUSIVE"])
def test_locked_mbtiles_destination_is_refused_and_left_as_it_was(tmp_path, lock):
    src = write_xyz(tmp_path / "src", TILES)
    dest = tmp_path / "out.mbtiles"
    assert copy_run(src, dest).exit_code == 0
    write_xyz(src, TILES, variant=1)  # the map changed: the rerun has tiles to write
    before = mbtiles_rows(dest)
    other = sqlite3.connect(dest, isolation_level=None)  # QGIS, sqlite3… writing to it
    other.execute(f"BEGIN {lock}")
    try:
        line = assert_user_error(copy_run(src, dest), f"{str(dest)!r} is locked by another program")
        assert "close the program" in line
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert mbtiles_rows(dest) == before
    # Released, the rerun completes and gives what a fresh run gives.
    assert copy_run(src, dest).exit_code == 0
    assert copy_run(src, tmp_path / "fresh.mbtiles").exit_code == 0
    assert mbtiles_rows(dest, ["tiles"]) == mbtiles_rows(tmp_path / "fresh.mbtiles", ["tiles"])
    assert mbtiles_rows(dest) != before


def test_locked_mbtiles_source_is_a_clear_error(tmp_path):
    src = tmp_path / "map.mbtiles"
    assert copy_run(write_xyz(tmp_path / "xyz", TILES), src).exit_code == 0
    other = sqlite3.connect(src, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        assert_user_error(copy_run(src, tmp_path / "out"), f"MBTiles {str(src)!r} is locked by another program")
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert not (tmp_path / "out").exists()


HOLDER = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {tests!r})
    from tilesdata import Identity
    from geo_pix2pix.tiles import make_tiles

    def progress(done, total):  # holds the run (and DEST's lock) until told to go on
        open({ready!r}, "w").close()
        deadline = time.monotonic() + 120
        while not os.path.exists({go!r}) and time.monotonic() < deadline:
            time.sleep(0.02)

    make_tiles({src!r}, {dest!r}, zooms="15-16", model=Identity(), meta_size=1, progress=progress)
""")


def test_second_process_on_the_same_destination_is_refused(tmp_path):
    src = write_xyz(tmp_path / "src", TILES)
    dest, ready, go = tmp_path / "out", tmp_path / "ready", tmp_path / "go"
    script = HOLDER.format(tests=os.path.dirname(__file__), ready=str(ready), go=str(go), src=str(src),
                           dest=str(dest))
    first = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        half = read_tree(dest)
        second = cli("tiles", src, dest, "--zoom", "15-16", "--no-model")
        assert_user_error(second, f"is being written by another geo-pix2pix process (pid {first.pid}")
        assert read_tree(dest) == half  # the refused run wrote nothing
        go.touch()
        assert first.wait(timeout=120) == 0, first.communicate()
    finally:
        if first.poll() is None:
            first.kill()
    clean = tmp_path / "clean"
    make_tiles(src, clean, zooms="15-16", model=Identity(), meta_size=1)
    assert read_tree(dest) == read_tree(clean)


def test_disk_filling_up_stops_the_run_cleanly_and_a_rerun_resumes(tmp_path):
    tiles = block(16, HELSINKI.x, HELSINKI.y, 4, 4)
    src = write_xyz(tmp_path / "src", tiles)
    args = ["tiles", str(src), "--zoom", "15-16", "--bbox", bbox_of(tiles), "--no-model", "--meta-size", "2"]
    clean, dest = tmp_path / "clean.mbtiles", tmp_path / "out.mbtiles"
    assert cli(*args[:2], clean, *args[2:]).exit_code == 0
    limit = clean.stat().st_size // 2  # CPython ignores SIGXFSZ: writes past it fail with EFBIG
    p = subprocess.run([sys.executable, "-m", "geo_pix2pix", "-q", *args[:2], str(dest), *args[2:]],
                       capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert p.returncode == 1, p.stderr
    lines = message_lines(p.stderr)
    assert len(lines) == 1 and lines[0].startswith("Error: could not write "), p.stderr
    assert "a rerun resumes" in lines[0]
    result = cli(*args[:2], dest, *args[2:])
    assert result.exit_code == 0, result.output
    assert mbtiles_rows(dest, ["tiles"]) == mbtiles_rows(clean, ["tiles"])
