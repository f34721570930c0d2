"""export-onnx and the onnxruntime backend: same pixels (within rounding), same georeference."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import rasterio
import torch
from clihelpers import assert_user_error, cli

import geo_pix2pix
from geo_pix2pix.errors import CheckpointError, OptionError
from geo_pix2pix.model.checkpoints import save_checkpoint
from geo_pix2pix.model.load import run_batch
from geo_pix2pix.model.networks import Generator

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


def _graph_model(exported, tmp_path, name, *, input_name="map", op="Identity", out_shape=("n", 3, "h", "w"),
                 meta=None, attrs=None):
    """A small ONNX model with geo-pix2pix's metadata (as export-onnx writes it, or ``meta``)."""
    from onnx import TensorProto, helper

    node = helper.make_node(op, [input_name], ["aerial"], **(attrs or {}))
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT,
                                                                          ["n", 3, "h", "w"])],
                              [helper.make_tensor_value_info("aerial", TensorProto.FLOAT, out_shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    source = {p.key: p.value for p in onnx.load(exported[1]).metadata_props}
    source.update(meta or {})
    for key, value in source.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, path)
    return path


BAD_ONNX = {
    "input-not-named-map": (dict(input_name="x"), "its inputs are ['x'], not the one input 'map'"),
    "one-channel-output": (dict(op="ReduceMean", attrs={"axes": [1], "keepdims": 1}, out_shape=("n", 1, "h", "w")),
                           "its 'aerial' has 1 channels, not 3"),
    "output-rank-2": (dict(op="Flatten", out_shape=("n", "k")), "its output is of shape ['n', 'k']"),
    "resolution-not-a-number": (dict(meta={"geo_pix2pix.ground_resolution": "abc"}),
                                "malformed geo-pix2pix metadata (ground_resolution 'abc'"),
    "resolution-nan": (dict(meta={"geo_pix2pix.ground_resolution": "nan"}), "ground_resolution 'nan'"),
    "resolution-negative": (dict(meta={"geo_pix2pix.ground_resolution": "-2"}), "ground_resolution '-2'"),
    "tile-multiple-not-a-number": (dict(meta={"geo_pix2pix.tile_multiple": "x"}), "tile_multiple 'x'"),
    "tile-multiple-zero": (dict(meta={"geo_pix2pix.tile_multiple": "0"}), "tile_multiple '0'"),
}


@pytest.mark.parametrize("case", list(BAD_ONNX))
def test_foreign_or_edited_onnx_models_are_one_line_errors(case, exported, make_raster, tmp_path):
    kwargs, fragment = BAD_ONNX[case]
    path = _graph_model(exported, tmp_path, case, **kwargs)
    with pytest.raises(CheckpointError, match="export-onnx"):
        geo_pix2pix.load_model(path)
    line = assert_user_error(cli("render", make_raster(64, 64), tmp_path / "out.tif", "-w", path), fragment)
    assert "'geo-pix2pix export-onnx'" in line
    assert not (tmp_path / "out.tif").exists()


def test_wrong_output_shape_found_at_the_first_batch(exported, make_raster, tmp_path):
    """An output of another size (half): the file's shapes cannot tell, the first batch does."""
    path = _graph_model(exported, tmp_path, "pool", op="AveragePool",
                        attrs={"kernel_shape": [2, 2], "strides": [2, 2]}, out_shape=None)
    model = geo_pix2pix.load_model(path)  # nothing to see in the file
    with pytest.raises(CheckpointError, match=r"mapped a batch \(1, 3, 256, 256\) to \(1, 3, 128, 128\)"):
        run_batch(model, np.zeros((1, 3, 256, 256), np.uint8), chunk=1)
    assert_user_error(cli("render", make_raster(64, 64), tmp_path / "out.tif", "-w", path),
                      "a generator keeps the shape (N, 3, H, W)")
    assert not (tmp_path / "out.tif").exists() and not list(tmp_path.glob(".*"))


def test_unreadable_onnx_reason_is_whole(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    r = cli("render", tmp_path / "junk.onnx", tmp_path / "out.tif", "-w", tmp_path / "junk.onnx")
    line = assert_user_error(r, "is not a readable ONNX model (")
    assert line.endswith("write one with 'geo-pix2pix export-onnx'")
