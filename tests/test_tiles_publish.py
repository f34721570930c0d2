"""DEST is finished, replaced and tidied as promised (issue 15, items 1, 2 and 4).

- A PMTiles archive whose writing was stopped (SIGINT, ``kill -9``, a failed write) is
  published by the next run, even when no tile needs making; the old archive stays
  whole until then.
- ``--overwrite`` of an MBTiles or PMTiles file another program made replaces it only
  at the end: stopped before, the file is byte-identical; a rerun with ``--overwrite``
  goes on, one without it is refused.
- Temporary files left by ``kill -9`` (named after their owner's PID and host) are
  removed by the next run on the same DEST, in ``tiles`` and ``render``; a live
  owner's, another host's and other files are left alone.

Processes are stopped at a chosen point by a small script that patches one function
and runs the command line (``python -c``), so that each case is the real thing: a
signal, a kill, an OSError.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import mercantile
import pytest
from clihelpers import assert_user_error, cli, message_lines
from tilesdata import HELSINKI, Identity, bbox_of, block, write_xyz

from geo_pix2pix.io.atomic import host_tag, sweep_stale, temp_name
from geo_pix2pix.tiles import CopyModel, make_tiles

TILES = block(16, HELSINKI.x, HELSINKI.y, 3, 2)
ARGS = ["--zoom", "15-16", "--bbox", bbox_of(TILES), "--no-model", "--meta-size", "2"]

STRIKE = textwrap.dedent("""
    import errno, os, signal, sqlite3, sys
    sys.path.insert(0, {tests!r})
    mode, where, after = sys.argv[1], sys.argv[2], int(sys.argv[3])
    calls = [0]

    def strike(failure):
        calls[0] += 1
        if calls[0] != after:
            return
        if mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif mode == "int":
            os.kill(os.getpid(), signal.SIGINT)  # Python raises KeyboardInterrupt right here
        elif mode == "fail":
            raise failure

    if where == "archive":  # while the PMTiles archive is written
        import pmtiles.writer
        original = pmtiles.writer.Writer.write_tile

        def write_tile(self, tile_id, data):
            strike(OSError(errno.ENOSPC, "No space left on device"))
            return original(self, tile_id, data)
        pmtiles.writer.Writer.write_tile = write_tile
    else:  # while tiles are made: after the n-th tile stored
        from geo_pix2pix.tiles import sinks
        put = sinks.MBTilesSink.put

        def put_then_strike(self, t, data):
            put(self, t, data)
            with sinks.store_errors(self.path):
                strike(sqlite3.OperationalError("database or disk is full"))
        sinks.MBTilesSink.put = put_then_strike

    from geo_pix2pix.cli.main import main
    main(sys.argv[4:], prog_name="geo-pix2pix")
