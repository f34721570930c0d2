"""``--scheduler local:N`` from the command line: quiet logs, and Ctrl-C while the cluster
starts or works (the real command in a subprocess, with a terminal where it matters)."""

from __future__ import annotations

import os
import pty
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("distributed")
psutil = pytest.importorskip("psutil")

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, OMP_NUM_THREADS="1")
DONE = "Interrupted: temporary files removed, existing outputs left untouched."

pytestmark = pytest.mark.slow


def command(src, dst, *extra):
    return [sys.executable, "-m", "geo_pix2pix", *extra, "render", str(src), str(dst), "--scheduler", "local:2",
            "--device", "cpu"]


class Lines:
    """The lines a process writes to ``fd``, read as they come."""

    def __init__(self, fd: int) -> None:
        self.fd, self.text = fd, ""
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 4096)
            except OSError:
                return
            if not chunk:
                return
            self.text += chunk.decode(errors="replace").replace("\r\n", "\n")

    def wait_for(self, proc, predicate, what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert proc.poll() is None, f"ended before {what}: {self.text[-3000:]}"
            assert time.monotonic() < deadline, f"no {what}: {self.text[-3000:]}"
            time.sleep(0.02)


def workers(proc) -> list:
    try:
        return psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def assert_clean(text: str, tmp_path: Path, left: list) -> None:
    assert "Traceback" not in text and "Exception ignored" not in text, text[-3000:]
    assert text.rstrip().endswith(DONE), text[-3000:]
    assert not list(tmp_path.glob(".*")), list(tmp_path.glob(".*"))  # no temporary file left
    time.sleep(1)
    assert not [p for p in left if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]  # no worker left


def test_dask_logs_only_with_vv(make_raster, tmp_path):
    src = make_raster(300, 300)
    busy = socket.socket()
    try:  # as for a second local cluster: Dask's HTTP server moves to another port, and no longer says so
        busy.bind(("127.0.0.1", 8787))
        busy.listen()
    except OSError:
        pass  # in use already
    with busy:
        quiet = subprocess.run(command(src, tmp_path / "a.tif"), env=ENV, cwd=ROOT, capture_output=True, text=True)
    assert "Port 8787" not in quiet.stderr
    assert quiet.returncode == 0, quiet.stderr
    ours = ("INFO: model ", "INFO: started a local Dask cluster", "INFO: resampling ", "INFO: rendered ")
    assert [s for s in quiet.stderr.splitlines() if s.startswith("INFO:") and not s.startswith(ours)] == []
    loud = subprocess.run(command(src, tmp_path / "b.tif", "-vv"), env=ENV, cwd=ROOT, capture_output=True, text=True)
    assert loud.returncode == 0, loud.stderr
    assert "Nanny" in loud.stderr  # Dask's own INFO lines, which -vv shows


def test_sigint_while_a_local_cluster_starts_is_a_clean_exit(make_raster, tmp_path):
    """`kill -INT` (or `timeout -s INT`) while the workers start: held until the cluster is up,
    then it is closed; Dask's exit handler finds nothing half-started."""
    src = make_raster(300, 300)
    proc = subprocess.Popen(command(src, tmp_path / "out.tif"), env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    err = Lines(proc.stderr.fileno())
    try:
        err.wait_for(proc, lambda: workers(proc), "worker process")  # the cluster is starting
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
        left = workers(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(0.5)
    assert proc.returncode == 130, err.text[-3000:]
    assert "stopping once the local Dask cluster has started" in err.text
    assert_clean(err.text, tmp_path, left)
    assert not (tmp_path / "out.tif").exists()


def test_ctrl_c_at_a_terminal_reaches_only_the_client(make_raster, tmp_path):
    """A terminal sends Ctrl-C to every process of the job: the workers, started ignoring it,
    print nothing; the client closes the cluster and exits cleanly."""
    src = make_raster(1536, 1536, tiled=True, blockxsize=256, blockysize=256)
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(command(src, tmp_path / "out.tif"), env=ENV, cwd=ROOT, stdin=terminal, stdout=terminal,
                            stderr=terminal, start_new_session=True,  # the pty becomes its terminal
                            preexec_fn=lambda: os.close(os.open(os.ttyname(0), os.O_RDWR)))
    os.close(terminal)
    out = Lines(controller)
    try:
        out.wait_for(proc, lambda: workers(proc), "worker process")
        os.killpg(proc.pid, signal.SIGINT)  # during start-up: ignored, the cluster starts
        out.wait_for(proc, lambda: "started a local Dask cluster" in out.text, "cluster")
        out.wait_for(proc, lambda: "resampling" in out.text or "%|" in out.text, "rendering")
        left = workers(proc)
        os.killpg(proc.pid, signal.SIGINT)  # during the work: the client stops
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        time.sleep(0.5)
        os.close(controller)
    assert proc.returncode == 130, out.text[-3000:]
    assert "Ctrl-C takes effect once it has started" in out.text
    assert_clean(out.text.replace("\r", "\n"), tmp_path, left)
