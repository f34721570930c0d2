"""Heap tuning: what glibc does with a large block, inside and outside kept_heap; library
calls leave the process's allocator and environment as they found them, the CLI tunes."""

from __future__ import annotations

import ctypes
import functools
import importlib
import os
import subprocess
import sys
import threading

import pytest
import torch
from click.testing import CliRunner
from tilesdata import HELSINKI, Identity, block, write_xyz

from geo_pix2pix import heap

LARGE = 96 << 20  # above glibc's largest adaptive mmap threshold (32 MiB on 64-bit)


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _libc():
    if heap._LIBC is None or not hasattr(heap._LIBC, "mallinfo2"):
        pytest.skip("needs glibc 2.33 or later (mallinfo2)")
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _Mallinfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    return libc


def large_block_mapped() -> bool:
    """Whether glibc serves a large block by mmap now (the untuned default) rather than from its heap."""
    libc = _libc()
    before = libc.mallinfo2().hblkhd
    p = libc.malloc(LARGE)
    try:
        return libc.mallinfo2().hblkhd - before >= LARGE
    finally:
        libc.free(p)


_CHILD = "GEO_PIX2PIX_TEST_HEAP_CHILD"


def isolated(test):
    """Run ``test`` in a fresh interpreter. glibc serves a large block from a free chunk of
    its heap, whatever its thresholds, and earlier tests in this process (an in-process
    training run) leave such chunks behind: only a new process's heap is as a user's is."""

    @functools.wraps(test)
    def run(*args, **kwargs):
        if os.environ.get(_CHILD) == test.__name__:
            return test(*args, **kwargs)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"{__file__}::{test.__name__}"],
            cwd=root, env={**os.environ, _CHILD: test.__name__}, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]

    return run


@isolated
def test_kept_heap_serves_large_blocks_from_the_heap_until_the_last_user_leaves():
    assert large_block_mapped()
    inside, release = threading.Event(), threading.Event()

    def other_user():
        with heap.kept_heap():
            inside.set()
            release.wait(5)

    with heap.kept_heap():
        assert not large_block_mapped()
        with heap.kept_heap():
            t = threading.Thread(target=other_user)
            t.start()
            assert inside.wait(5)
        assert not large_block_mapped()  # two users remain
        release.set()
        t.join(5)
        assert not large_block_mapped()
    assert large_block_mapped()


@isolated
def test_restored_after_an_error():
    with pytest.raises(RuntimeError):
        with heap.kept_heap():
            raise RuntimeError("boom")
    assert large_block_mapped()


@isolated
def test_process_thresholds_set_inside_apply_on_leaving(monkeypatch):
    _libc()
    monkeypatch.setattr(heap, "_left", dict(heap._left))
    left = heap._left[heap._M_MMAP_THRESHOLD], heap._left[heap._M_TRIM_THRESHOLD]
    try:
        with heap.kept_heap():
            assert heap.set_process_thresholds(2 * LARGE, 4 * LARGE)  # e.g. a Dask worker, mid-render
        assert not large_block_mapped()  # below the new mmap threshold
    finally:
        heap.set_process_thresholds(*left)
        heap._LIBC.malloc_trim(0)  # the free top of the heap would serve the next block
    assert large_block_mapped()


def test_keep_for_process_is_never_released():
    """In a process of its own, as in the worker processes geo-pix2pix starts."""
    _libc()
    code = ("import tests.test_heap as t; from geo_pix2pix import heap\n"
            "assert t.large_block_mapped(); heap.keep_heap_for_process()\n"
            "with heap.kept_heap(): pass\n"
            "assert not t.large_block_mapped()")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.path.join(root, "tests")])}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env=env, timeout=120)


class Probe(torch.nn.Module):
    """Identity that records, at each batch, whether glibc maps large blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bool] = []

    def forward(self, x):
        self.seen.append(large_block_mapped())
        return x


@pytest.mark.filterwarnings("ignore::geo_pix2pix.errors.ResolutionWarning")
@isolated
def test_library_render_leaves_the_process_as_it_found_it(make_raster, tmp_path):
    from geo_pix2pix import render

    probe, env = Probe(), dict(os.environ)
    render(make_raster(300, 300), tmp_path / "out.tif", model=probe)
    assert probe.seen and all(probe.seen)  # the allocator not tuned under a library call
    assert dict(os.environ) == env and large_block_mapped()


@isolated
def test_library_make_tiles_leaves_the_process_as_it_found_it(tmp_path):
    from geo_pix2pix.tiles import make_tiles

    class TileProbe(Identity):
        seen: list[bool] = []

        def forward(self, x):
            self.seen.append(large_block_mapped())
            return super().forward(x)

    source = write_xyz(tmp_path / "src", block(16, HELSINKI.x, HELSINKI.y, 2, 2))
    env = dict(os.environ)
    make_tiles(source, tmp_path / "out", zooms="16", model=TileProbe(), meta_size=2)
    assert TileProbe.seen and all(TileProbe.seen)
    assert dict(os.environ) == env and large_block_mapped()


@isolated
def test_cli_render_tunes_the_allocator_for_the_command(make_raster, tmp_path, monkeypatch):
    """The CLI enters the tuning around the command, and restores it on exit."""
    from geo_pix2pix.cli.main import main

    _libc()
    seen = []

    def fake_render(src, dst, **kwargs):
        seen.append(large_block_mapped())
        raise SystemExit(0)

    monkeypatch.setattr(importlib.import_module("geo_pix2pix.model.load"), "load_model", lambda *a, **k: Identity())
    monkeypatch.setattr(importlib.import_module("geo_pix2pix.render"), "render", fake_render)
    CliRunner().invoke(main, ["render", str(make_raster(64, 64)), str(tmp_path / "out.tif")])
    assert seen == [False]
    assert large_block_mapped()
