"""render and tiles on a Dask cluster: the same bytes as a local run, with workers killed too.

The cluster tests run a ``LocalCluster`` of 2 single-threaded worker processes on
127.0.0.1 (one for the module), with the tiny model saved as a checkpoint.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner
from tilesdata import HELSINKI, bbox_of, block, decode, read_tree, write_xyz

from geo_pix2pix import render
from geo_pix2pix.cli.main import main
from geo_pix2pix.distributed.cluster import connect, kept_environ, parse_scheduler
from geo_pix2pix.errors import OptionError
from geo_pix2pix.grid.blend import RowMerger
from geo_pix2pix.grid.core import TilePipeline, render_tile_rows
from geo_pix2pix.grid.cut import ArrayReader
from geo_pix2pix.model.checkpoints import save_checkpoint
from geo_pix2pix.model.networks import Generator
from geo_pix2pix.tiles import Area, make_tiles


class Wobbly(torch.nn.Module):
    """A cheap nonlinear map whose outputs have all their mantissa bits in use."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(1.7 * x + torch.sin(13.0 * x))


# -- the row split, without a cluster ---------------------------------------------------

@pytest.mark.parametrize("height,width,tile,overlap", [
    (1, 1, 32, 8), (100, 90, 32, 8), (70, 50, 32, 26), (64, 64, 32, 0), (50, 45, 32, 29), (100, 80, 64, 56),
])
def test_tile_rows_rendered_apart_blend_bit_for_bit(height, width, tile, overlap):
    rng = np.random.default_rng(height + width)
    rgb = rng.integers(0, 256, (3, height, width)).astype(np.uint8)
    valid = rng.random((height, width)) > 0.3
    valid[: height // 3] = False  # whole tiles of nodata are skipped, as in the pipeline
    model = Wobbly()
    pipe = TilePipeline(ArrayReader(rgb, valid), model, tile_size=tile, overlap=overlap, batch_size=5)
    expect = {first: (rows, v) for first, rows, v in pipe}
    merger, got, rendered = RowMerger(pipe.grid), [], 0
    n = pipe.grid.shape[0]
    for r in range(0, n, 2):  # two tile rows a task: their tiles share batches
        for result in render_tile_rows(ArrayReader(rgb, valid), model, pipe.grid, range(r, min(r + 2, n)), 8):
            rendered += result.rendered
            got.extend(merger.add(result))
    firsts = [f for f, _, _ in got]  # rows come in order, each piece right after the last
    assert firsts[0] == 0 and all(f + rows.shape[1] == g for (f, rows, _), g in zip(got[:-1], firsts[1:], strict=True))
    assert np.array_equal(np.concatenate([rows for _, rows, _ in got], axis=1),
                          np.concatenate([expect[f][0] for f in sorted(expect)], axis=1))
    mask = np.concatenate([v for _, _, v in got])  # the mask read with the pixels comes with them
    assert np.array_equal(mask, valid) and np.array_equal(mask, np.concatenate([expect[f][1] for f in sorted(expect)]))
    assert merger.done and rendered == pipe.rendered


def test_rows_must_come_in_order():
    rgb = np.zeros((3, 100, 50), np.uint8)
    pipe = TilePipeline(ArrayReader(rgb), Wobbly(), tile_size=32, overlap=8)
    with pytest.raises(ValueError, match="in order"):
        list(RowMerger(pipe.grid).add(render_tile_rows(ArrayReader(rgb), Wobbly(), pipe.grid, range(1, 2))[0]))


def test_scheduler_spec():
    assert parse_scheduler("local:3") == ("local", 3)
    assert parse_scheduler("tcp://10.0.0.5:8786") == ("address", "tcp://10.0.0.5:8786")
    for bad in ("local:0", "local:x", "mycluster"):
        with pytest.raises(OptionError, match="--scheduler"):
            parse_scheduler(bad)


def test_nothing_about_dask_is_imported_without_a_scheduler():
    code = ("import geo_pix2pix.cli.main, geo_pix2pix.render, geo_pix2pix.tiles, geo_pix2pix.train.trainer; "
            "import sys; assert not [m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')]")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- on a LocalCluster --------------------------------------------------------------------

@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    with kept_environ(), distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                                  host="127.0.0.1", dashboard_address=None) as cluster, \
            distributed.Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """The tiny generator as checkpoints: one at 1.5 m/px (inputs are resampled), one without."""
    torch.manual_seed(0)
    g = Generator(base_width=8, norm="instance").eval()
    d = tmp_path_factory.mktemp("weights")
    return save_checkpoint(d / "at1.5m.pt", g, ground_resolution=1.5), save_checkpoint(d / "plain.pt", g)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # this machine's cores are shared
    yield
    torch.set_num_threads(threads)