""")


def run_stopped(mode: str, where: str, after: int, *args) -> subprocess.CompletedProcess:
    script = STRIKE.format(tests=os.path.dirname(__file__))
    return subprocess.run([sys.executable, "-c", script, mode, where, str(after), *map(str, args)],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))


EXIT = {"kill": -9, "int": 130, "fail": 1}


def pmtiles_content(path: Path) -> tuple[dict, dict]:
    """(tiles, metadata) of a PMTiles archive, read with the pmtiles reader."""
    from pmtiles.reader import MmapSource, Reader, all_tiles

    with open(path, "rb") as f:
        reader = Reader(MmapSource(f))
        return dict(all_tiles(reader.get_bytes)), reader.metadata()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["kill", "int", "fail"])
def test_stopped_pmtiles_archive_write_is_published_by_the_rerun(tmp_path, mode):
    src = write_xyz(tmp_path / "src", TILES)
    dest = tmp_path / "out.pmtiles"
    assert cli("-q", "tiles", src, dest, *ARGS).exit_code == 0
    old = dest.read_bytes()
    write_xyz(src, TILES, variant=1)  # the map changed: every tile is made again

    p = run_stopped(mode, "archive", 3, "tiles", src, dest, *ARGS)
    assert p.returncode == EXIT[mode], p.stderr[-3000:]
    if mode == "int":
        assert message_lines(p.stderr)[-1].startswith("Interrupted: the tiles made so far are kept"), p.stderr
    if mode == "fail":
        line = message_lines(p.stderr)[-1]
        assert line.startswith("Error: could not write") and "a rerun resumes" in line, p.stderr
    assert dest.read_bytes() == old  # the old archive, whole, until the new one is complete
    left = leftovers(tmp_path)
    if mode == "kill":  # nothing ran to remove it: named after the dead process
        assert len(left) == 1 and left[0].startswith(".out.pmtiles.pid"), left
        assert f"-{host_tag()}." in left[0]
    else:
        assert left == []

    r = make_tiles(src, dest, zooms="15-16", area=_area(), model=CopyModel(), meta_size=2)  # as --no-model
    assert r.rendered == 0 and r.failed == 0  # the tiles were made: the archive was not
    assert "written again" in r.summary()
    assert leftovers(tmp_path) == []  # the dead run's temporary is swept
    clean = tmp_path / "clean.pmtiles"
    make_tiles(src, clean, zooms="15-16", area=_area(), model=CopyModel(), meta_size=2)
    got, meta = pmtiles_content(dest)
    want, clean_meta = pmtiles_content(clean)
    assert got == want and got != pmtiles_content_of(old, tmp_path)
    assert meta["version"] == "2" and clean_meta["version"] == "1"  # the tileset's second revision
    again = make_tiles(src, dest, zooms="15-16", area=_area(), model=CopyModel(), meta_size=2)
    assert again.note == "" and pmtiles_content(dest) == (got, meta)


def _area():
    from geo_pix2pix.tiles import Area

    return Area.from_bbox(bbox_of(TILES))


def pmtiles_content_of(data: bytes, tmp: Path) -> dict:
    path = tmp / "old-copy.pmtiles"
    path.write_bytes(data)
    return pmtiles_content(path)[0]


def test_archive_replaced_behind_the_manifests_back_is_published_again(tmp_path):
    src = write_xyz(tmp_path / "src", TILES)
    dest = tmp_path / "out.pmtiles"
    make_tiles(src, dest, zooms="16", area=_area(), model=Identity(), meta_size=2)
    good = dest.read_bytes()
    dest.write_bytes(good[:1000])  # a copy cut short, or another program's file
    r = make_tiles(src, dest, zooms="16", area=_area(), model=Identity(), meta_size=2)
    assert r.rendered == 0 and "written again" in r.note
    assert dest.read_bytes() == good


def foreign_file(path: Path) -> bytes:
    """A file another program made at ``path``: an MBTiles of its own, or other bytes."""
    if path.suffix == ".mbtiles":
        db = sqlite3.connect(path)
        db.executescript("CREATE TABLE metadata (name TEXT, value TEXT);"
                         "INSERT INTO metadata VALUES ('name', 'precious');"
                         "CREATE TABLE tiles (zoom_level INTEGER, tile_column INTEGER, tile_row INTEGER, "
                         "tile_data BLOB);")
        db.commit()
        db.close()
    else:
        path.write_bytes(b"PMTiles\x03" + bytes(range(256)) * 40)
    return path.read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".mbtiles", ".pmtiles"])
@pytest.mark.parametrize("mode", ["int", "fail", "kill"])
def test_overwrite_replaces_the_file_only_at_the_end(tmp_path, suffix, mode):
    src = write_xyz(tmp_path / "src", TILES)
    dest = tmp_path / f"out{suffix}"
    before = foreign_file(dest)
    p = run_stopped(mode, "tiles", 4, "tiles", src, dest, *ARGS, "--overwrite")
    assert p.returncode == EXIT[mode], p.stderr[-3000:]
    if mode == "int":
        assert "a file that --overwrite was to replace is left as it was" in p.stderr
    assert dest.read_bytes() == before  # byte-identical: nothing was deleted before the work
    assert leftovers(tmp_path) == [] or mode == "kill"

    # Without --overwrite the rerun does not take the file as its own.
    assert_user_error(cli("tiles", src, dest, *ARGS), "stopped before the end")
    assert dest.read_bytes() == before
    # With it, the run goes on and replaces the file with a complete cache.
    result = cli("-q", "tiles", src, dest, *ARGS, "--overwrite")
    assert result.exit_code == 0, result.output
    clean = tmp_path / f"clean{suffix}"
    assert cli("-q", "tiles", src, clean, *ARGS).exit_code == 0
    if suffix == ".mbtiles":
        rows = lambda p: sorted(sqlite3.connect(p).execute("SELECT * FROM tiles"))  # noqa: E731
        assert rows(dest) == rows(clean) and len(rows(dest)) == 6 + len({mercantile.parent(t) for t in TILES})
    else:
        assert pmtiles_content(dest)[0] == pmtiles_content(clean)[0]
    assert leftovers(tmp_path) == []
    # Now it is ours: reruns need no --overwrite.
    assert cli("-q", "tiles", src, dest, *ARGS).exit_code == 0


def test_overwrite_of_a_foreign_file_that_completes_replaces_it_at_once(tmp_path):
    src = write_xyz(tmp_path / "src", TILES)
    dest = tmp_path / "out.mbtiles"
    foreign_file(dest)
    line = assert_user_error(cli("tiles", src, dest, *ARGS), "was not made by geo-pix2pix tiles")
    assert "only once the new one is complete" in line
    assert cli("-q", "tiles", src, dest, *ARGS, "--overwrite").exit_code == 0
    db = sqlite3.connect(dest)
    assert db.execute("SELECT count(*) FROM tiles").fetchone()[0] == 6 + len({mercantile.parent(t) for t in TILES})
    assert db.execute("SELECT value FROM metadata WHERE name='name'").fetchone()[0] == "out"
    db.close()


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def planted(folder: Path, name: str, live: int) -> dict[str, Path]:
    """Temporaries of ``name`` in ``folder``: a dead owner's, a live one's, another host's,
    and a file that only looks like one."""
    dead = dead_pid()
    files = {
        "dead": folder / temp_name(name).replace(f"pid{os.getpid()}-", f"pid{dead}-"),
        "dead-tagged": folder / temp_name(name, "grid", ".tif").replace(f"pid{os.getpid()}-", f"pid{dead}-"),
        "live": folder / temp_name(name).replace(f"pid{os.getpid()}-", f"pid{live}-"),
        "other-host": folder / f".{name}.pid{dead}-elsewhere.0123abcd.tmp",
        "not-ours": folder / f".{name}.notes.tmp",
    }
    for p in files.values():
        p.write_bytes(b"x")
    return files


@pytest.fixture
def live_pid():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield p.pid
    p.kill()
    p.wait()


def test_sweep_removes_only_dead_owners_temporaries(tmp_path, live_pid):
    files = planted(tmp_path, "out.tif", live_pid)
    removed = sweep_stale(tmp_path, "out.tif")
    assert sorted(removed) == sorted([files["dead"], files["dead-tagged"]])
    assert {k for k, p in files.items() if p.exists()} == {"live", "other-host", "not-ours"}
    assert sweep_stale(tmp_path / "missing") == []  # never fails the run that calls it


@pytest.mark.parametrize("kind", ["out.pmtiles", "out.mbtiles", "out"])
def test_tiles_sweeps_stale_temporaries_of_its_dest(tmp_path, kind, live_pid):
    src = write_xyz(tmp_path / "src", TILES)
    dest = tmp_path / kind
    if kind == "out":  # an XYZ folder: its tilejson.json and the tiles on their way in
        make_tiles(src, dest, zooms="16", area=_area(), model=Identity(), meta_size=2)
        files = planted(dest, "tilejson.json", live_pid)
        incoming = dest / ".geo-pix2pix" / "incoming"
        stray = incoming / temp_name("16-1-2.png").replace(f"pid{os.getpid()}-", f"pid{dead_pid()}-")
        stray.write_bytes(b"x")
    else:
        files = planted(tmp_path, kind, live_pid)
        stray = None
    make_tiles(src, dest, zooms="16", area=_area(), model=Identity(), meta_size=2)
    assert {k for k, p in files.items() if p.exists()} == {"live", "other-host", "not-ours"}
    assert stray is None or not stray.exists()


RENDER_KILLER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from conftest import Identity
    from geo_pix2pix import render

    def progress(done, total):
        if done:
            os.kill(os.getpid(), signal.SIGKILL)

    render({src!r}, {dst!r}, model=Identity(), overwrite=True, batch_size=1, progress=progress)
""")


@pytest.mark.slow
def test_render_killed_leaves_temporaries_that_the_next_render_removes(tmp_path, make_raster):
    src = make_raster(512, 512)
    dst = tmp_path / "out.tif"
    script = RENDER_KILLER.format(tests=os.path.dirname(__file__), src=str(src), dst=str(dst))
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    left = leftovers(tmp_path)
    assert left and all(n.startswith(".out.tif.") and f"-{host_tag()}." in n for n in left), left
    assert not dst.exists()
    from conftest import Identity as Same

    from geo_pix2pix import render
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a module without a ground resolution: said once, not the point here
        render(src, dst, model=Same(), batch_size=4)
    assert leftovers(tmp_path) == []
    assert dst.exists()
