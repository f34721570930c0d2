"""The tiles run end to end: scale, seams, incremental reruns, expiry, resume, workers, CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import mercantile
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from tilesdata import (
    HELSINKI,
    AtResolution,
    Identity,
    bbox_of,
    block,
    decode,
    map_pixels,
    read_tree,
    source_with_broken_tile,
    write_xyz,
)

from geo_pix2pix.cli.main import main
from geo_pix2pix.errors import TileSourceError
from geo_pix2pix.model.networks import Generator
from geo_pix2pix.tiles import Area, ChipGrid, make_tiles
from geo_pix2pix.tiles.sources import XYZFolder


def inodes(root):
    return {p: p.stat().st_ino for p in root.glob("*/*/*.png")}


@pytest.fixture
def tiny():
    """A small random generator, run on one thread (this machine's cores are shared)."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Generator(base_width=8, norm="instance").eval()
    torch.set_num_threads(threads)


def _border_ratio(out, tiles, nx, ny):
    """Mean colour step across tile borders / mean step between inside neighbours at the
    same position modulo 8 (the generator's up-convolutions leave an 8-px rhythm)."""
    x0, y0 = tiles[0].x, tiles[0].y
    rows = [np.concatenate([decode(out[(16, x0 + i, y0 + j)])[..., :3] for i in range(nx)], axis=1)
            for j in range(ny)]
    img = np.concatenate(rows, axis=0).astype(np.float64)
    border, inside = [], []
    col_steps = np.abs(np.diff(img, axis=1)).mean(axis=(0, 2))
    row_steps = np.abs(np.diff(img, axis=0)).mean(axis=(1, 2))
    for steps in (col_steps, row_steps):
        at = np.arange(len(steps))
        is_border = at % 256 == 255
        border.append(steps[is_border])
        inside.append(steps[~is_border & (at % 8 == 7)])
    return np.concatenate(border).mean() / np.concatenate(inside).mean()


def test_no_seam_across_metatile_and_tile_borders(tmp_path, tiny):
    tiles = block(16, HELSINKI.x, HELSINKI.y, 4, 2)
    src = write_xyz(tmp_path / "src", tiles, smooth=True)
    a, b, c = tmp_path / "meta2", tmp_path / "meta1", tmp_path / "nobuffer"
    make_tiles(src, a, zooms="16", model=tiny, meta_size=2)
    make_tiles(src, b, zooms="16", model=tiny, meta_size=1)
    # One chip grid for the whole world: the metatile size does not change a single pixel.
    assert read_tree(a) == read_tree(b)
    # Steps across tile borders (every second one a metatile border) are ordinary steps…
    assert 0.8 < _border_ratio(read_tree(a), tiles, 4, 2) < 1.25
    # …which the statistic would catch: tiles rendered alone (no buffer) show their borders.
    make_tiles(src, c, zooms="16", model=tiny, meta_size=2, buffer=0)
    assert not 0.8 < _border_ratio(read_tree(c), tiles, 4, 2) < 1.25


def test_model_runs_at_its_own_scale(tmp_path):
    # 2.12 m/px in Helsinki is zoom 15: read z15, upsample z16, average z14 from children.
    z15 = block(15, HELSINKI.x // 2, HELSINKI.y // 2, 2, 2)
    src = write_xyz(tmp_path / "src", z15)
    model = AtResolution(Identity(), 2.12)
    dest = tmp_path / "out"
    r = make_tiles(src, dest, zooms="14-16", model=model, meta_size=2)
    assert r.render_zoom == 15 and r.failed == 0
    out = {k: decode(v)[..., :3].astype(np.float64) for k, v in read_tree(dest).items()}
    assert sorted({k[0] for k in out}) == [14, 15, 16]
    t = z15[0]
    assert np.array_equal(out[(15, t.x, t.y)], map_pixels(t).transpose(1, 2, 0))
    # z16 children, 2×2 averaged, give back their z15 parent (up to interpolation).
    kids = [out[(16, 2 * t.x + i, 2 * t.y + j)] for j in (0, 1) for i in (0, 1)]
    up = np.concatenate([np.concatenate(kids[:2], 1), np.concatenate(kids[2:], 1)], 0)
    down = up.reshape(256, 2, 256, 2, 3).mean(axis=(1, 3))
    assert np.abs(down - out[(15, t.x, t.y)]).mean() < 6
    # z14 is the average of its four z15 children (where they exist).
    p = mercantile.parent(t)
    quarter = out[(14, p.x, p.y)][(t.y % 2) * 128:(t.y % 2 + 1) * 128, (t.x % 2) * 128:(t.x % 2 + 1) * 128]
    expect = out[(15, t.x, t.y)].reshape(128, 2, 128, 2, 3).mean(axis=(1, 3))
    assert np.abs(quarter - expect).max() <= 1
    with pytest.raises(TileSourceError, match="no zoom 16 tiles"):
        make_tiles(src, tmp_path / "o2", zooms="16", model=AtResolution(Identity(), 1.0))


def test_incremental_rerun_regenerates_only_changed_tile_and_buffer_neighbours(tmp_path):
    tiles = block(16, HELSINKI.x, HELSINKI.y, 6, 6)
    src = write_xyz(tmp_path / "src", tiles)
    dest = tmp_path / "out"
    first = make_tiles(src, dest, zooms="15-16", model=Identity(), meta_size=4)
    assert first.rendered == first.total and not first.rerun
    again = make_tiles(src, dest, zooms="15-16", model=Identity(), meta_size=4)
    assert again.rendered == 0 and again.unchanged == first.total and again.rerun
    assert again.summary().startswith("0 regenerated")

    changed = tiles[14]  # inside the block, next to a metatile border
    write_xyz(src, [changed], variant=1)
    before = inodes(dest)
    r = make_tiles(src, dest, zooms="15-16", model=Identity(), meta_size=4)
    after = inodes(dest)
    redone = {p for p in after if before.get(p) != after[p]}
    expect16 = set(ChipGrid().dependents(changed)) & set(tiles)
    expect = expect16 | {mercantile.parent(t) for t in expect16}
    assert {tuple(int(v) for v in (p.parent.parent.name, p.parent.name, p.stem)) for p in redone} == \
        {(t.z, t.x, t.y) for t in expect}
    assert r.rendered == len(expect) == 9 + len({mercantile.parent(t) for t in expect16})
    assert np.array_equal(decode((dest / f"16/{changed.x}/{changed.y}.png").read_bytes())[..., :3],
                          map_pixels(changed, 1).transpose(1, 2, 0))


class CountingXYZ(XYZFolder):
    reads = 0

    def _read(self, tile):
        CountingXYZ.reads += 1
        return super()._read(tile)


def test_expire_list_and_force(tmp_path):
    tiles = block(16, HELSINKI.x, HELSINKI.y, 8, 4)
    src = write_xyz(tmp_path / "src", tiles)
    dest = tmp_path / "out"
    make_tiles(src, dest, zooms="16", model=Identity(), meta_size=4)
    # render_expired: only tiles reading a listed tile are looked at, and they are redone.
    expire = tmp_path / "expire.list"
    t = tiles[1]
    expire.write_text(f"# osm2pgsql expiry\n{t.z}/{t.x}/{t.y}\n")
    CountingXYZ.reads = 0
    r = make_tiles(CountingXYZ(str(src)), dest, zooms="16", model=Identity(), meta_size=4, expire=expire)
    assert r.rendered == len(set(ChipGrid().dependents(t)) & set(tiles)) == 6
    assert 0 < CountingXYZ.reads < len(tiles)  # the other metatile was not read
    # an expired z15 tile covers four z16 tiles
    p = mercantile.parent(tiles[10])
    r = make_tiles(src, dest, zooms="16", model=Identity(), meta_size=4, expire=[f"15/{p.x}/{p.y}"])
    reading = {d for c in mercantile.children(p) for d in ChipGrid().dependents(c)}
    assert r.rendered == len(reading & set(tiles))
    r = make_tiles(src, dest, zooms="16", model=Identity(), meta_size=4, force=True)
    assert r.rendered == len(tiles)


def test_unreadable_source_tile_is_skipped_and_reported(tmp_path):
    tiles, src, bad = source_with_broken_tile(tmp_path)
    dest = tmp_path / "out"
    r = make_tiles(src, dest, zooms="16", model=Identity(), meta_size=2)
    assert (r.rendered, r.failed) == (8, 1)
    assert r.failures[0][0] == f"16/{bad.x}/{bad.y}" and "not a readable image" in r.failures[0][1]
    write_xyz(src, [bad])
    r = make_tiles(src, dest, zooms="16", model=Identity(), meta_size=2)
    assert (r.rendered, r.failed) == (9, 0)  # the tile and the neighbours that saw it broken


KILLER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from tilesdata import Identity
    from geo_pix2pix.tiles import make_tiles

    def progress(done, total):
        if done >= {after}:
            os.kill(os.getpid(), signal.SIGKILL)

    make_tiles({src!r}, {dest!r}, zooms="15-17", render_zoom=16, model=Identity(), meta_size=2,
               progress=progress)
""")


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tmp_path):
    tiles = block(16, HELSINKI.x, HELSINKI.y, 4, 4)
    src = write_xyz(tmp_path / "src", tiles)
    clean, killed = tmp_path / "clean.mbtiles", tmp_path / "killed.mbtiles"
    total = make_tiles(src, clean, zooms="15-17", render_zoom=16, model=Identity(), meta_size=2).total
    script = KILLER.format(tests=os.path.dirname(__file__), src=str(src), dest=str(killed), after=total // 3)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    r = make_tiles(src, killed, zooms="15-17", render_zoom=16, model=Identity(), meta_size=2)
    assert 0 < r.rendered < total and r.unchanged > 0
    import sqlite3

    def rows(path):
        with sqlite3.connect(path) as db:
            return sorted(db.execute("SELECT * FROM tiles"))
    assert rows(killed) == rows(clean)


def test_interrupted_xyz_run_resumes_identically(tmp_path):
    tiles = block(16, HELSINKI.x, HELSINKI.y, 4, 4)
    src = write_xyz(tmp_path / "src", tiles)
    clean, cut = tmp_path / "clean", tmp_path / "cut"
    make_tiles(src, clean, zooms="15-16", model=Identity(), meta_size=2)

    def stop(done, total):
        if done >= 5:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        make_tiles(src, cut, zooms="15-16", model=Identity(), meta_size=2, progress=stop)
    make_tiles(src, cut, zooms="15-16", model=Identity(), meta_size=2)
    assert read_tree(cut) == read_tree(clean)


@pytest.mark.slow
def test_workers_give_the_same_tiles(tmp_path):
    tiles = block(16, HELSINKI.x, HELSINKI.y, 4, 2)
    src = write_xyz(tmp_path / "src", tiles)
    one, two = tmp_path / "one", tmp_path / "two"
    make_tiles(src, one, zooms="16", model=Identity(), meta_size=2)
    r = make_tiles(src, two, zooms="16", model=Identity(), meta_size=2, workers=2)
    assert r.rendered == 8
    assert read_tree(one) == read_tree(two)


def test_cli_tiles(tmp_path):
    tiles = block(16, HELSINKI.x, HELSINKI.y, 2, 2)
    src = write_xyz(tmp_path / "src", tiles)
    dest = tmp_path / "out.mbtiles"
    args = ["tiles", str(src), str(dest), "--zoom", "15-16", "--bbox", bbox_of(tiles), "--no-model",
            "--meta-size", "2", "--format", "jpeg"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "rendered" in res.output and "0 failed" in res.output
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0 and "0 regenerated" in res.output
    res = CliRunner().invoke(main, ["tiles", str(src), str(tmp_path / "x"), "--zoom", "17-15"])
    assert res.exit_code == 1 and "Error: --zoom" in res.output
    res = CliRunner().invoke(main, ["tiles", str(src), str(tmp_path / "x"), "--zoom", "16",
                                    "--bbox", "0,86,1,87"])
    assert res.exit_code == 1 and "Web Mercator" in res.output
    aoi = Area.from_bbox(bbox_of(tiles))
    assert len(aoi.tiles(16)) == 4