def _same_raster(a, b) -> None:
    with rasterio.open(a) as x, rasterio.open(b) as y:
        assert x.profile == y.profile
        assert np.array_equal(x.read(), y.read())
        assert np.array_equal(x.dataset_mask(), y.dataset_mask())
        assert x.overviews(1) == y.overviews(1)


@pytest.mark.slow
@pytest.mark.parametrize("resampled", [False, True])
def test_render_on_a_cluster_writes_the_local_geotiff(make_raster, tmp_path, client, weights, one_thread,
                                                       monkeypatch, resampled):
    monkeypatch.setattr("geo_pix2pix.distributed.render.TILES_PER_TASK", 4)  # a few tasks, on both workers
    data = np.random.default_rng(1).integers(1, 256, (3, 600, 700)).astype(np.uint8)
    data[:, 250:, :300] = 0  # nodata: whole tiles skipped, the rest masked
    src = make_raster(600, 700, nodata=0, data=data)
    ckpt = weights[0] if resampled else weights[1]
    local, remote = tmp_path / "local.tif", tmp_path / "remote.tif"
    a = render(src, local, model=ckpt)
    seen = []
    b = render(src, remote, model=ckpt, client=client, progress=lambda done, total: seen.append((done, total)))
    assert a.resampled == b.resampled == resampled
    assert (b.tiles_total, b.tiles_rendered) == (a.tiles_total, a.tiles_rendered)
    assert resampled or a.tiles_rendered < a.tiles_total
    assert seen[-1] == (a.tiles_total, a.tiles_total)
    _same_raster(local, remote)


@pytest.mark.slow
def test_render_a_module_scattered_to_the_workers(make_raster, tmp_path, client, one_thread):
    torch.manual_seed(3)
    module = Generator(base_width=8, norm="instance").eval()
    src = make_raster(300, 520, seed=4)
    render(src, tmp_path / "local.tif", model=module, cog=True)
    render(src, tmp_path / "remote.tif", model=module, client=client, cog=True)
    _same_raster(tmp_path / "local.tif", tmp_path / "remote.tif")


@pytest.mark.slow
def test_tiles_on_a_cluster_make_the_local_cache(tmp_path, client, weights, one_thread):
    tiles = block(16, HELSINKI.x - 1, HELSINKI.y - 1, 5, 4)
    src = write_xyz(tmp_path / "src", tiles)
    area = Area.from_bbox(bbox_of(tiles))
    local = make_tiles(src, tmp_path / "local", zooms="15-16", area=area, model=weights[1], meta_size=2)
    seen = []
    remote = make_tiles(src, tmp_path / "remote", zooms="15-16", area=area, model=weights[1], meta_size=2,
                        client=client, progress=lambda done, total: seen.append(done))
    assert (remote.rendered, remote.failed) == (local.rendered, 0) == (local.total, 0)
    assert seen[-1] == local.total and seen == sorted(seen)  # tiles done across the cluster
    assert read_tree(tmp_path / "remote") == read_tree(tmp_path / "local")
    again = make_tiles(src, tmp_path / "remote", zooms="15-16", area=area, model=weights[1], meta_size=2,
                       client=client)
    assert again.rendered == 0 and again.unchanged == local.total


