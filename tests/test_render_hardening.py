"""render at the edges of real data (issue 15): NaN from the model, narrow rasters, GCPs,
GDAL virtual paths, provenance, anisotropic pixels and the causes named in messages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from geo_pix2pix import render
from geo_pix2pix.checkpoints import save_checkpoint
from geo_pix2pix.errors import ModelOutputError
from geo_pix2pix.networks import Generator

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "geo_pix2pix", *map(str, args)], capture_output=True,
                          text=True, env=ENV, cwd=cwd, timeout=300)


class NaNModel(torch.nn.Module):
    """An API model that returns NaN (as a diverged network does)."""

    def forward(self, x):
        return x * float("nan")


def test_nan_from_an_api_model_is_an_error_and_leaves_nothing(make_raster, tmp_path):
    src = make_raster(300, 300)
    dst = tmp_path / "out.tif"
    with pytest.raises(ModelOutputError, match=r"the model returned NaN .* for \d+ of \d+ tiles"):
        render(src, dst, model=NaNModel())
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]


def test_nan_weights_are_one_line_and_exit_1(make_raster, tmp_path):
    torch.manual_seed(0)
    g = Generator(base_width=4, norm="instance")
    with torch.no_grad():
        for p in g.parameters():
            p.fill_(float("nan"))
    weights = save_checkpoint(tmp_path / "nan.pt", g)
    src = make_raster(100, 120)
    dst = tmp_path / "out.png"
    r = run_cli("render", src, dst, "--weights", weights)
    assert r.returncode == 1, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and ("NaN" in lines[0] or "not finite" in lines[0]), r.stderr
    assert "Traceback" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["nan.pt", src.name])


def test_nan_in_make_tiles_is_an_error(tmp_path):
    from tilesdata import HELSINKI, block, write_xyz

    from geo_pix2pix.tiles import make_tiles

    src = write_xyz(tmp_path / "src", block(16, HELSINKI.x, HELSINKI.y, 2, 2))
    with pytest.raises(ModelOutputError, match="NaN"):
        make_tiles(src, tmp_path / "out", zooms=16, model=NaNModel())
    assert not list((tmp_path / "out").glob("16/*/*.png"))


@pytest.mark.parametrize("height,width,suffix,cog", [
    (2000, 3, ".tif", False), (3, 2000, ".tif", False), (2000, 3, ".tif", True), (2000, 3, ".png", False),
    (100000, 1, ".tif", False), (1, 100000, ".tif", False),
])
def test_narrow_rasters_render_with_the_overviews_their_shape_allows(make_raster, tmp_path, identity,
                                                                     height, width, suffix, cog):
    import rasterio

    from geo_pix2pix.render import overview_factors

    src = make_raster(height, width, seed=height + width)
    dst = tmp_path / f"out{suffix}"
    render(src, dst, model=identity, cog=cog)
    with rasterio.open(src) as a, rasterio.open(dst) as b:
        assert np.array_equal(a.read(), b.read())
        n = len(b.overviews(1))
    if suffix == ".tif":
        assert n >= 1
        with rasterio.open(dst, overview_level=0) as ov:
            # GDAL's GTiff driver rounds overview sizes up, its COG driver down.
            assert ov.shape in ((-(-height // 2), -(-width // 2)), (max(1, height // 2), max(1, width // 2)))
    assert overview_factors(width, height) == overview_factors(height, width)
    assert overview_factors(200, 1) == [] and overview_factors(257, 1) == [2]


def test_a_narrow_raster_through_the_cli(make_raster, tmp_path):
    src = make_raster(2000, 3)
    r = run_cli("render", src, tmp_path / "out.tif", "--weights", _tiny_weights(tmp_path))
    assert r.returncode == 0, r.stderr


def _tiny_weights(tmp_path):
    torch.manual_seed(0)
    return save_checkpoint(tmp_path / "tiny.pt", Generator(base_width=4, norm="instance"))
