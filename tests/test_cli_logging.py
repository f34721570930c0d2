"""What the command line prints besides errors: log lines above the progress bar, the
render's model and speed, one warning per cause, and progress counts without repeats."""

from __future__ import annotations

import fcntl
import logging
import os
import pty
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from clihelpers import cli
from PIL import Image

from geo_pix2pix import render
from geo_pix2pix.model.checkpoints import save_checkpoint
from geo_pix2pix.model.networks import Generator

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, OMP_NUM_THREADS="1")


@pytest.fixture
def weights(tmp_path):
    torch.manual_seed(0)
    return save_checkpoint(tmp_path / "w" / "tiny.pt", Generator(base_width=4, norm="instance"),
                           ground_resolution=2.12)


def test_render_logs_model_precision_device_and_speed(make_raster, tmp_path, weights, caplog):
    caplog.set_level(logging.INFO, logger="geo_pix2pix")
    src = make_raster(300, 300, crs="EPSG:32635", res=2.12)  # on the model's grid: 2 × 2 tiles
    result = cli("render", src, tmp_path / "out.tif", "-w", weights, "--device", "cpu")
    assert result.exit_code == 0, result.output
    lines = [r.getMessage() for r in caplog.records if r.name == "geo_pix2pix"]
    model_lines = [s for s in lines if s.startswith("model ")]
    assert f"model {weights} [" in model_lines[0] and model_lines[0].endswith("], fp32 on cpu")
    assert [s for s in lines if s.startswith("rendered 4 tile(s) in ") and s.endswith(" tiles/s)")]


@pytest.mark.parametrize("busy,given,expected", [(0.1, None, 2), (1.2, None, 1), (5.0, None, 1), (5.0, 2, 2)])
def test_render_leaves_busy_cores_to_their_processes(make_raster, tmp_path, weights, caplog, monkeypatch,
                                                     busy, given, expected):
    """Without --threads, the model gets the cores other processes do not keep busy; the
    thread count is restored after the command."""
    from geo_pix2pix.model import devices

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(devices, "busy_cores", lambda: busy)
    caplog.set_level(logging.INFO, logger="geo_pix2pix")
    before = torch.get_num_threads()
    args = ["--threads", str(given)] if given else []
    result = cli("render", make_raster(64, 64), tmp_path / "out.tif", "-w", weights, "--device", "cpu", *args)
    assert result.exit_code == 0, result.output
    chosen = [r.getMessage() for r in caplog.records if "CPU thread" in r.getMessage()]
    assert chosen and chosen[0].startswith(f"{expected} CPU thread(s) for the model")
    assert torch.get_num_threads() == before


@pytest.mark.slow
def test_log_lines_do_not_run_into_the_progress_bar(make_raster, tmp_path, weights):
    """At a terminal the bar is drawn; an INFO line logged meanwhile starts a line of its own."""
    src = make_raster(600, 600, res=1.0)  # resampled to the model's 2.12 m/px: an INFO line mid-render
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal 100 columns wide
    proc = subprocess.Popen([sys.executable, "-m", "geo_pix2pix", "render", str(src), str(tmp_path / "out.tif"),
                             "-w", str(weights), "--device", "cpu"], env=ENV, cwd=ROOT,
                            stdin=terminal, stdout=terminal, stderr=terminal)
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # the process has closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait(timeout=120)
    os.close(controller)
    text = b"".join(chunks).decode()
    assert proc.returncode == 0, text
    assert "render:" in text and "%|" in text  # the bar was drawn
    logged = [line for line in text.replace("\r\n", "\n").split("\n") if "INFO: resampling" in line]
    assert logged and all(line.split("\r")[-1].startswith("INFO: resampling") for line in logged), logged


