"""Signals sent to the real command (a subprocess): SIGHUP (a closed terminal), and
SIGINT/SIGTERM/SIGHUP during start-up, while torch is still being imported.

Every one ends with its exit code (130 SIGINT, 143 SIGTERM, 129 SIGHUP), one line saying
so, no traceback, no temporary file, and the previous output as it was.
"""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from clihelpers import message_lines

from geo_pix2pix.model.checkpoints import save_checkpoint
from geo_pix2pix.model.networks import Generator

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, OMP_NUM_THREADS="1")  # this machine's cores are shared
DONE = "temporary files removed, existing outputs left untouched."


def render_command(src, dst, weights, *extra) -> list[str]:
    return [sys.executable, "-m", "geo_pix2pix", "-q", "render", str(src), str(dst), "--weights", str(weights),
            "--device", "cpu", *extra]


@pytest.fixture
def slow_render(make_raster, tmp_path):
    """A render of a few seconds over a previous output: (command, dst, the previous bytes)."""
    torch.manual_seed(0)
    weights = save_checkpoint(tmp_path / "slow.pt", Generator(base_width=8, norm="instance"))
    dst = tmp_path / "out.tif"
    subprocess.run(render_command(make_raster(300, 300, seed=1), dst, weights), check=True, env=ENV, cwd=ROOT,
                   capture_output=True)
    src = make_raster(1536, 1536, tiled=True, blockxsize=256, blockysize=256)
    return render_command(src, dst, weights, "--overwrite"), dst, dst.read_bytes()


def wait_for_temporaries(proc, folder: Path) -> None:
    deadline = time.monotonic() + 120
    while not list(folder.glob(".out.tif.*.tmp*")):  # rendering has begun
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)


def hangup_default() -> None:
    """SIGHUP as a terminal session gives it, whatever the test runner inherited: under nohup it
    is ignored, and the command line keeps an inherited ignore (as nohup users expect)."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def assert_left_as_it_was(folder: Path, dst: Path, before: bytes) -> None:
    assert not list(folder.glob(".*")), list(folder.glob(".*"))  # no temporary file left
    assert dst.read_bytes() == before


@pytest.mark.slow
def test_sighup_during_render_cleans_up_like_sigterm(slow_render, tmp_path):
    command, dst, before = slow_render
    proc = subprocess.Popen(command, env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=hangup_default)
    try:
        wait_for_temporaries(proc, tmp_path)
        proc.send_signal(signal.SIGHUP)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 129, err
    assert [s for s in message_lines(err) if not s.startswith("Warning:")] == [f"Hung up: {DONE}"]
    assert_left_as_it_was(tmp_path, dst, before)


@pytest.mark.slow
def test_closing_the_terminal_stops_render_cleanly(slow_render, tmp_path):
    """The real case: the render's controlling terminal (a pty) goes away."""
    command, dst, before = slow_render
    command = [a for a in command if a != "-q"]  # with its progress bar, which writes to the terminal
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(command, env=ENV, cwd=ROOT, stdin=terminal, stdout=terminal, stderr=terminal,
                            start_new_session=True,  # then the pty becomes its controlling terminal:
                            preexec_fn=lambda: os.close(os.open(os.ttyname(0), os.O_RDWR)))
    os.close(terminal)
    try:
        wait_for_temporaries(proc, tmp_path)
        os.close(controller)  # hang up: the kernel sends SIGHUP, the terminal's writes fail
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 129
    assert_left_as_it_was(tmp_path, dst, before)


@pytest.mark.slow
def test_nohup_keeps_a_render_running(make_raster, tmp_path):
    """nohup starts a program with SIGHUP ignored: geo-pix2pix keeps it ignored."""
    torch.manual_seed(0)
    weights = save_checkpoint(tmp_path / "m.pt", Generator(base_width=8, norm="instance"))
    src = make_raster(1024, 1024, tiled=True, blockxsize=256, blockysize=256)
    proc = subprocess.Popen(render_command(src, tmp_path / "out.tif", weights), env=ENV, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    try:
        wait_for_temporaries(proc, tmp_path)
        proc.send_signal(signal.SIGHUP)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert (tmp_path / "out.tif").exists() and not list(tmp_path.glob(".*"))


@pytest.mark.parametrize("sig,code,word", [(signal.SIGINT, 130, "Interrupted"), (signal.SIGTERM, 143, "Terminated"),
                                           (signal.SIGHUP, 129, "Hung up")])
def test_signal_while_torch_is_imported_is_a_clean_exit(make_raster, tmp_path, sig, code, word):
    """Ctrl-C a second after starting: the handler is there before torch is imported."""
    dst = tmp_path / "out.tif"
    dst.write_bytes(b"previous")
    # -X importtime reports each module as its import ends: a torch submodule means torch is underway.
    proc = subprocess.Popen([sys.executable, "-X", "importtime", *render_command(make_raster(64, 64), dst,
                                                                                  "none.pt", "--overwrite")[1:]],
                            env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=hangup_default)
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if "| geo_pix2pix.cli.main" in line:
                assert not any(" torch" in s for s in lines), "torch is imported before the command line"
            if "torch." in line:
                proc.send_signal(sig)
                break
        err = "".join(lines) + proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    ours = [s for s in message_lines(err) if not s.startswith("import time:")]
    assert proc.returncode == code, err[-3000:]
    assert ours == [f"{word}: {DONE}"], ours
    assert dst.read_bytes() == b"previous" and not list(tmp_path.glob(".*"))


def test_help_imports_no_torch():
    code = ("import sys; from geo_pix2pix.cli.main import main; main(['--help'], standalone_mode=False); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    out = subprocess.run([sys.executable, "-c", code], env=ENV, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "render" in out.stdout


@pytest.mark.slow
def test_interrupted_train_says_where_it_saved_and_how_to_resume(tmp_path):
    import shlex

    from test_train import make_pairs

    data, run = make_pairs(tmp_path / "data", n=2), tmp_path / "run"
    args = ["train", str(data), str(run), "--steps", "100000", "--width", "4", "--d-width", "4",
            "--val-fraction", "0", "--checkpoint-every", "1", "--no-amp", "--device", "cpu"]
    proc = subprocess.Popen([sys.executable, "-m", "geo_pix2pix", "-q", *args], env=ENV, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "last.pt").exists():  # training has begun
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    [line] = message_lines(err)
    head, _, command = line.partition("; continue it with: ")
    assert head.startswith("Interrupted: the run was saved at step ") and head.endswith(f" in {run / 'last.pt'}")
    step = int(head.split("at step ")[1].split()[0])
    assert step >= 1 and torch.load(run / "last.pt", weights_only=True)["training"]["step"] == step
    words = shlex.split(command)
    assert words[:2] == ["geo-pix2pix", "train"] and words[-2:] == ["--resume", str(run / "last.pt")]
    assert words[2:-2] == [w if w != "0" else "0.0" for w in args[1:]]  # the same run, as given
    # The command continues the run (to a nearer end than 100000 steps, for the test's sake).
    words[words.index("--steps") + 1] = str(step + 2)
    done = subprocess.run([sys.executable, "-m", "geo_pix2pix", "-q", *words[1:]], env=ENV, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"(step {step + 2})" in done.stderr