def _kill_a_busy_worker(client, killed: list) -> None:
    """Kill (SIGKILL) a worker that is running or holding tasks, once."""
    if killed:
        return
    pids = client.run(os.getpid)
    busy = [addr for addr, keys in client.processing().items() if keys and addr in pids]
    if busy:
        os.kill(pids[busy[0]], signal.SIGKILL)
        killed.append(busy[0])


@pytest.mark.slow
def test_a_worker_killed_mid_render_has_its_rows_redone(make_raster, tmp_path, client, weights, one_thread,
                                                        monkeypatch):
    monkeypatch.setattr("geo_pix2pix.distributed.render.TILES_PER_TASK", 1)  # a task per tile row
    src = make_raster(2000, 360, seed=7)  # 13 tile rows: some are on the worker when it dies
    local, remote = tmp_path / "local.tif", tmp_path / "remote.tif"
    render(src, local, model=weights[1], batch_size=4)
    killed: list = []
    render(src, remote, model=weights[1], batch_size=4, client=client,
           progress=lambda done, total: _kill_a_busy_worker(client, killed))
    assert killed
    _same_raster(local, remote)
    client.wait_for_workers(2, timeout=120)  # the nanny restarts it


@pytest.mark.slow
def test_a_worker_killed_mid_tiles_has_its_metatiles_redone(tmp_path, client, weights, one_thread):
    tiles = block(16, HELSINKI.x, HELSINKI.y, 4, 3)
    src = write_xyz(tmp_path / "src", tiles)
    area = Area.from_bbox(bbox_of(tiles))
    make_tiles(src, tmp_path / "local", zooms="16", area=area, model=weights[1], meta_size=1)
    killed: list = []
    r = make_tiles(src, tmp_path / "remote.mbtiles", zooms="16", area=area, model=weights[1], meta_size=1,
                   client=client, progress=lambda done, total: _kill_a_busy_worker(client, killed))
    assert killed and r.rendered == r.total == len(tiles) and r.failed == 0
    import sqlite3

    with sqlite3.connect(tmp_path / "remote.mbtiles") as db:
        got = {(z, x, 2**z - 1 - row): bytes(data)
               for z, x, row, data in db.execute("SELECT zoom_level, tile_column, tile_row, tile_data FROM tiles")}
    assert got == read_tree(tmp_path / "local")
    client.wait_for_workers(2, timeout=120)


@pytest.mark.slow
def test_cli_scheduler_option(make_raster, tmp_path, client, weights, one_thread):
    src = make_raster(300, 300, seed=9)
    local, remote = tmp_path / "local.tif", tmp_path / "remote.tif"
    runner = CliRunner()
    address = client.scheduler.address
    # the local run at one thread, as each worker runs: oneDNN's sums depend on the thread count
    for dst, extra in ((local, ["--threads", "1"]), (remote, ["--scheduler", address])):
        r = runner.invoke(main, ["-q", "render", str(src), str(dst), "--weights", str(weights[0]),
                                 "--device", "cpu", *extra])
        assert r.exit_code == 0, r.output
    _same_raster(local, remote)
    tiles = block(16, HELSINKI.x, HELSINKI.y, 2, 2)
    xyz = write_xyz(tmp_path / "src", tiles)
    for dst, extra in ((tmp_path / "local_tiles", ["--threads", "1"]), (tmp_path / "out", ["--scheduler", "local:1"])):
        r = runner.invoke(main, ["-q", "tiles", str(xyz), str(dst), "--zoom", "16", "--bbox", bbox_of(tiles),
                                 "--weights", str(weights[1]), *extra])
        assert r.exit_code == 0, r.output
    local, remote = read_tree(tmp_path / "local_tiles"), read_tree(tmp_path / "out")
    assert len(remote) == 4 and remote.keys() == local.keys()
    assert all(np.array_equal(decode(remote[k]), decode(local[k])) for k in local)
    r = runner.invoke(main, ["tiles", str(xyz), str(tmp_path / "o2"), "--zoom", "16", "-j", "2",
                             "--scheduler", address])
    assert r.exit_code == 1 and "give one of them" in r.output


