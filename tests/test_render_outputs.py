"""What render leaves at DST (issue 15): side files replaced with the output, one
writer per DST, any existing path counted as existing."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from PIL import Image

from geo_pix2pix import NotGeoreferencedWarning, render
from geo_pix2pix.errors import OutputExistsError
from geo_pix2pix.io.atomic import sidecars


def _plain_png(path, seed=0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_overwrite_replaces_or_removes_the_previous_outputs_side_files(make_raster, tmp_path, identity, suffix):
    """--overwrite of a georeferenced output by one without a georeference (or another
    one) leaves no side file of the old output: GDAL would read it as the new one's."""
    geo = make_raster(40, 50, crs="EPSG:32635")
    dst = tmp_path / f"out{suffix}"
    render(geo, dst, model=identity)
    if suffix != ".tif":  # PNG and JPEG keep CRS and transform in DST.aux.xml
        assert (tmp_path / f"out{suffix}.aux.xml").exists()
    stale = [tmp_path / f"out{suffix}.aux.xml", tmp_path / "out.wld", tmp_path / f"out{suffix}.ovr"]
    stale[0].write_text('<PAMDataset><GeoTransform>1, 5, 0, 9, 0, -5</GeoTransform></PAMDataset>')
    stale[1].write_text("5\n0\n0\n-5\n1000\n2000\n")
    stale[2].write_bytes(b"old overviews")

    plain = _plain_png(tmp_path / "plain.png")
    with pytest.warns(NotGeoreferencedWarning):
        render(plain, dst, model=identity, overwrite=True)
    assert not any(p.exists() for p in stale)
    with rasterio.open(dst) as ds:
        assert ds.crs is None and ds.transform.is_identity

    render(geo, dst, model=identity, overwrite=True)
    with rasterio.open(geo) as a, rasterio.open(dst) as b:
        assert b.crs == a.crs and b.transform == a.transform


def test_a_side_file_left_by_an_earlier_output_counts_as_existing(make_raster, tmp_path, identity):
    src = make_raster(40, 50)
    dst = tmp_path / "out.png"
    aux = tmp_path / "out.png.aux.xml"
    aux.write_text("<PAMDataset/>")
    with pytest.raises(OutputExistsError, match=r"side file .*out\.png\.aux\.xml.*--overwrite"):
        render(src, dst, model=identity)
    assert aux.read_text() == "<PAMDataset/>" and not dst.exists()


def test_sidecar_names():
    names = [p.name for p in sidecars("/x/out.png")]
    assert names == ["out.png.aux.xml", "out.png.ovr", "out.png.msk", "out.pgw", "out.pngw", "out.wld"]
    assert {"out.tfw", "out.tifw", "out.wld"} <= {p.name for p in sidecars("/x/out.tif")}


def test_a_dangling_link_at_dst_counts_as_existing(make_raster, tmp_path, identity):
    src = make_raster(40, 50)
    dst = tmp_path / "out.tif"
    dst.symlink_to(tmp_path / "gone.tif")
    with pytest.raises(OutputExistsError, match="exists: pass --overwrite"):
        render(src, dst, model=identity)
    assert dst.is_symlink() and not (tmp_path / "gone.tif").exists()
    render(src, dst, model=identity, overwrite=True)  # the link is replaced, nothing made at its target
    assert not dst.is_symlink() and not (tmp_path / "gone.tif").exists()
    with rasterio.open(dst) as ds:
        assert ds.shape == (40, 50)


def test_a_render_holding_dst_refuses_a_second(make_raster, tmp_path, identity):
    from geo_pix2pix.errors import DestinationBusyError
    from geo_pix2pix.io.outlock import OutputLock, lock_path

    src = make_raster(40, 50)
    dst = tmp_path / "out.tif"
    with OutputLock(dst):
        with pytest.raises(DestinationBusyError, match=r"being written by another geo-pix2pix process \(pid \d+"):
            render(src, dst, model=identity)
        assert not dst.exists()
    render(src, dst, model=identity)  # free again; the lock file goes with its holder
    assert not lock_path(dst).exists()


SLOW_RENDER = """
import sys, time, torch
from pathlib import Path
from geo_pix2pix import render

class Held(torch.nn.Module):
    def forward(self, x):
        Path(sys.argv[3]).touch()  # started: the lock is held
        deadline = time.monotonic() + 120
        while not Path(sys.argv[4]).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return x

render(sys.argv[1], sys.argv[2], model=Held())
"""


@pytest.mark.slow
def test_two_processes_rendering_to_one_new_dst(make_raster, tmp_path):
    """The second of two concurrent renders to the same new DST is refused at once (exit 1);
    the first finishes and its output is the one at DST."""
    import os
    import subprocess
    import sys
    import time

    import torch

    from geo_pix2pix.model.checkpoints import save_checkpoint
    from geo_pix2pix.model.networks import Generator

    env = dict(os.environ, OMP_NUM_THREADS="1")
    torch.manual_seed(0)
    weights = save_checkpoint(tmp_path / "tiny.pt", Generator(base_width=4, norm="instance"))
    src = make_raster(60, 70, seed=3)
    dst = tmp_path / "out.tif"
    started, release = tmp_path / "started", tmp_path / "release"
    first = subprocess.Popen([sys.executable, "-c", SLOW_RENDER, str(src), str(dst), str(started), str(release)],
                             env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not started.exists():
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
            time.sleep(0.05)
        second = subprocess.run([sys.executable, "-m", "geo_pix2pix", "render", str(src), str(dst),
                                 "--weights", str(weights)], env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 1, second.stderr
        assert f"being written by another geo-pix2pix process (pid {first.pid}" in second.stderr
        assert not dst.exists()
    finally:
        release.touch()
        first.wait(timeout=120)
    assert first.returncode == 0, first.stderr.read()
    with rasterio.open(src) as a, rasterio.open(dst) as b:
        assert np.array_equal(a.read(), b.read())  # the first's (identity) output, not the second's