def test_plain_png_warns_once(tmp_path, weights):
    """rasterio's own 'no geotransform' warning repeats geo-pix2pix's: only the latter is shown."""
    src = tmp_path / "plain.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)).save(src)
    for dst in ("out.tif", "out.png"):
        p = subprocess.run([sys.executable, "-m", "geo_pix2pix", "render", str(src), str(tmp_path / dst), "-w",
                            str(weights), "--device", "cpu"], env=ENV, cwd=ROOT, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        warned = [s for s in p.stderr.splitlines() if s.startswith("Warning:")]
        assert len(warned) == 1 and "has no georeference" in warned[0], p.stderr


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_progress_counts_are_reported_once_each(make_raster, tmp_path, weights, batch_size):
    calls = []
    render(make_raster(700, 900), tmp_path / f"out{batch_size}.tif", model=weights, batch_size=batch_size,
           progress=lambda done, total: calls.append((done, total)))
    done = [d for d, _ in calls]
    total = calls[-1][1]
    assert done == sorted(set(done)), calls  # strictly increasing: no value twice
    assert done[-1] == total and {t for _, t in calls} == {total}


def test_help_is_quick_to_start():
    """--help imports neither torch nor rasterio (a generous bound: the machine is shared)."""
    start = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "geo_pix2pix", "--help"], env=ENV, cwd=ROOT, capture_output=True,
                       text=True)
    assert p.returncode == 0 and "render" in p.stdout
    code = ("import sys; from geo_pix2pix.cli.main import main; main(['render', '--help'], standalone_mode=False); "
            "assert not {'torch', 'rasterio'} & set(sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], env=ENV, cwd=ROOT, capture_output=True).returncode == 0
    assert time.monotonic() - start < 30


def test_distributed_ctrl_c_race_is_not_logged_but_other_callback_errors_are():
    """distributed's sync() cancel callback can raise NameError when Ctrl-C lands early:
    tornado logs it with a traceback; the CLI drops that one record and no other."""
    from distributed import utils as dask_utils

    from geo_pix2pix.cli.main import _ours_or_warning

    def record(exc: BaseException, name: str = "tornado.application") -> logging.LogRecord:
        return logging.LogRecord(name, logging.ERROR, __file__, 1, "Exception in callback", None,
                                 (type(exc), exc, exc.__traceback__))

    code = compile("def cancel():\n    return future\nfuture = 1\ndel future\ncancel()", dask_utils.__file__, "exec")
    try:
        exec(code, {})
    except NameError as exc:
        race = exc
    assert not _ours_or_warning(record(race))
    assert _ours_or_warning(record(race, name="other"))  # another logger: shown
    try:
        print(undefined_name)  # noqa: F821
    except NameError as exc:
        assert _ours_or_warning(record(exc))  # raised elsewhere: shown


def test_busy_cores_counts_other_work_at_normal_priority_not_niced_work():
    """/proc/stat's busy columns (user, system, irq, softirq, steal) of our CPUs count;
    nice, idle and iowait do not; a CPU outside the affinity set does not."""
    from geo_pix2pix.model.devices import cpu_times

    #        user nice system idle iowait irq softirq steal
    before = ("cpu  900 900 900 900 900 0 0 0 0 0\n"
              "cpu0 100 100 100 100 100 0 0 0 0 0\ncpu1 100 100 100 100 100 0 0 0 0 0\n"
              "cpu2 100 100 100 100 100 0 0 0 0 0\nintr 5 6\n")
    after = ("cpu  999 999 999 999 999 0 0 0 0 0\n"
             "cpu0 170 110 120 110 100 5 5 0 0 0\n"   # 100 ticks busy of 120
             "cpu1 100 200 100 110 110 0 0 0 0 0\n"   # niced and idle: 0 busy of 120
             "cpu2 500 100 100 100 100 0 0 0 0 0\n")  # busy, but not ours
    (b0, t0), (b1, t1) = cpu_times(before, {0, 1}), cpu_times(after, {0, 1})
    assert (b1 - b0, t1 - t0) == (100, 240)


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads Linux's /proc/stat")
def test_a_spinning_process_is_seen_as_a_busy_core():
    from geo_pix2pix.model.devices import busy_cores

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert busy_cores(0.5) >= 0.5  # one whole core where the machine is otherwise idle
    finally:
        spinner.kill()
        spinner.wait()