def test_connect_passes_a_client_through():
    sentinel = object()
    with connect(sentinel) as c:
        assert c is sentinel


def test_a_source_missing_on_a_worker_fails_the_run(tmp_path):
    from geo_pix2pix.errors import TileSourceError
    from geo_pix2pix.tiles.cluster import _check_visible
    from geo_pix2pix.tiles.sources import XYZFolder

    source = XYZFolder(str(write_xyz(tmp_path / "src", block(16, HELSINKI.x, HELSINKI.y, 1, 1))))
    _check_visible(source)
    import shutil

    shutil.rmtree(tmp_path / "src")  # as on a worker without the shared folder
    with pytest.raises(TileSourceError, match="same path"):
        _check_visible(source)


def test_kept_environ():
    before = dict(os.environ)
    with kept_environ():
        os.environ["GEO_PIX2PIX_TEST_VAR"] = "1"
        os.environ.pop("PATH", None)
    assert dict(os.environ) == before


@pytest.mark.slow
def test_cli_scheduler_runs_reduced_precision(make_raster, tmp_path, client, weights, one_thread):
    """--precision with --scheduler: the model loaded here, pickled to the workers, which
    build their own bf16 engine; the same pixels as a local bf16 render and tiles job."""
    src = make_raster(300, 300, seed=11)
    runner = CliRunner()
    outs = []
    for name, extra in (("local.tif", ["--threads", "1"]), ("remote.tif", ["--scheduler", client.scheduler.address])):
        outs.append(tmp_path / name)
        r = runner.invoke(main, ["-q", "render", str(src), str(outs[-1]), "--weights", str(weights[0]),
                                 "--device", "cpu", "--precision", "bf16", *extra])
        assert r.exit_code == 0, r.output
    _same_raster(*outs)
    tiles = block(16, HELSINKI.x, HELSINKI.y, 1, 2)
    xyz = write_xyz(tmp_path / "src", tiles)
    for dst, extra in ((tmp_path / "t_local", ["--threads", "1"]), (tmp_path / "t_remote", ["--scheduler", "local:1"])):
        r = runner.invoke(main, ["-q", "tiles", str(xyz), str(dst), "--zoom", "16", "--bbox", bbox_of(tiles),
                                 "--weights", str(weights[1]), "--precision", "bf16", *extra])
        assert r.exit_code == 0, r.output
    local, remote = read_tree(tmp_path / "t_local"), read_tree(tmp_path / "t_remote")
    assert len(remote) == 2 and remote.keys() == local.keys()
    assert all(np.array_equal(decode(remote[k]), decode(local[k])) for k in local)


def _worker_log_lines() -> str:
    """In a worker: what its distributed loggers let through, of two lines a closing
    cluster gives and one other warning."""
    import io
    import logging

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    worker = logging.getLogger("distributed.worker")
    worker.addHandler(handler)
    try:
        worker.error("Failed to communicate with scheduler during heartbeat.", exc_info=OSError("Stream is closed"))
        logging.getLogger("distributed.worker.state_machine").warning(
            "Async instruction for <Task cancelled name=\"execute('x')\"> ended with CancelledError")
        worker.warning("Worker is at 85% memory usage. Pausing worker.")
    finally:
        worker.removeHandler(handler)
    return out.getvalue()


@pytest.mark.slow
def test_local_cluster_workers_drop_only_the_closing_noise():
    """The workers of --scheduler local:N write to the user's terminal themselves: what they
    log as the cluster closes under them (Ctrl-C) is dropped, other warnings are kept."""
    pytest.importorskip("distributed")
    with connect("local:1") as c:
        (lines,) = c.run(_worker_log_lines).values()
    assert lines == "Worker is at 85% memory usage. Pausing worker.\n"
