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
