"""export-onnx and the onnxruntime backend: same pixels (within rounding), same georeference."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import rasterio
import torch
from clihelpers import assert_user_error, cli

import geo_pix2pix
from geo_pix2pix.checkpoints import save_checkpoint
from geo_pix2pix.errors import CheckpointError, OptionError
from geo_pix2pix.model import run_batch
from geo_pix2pix.networks import Generator

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    weights = save_checkpoint(tmp / "m.pt", Generator(base_width=8, norm="instance"), ground_resolution=2.0)
    r = cli("-q", "export-onnx", tmp / "m.onnx", "-w", weights)
    assert r.exit_code == 0, r.output
    return weights, tmp / "m.onnx"


def test_onnx_model_matches_the_engine(exported):
    weights, path = exported
    pt, ox = geo_pix2pix.load_model(weights), geo_pix2pix.load_model(path)
    assert ox.ground_resolution == 2.0 and ox.tile_multiple == pt.tile_multiple
    assert ox.identity != pt.identity
    tiles = np.random.default_rng(0).integers(0, 256, (3, 3, 256, 256), dtype=np.uint8)
    assert np.abs(run_batch(ox, tiles) - run_batch(pt, tiles)).max() < 1e-4
    # Batch independence holds here too (fixed chunk).
    assert np.array_equal(run_batch(ox, tiles[1:2])[0], run_batch(ox, tiles)[1])
    # Picklable for --workers: each process opens its own session.
    again = pickle.loads(pickle.dumps(ox))
    assert np.array_equal(run_batch(again, tiles[:1]), run_batch(ox, tiles[:1]))


def test_render_with_onnx_keeps_georeference(exported, make_raster, tmp_path):
    weights, path = exported
    src = make_raster(300, 280, res=2.0)
    assert cli("-q", "render", src, tmp_path / "pt.tif", "-w", weights).exit_code == 0
    r = cli("-q", "render", src, tmp_path / "ox.tif", "-w", path)
    assert r.exit_code == 0, r.output
    with rasterio.open(tmp_path / "pt.tif") as a, rasterio.open(tmp_path / "ox.tif") as b, rasterio.open(src) as s:
        assert b.crs == s.crs and b.transform == s.transform and b.shape == s.shape
        assert np.abs(a.read().astype(int) - b.read().astype(int)).max() <= 1


def test_foreign_onnx_file_and_options_are_clear_errors(exported, tmp_path):
    _, path = exported
    graph = onnx.load(path)
    del graph.metadata_props[:]
    onnx.save(graph, tmp_path / "bare.onnx")
    with pytest.raises(CheckpointError, match="not one written by 'geo-pix2pix export-onnx'"):
        geo_pix2pix.load_model(tmp_path / "bare.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="not a readable ONNX model"):
        geo_pix2pix.load_model(tmp_path / "junk.onnx")
    with pytest.raises(OptionError, match="--precision int8 applies to checkpoints"):
        geo_pix2pix.load_model(path, precision="int8")
    r = cli("export-onnx", path)
    assert_user_error(r, "--overwrite")
