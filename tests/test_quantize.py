"""The int8 path: calibration stored in checkpoints, outputs close to fp32, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
from clihelpers import assert_user_error, cli

import geo_pix2pix
from geo_pix2pix.errors import CheckpointError
from geo_pix2pix.model.accel.int8 import calibrate, quantize
from geo_pix2pix.model.checkpoints import load_checkpoint, save_checkpoint
from geo_pix2pix.model.load import Pix2PixModel, run_batch
from geo_pix2pix.model.networks import Generator

PALETTE = np.array([[242, 239, 233], [170, 211, 223], [200, 250, 204], [255, 255, 255], [220, 200, 180]], np.uint8)


def map_like(n: int, seed: int = 0, size: int = 256) -> np.ndarray:
    """uint8 (n, 3, size, size) tiles of flat palette rectangles, like a rendered map."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, 3, size, size), np.uint8)
    for k in range(n):
        img = np.broadcast_to(PALETTE[0][:, None, None], (3, size, size)).copy()
        for _ in range(12):
            y, x = rng.integers(0, size - 16, 2)
            h, w = rng.integers(8, 96, 2)
            img[:, y : y + h, x : x + w] = PALETTE[rng.integers(1, len(PALETTE))][:, None, None]
        out[k] = img
    return out


@pytest.fixture(scope="module")
def calibrated():
    torch.manual_seed(0)
    gen = Generator(base_width=8, norm="instance").eval()
    return gen, calibrate(gen, [map_like(8, seed=1)])


def test_int8_is_close_to_fp32_and_batch_independent(calibrated):
    gen, cal = calibrated
    fp32 = Pix2PixModel(gen)
    int8 = Pix2PixModel(gen, precision="int8")
    int8.int8 = cal
    tiles = map_like(5, seed=2)
    a, b = run_batch(fp32, tiles), run_batch(int8, tiles)
    assert a.shape == b.shape and np.isfinite(b).all()
    assert np.abs(a - b).mean() < 0.03  # measured ≈ 0.005 on [-1, 1]
    assert np.abs(a - b).max() > 0  # it is really another computation
    # Static ranges: a tile's output does not depend on its batch-mates.
    alone = run_batch(int8, tiles[3:4])
    assert np.array_equal(alone[0], b[3])


def test_int8_outputs_do_not_depend_on_leftover_memory(calibrated):
    """Same input, same output, whatever the freed memory the kernels are given holds
    (PyTorch's quantised InstanceNorm on a small channels-last input reads memory it
    never wrote)."""
    gen, cal = calibrated
    q = quantize(gen, cal)
    x = torch.from_numpy(map_like(8, seed=5)).float() / 127.5 - 1
    outs = []
    with torch.no_grad():
        for fill in (0.0, 7.0, -3.0, 100.0):
            junk = [torch.full((1 << 20,), fill) for _ in range(10)]
            del junk
            outs.append(q(x))
    assert all(torch.equal(outs[0], o) for o in outs[1:])


def test_default_model_int8_tile_is_the_same_alone_and_in_a_batch():
    """The shipped model at its real widths: PyTorch's quantised InstanceNorm on a
    channels-last batch rounded some outputs differently from the same tile alone (up to
    0.47 on [-1, 1]; the width-8 model above did not show it)."""
    ckpt = load_checkpoint(geo_pix2pix.model.load.default_model_path())
    q = quantize(ckpt.build_generator().eval(), ckpt.int8)
    x = torch.from_numpy(map_like(3, seed=6)).float() / 127.5 - 1
    with torch.no_grad():
        batch = q(x)
        for i in range(len(x)):
            assert torch.equal(q(x[i : i + 1])[0], batch[i]), f"tile {i}"


def test_calibration_travels_in_the_checkpoint(tmp_path, calibrated):
    gen, cal = calibrated
    path = save_checkpoint(tmp_path / "m.pt", gen, int8=cal)
    ckpt = load_checkpoint(path)
    assert ckpt.int8["tiles"] == 8 and set(ckpt.int8["observers"]) == set(cal["observers"])
    model = geo_pix2pix.load_model(path, precision="int8")
    assert model.precision == "int8" and model.identity.endswith("-int8")
    direct = Pix2PixModel(gen, precision="int8")
    direct.int8 = cal
    tiles = map_like(2, seed=3)
    assert np.array_equal(run_batch(model, tiles), run_batch(direct, tiles))


def test_uncalibrated_checkpoint_is_a_clear_error(tmp_path, calibrated):
    gen, _ = calibrated
    path = save_checkpoint(tmp_path / "plain.pt", gen)
    with pytest.raises(CheckpointError, match="no int8 calibration: run 'geo-pix2pix calibrate"):
        geo_pix2pix.load_model(path, precision="int8")


def test_calibration_of_another_network_is_refused(calibrated):
    _, cal = calibrated
    other = Generator(base_width=8, norm="batch", num_downs=7).eval()
    with pytest.raises(CheckpointError, match="made for another network"):
        quantize(other, cal)


def test_calibration_of_an_older_format_is_refused(calibrated):
    gen, cal = calibrated
    expected = (r"not one this geo-pix2pix reads \(format 3, backend 'x86'\): "
                r"run 'geo-pix2pix calibrate MAP.tif -w checkpoint -o CALIBRATED.pt' again")
    with pytest.raises(CheckpointError, match=expected):
        quantize(gen, {**cal, "format": 1})


def test_int8_engine_keeps_the_map_and_the_interleave_in_float(calibrated):
    """The input reaches the float layers unquantised, the graph is channels-last, and
    each sub-pixel interleave runs on float values (one dequantise, one quantise)."""
    gen, cal = calibrated
    q = quantize(gen, cal)
    nodes = list(q.graph.nodes)
    first_call = next(n for n in nodes if n.op != "placeholder")
    assert "quantize" not in str(first_call.target), first_call
    quantises = [n for n in nodes if n.target is torch.quantize_per_tensor]
    # the two float layers' outputs (conv input, skip) and one after each interleave
    assert len(quantises) == 2 + len(gen.ups) + 1
    x = torch.from_numpy(map_like(1, seed=4)).float() / 127.5 - 1
    with torch.no_grad():
        assert q(x).shape == x.shape


def test_cli_calibrate_then_render_int8(tmp_path, make_raster, calibrated):
    gen, _ = calibrated
    weights = save_checkpoint(tmp_path / "plain.pt", gen)
    maps = make_raster(300, 420, data=map_like(1, seed=4, size=512)[0, :, :300, :420])
    out = tmp_path / "calibrated.pt"
    r = cli("-q", "calibrate", maps, "-w", weights, "-o", out, "--tiles", "4")
    assert r.exit_code == 0, r.output
    assert load_checkpoint(out).int8["tiles"] == 4
    r = cli("-q", "render", maps, tmp_path / "int8.tif", "-w", out, "--precision", "int8")
    assert r.exit_code == 0, r.output
    r = cli("-q", "render", maps, tmp_path / "fp32.tif", "-w", out)
    assert r.exit_code == 0, r.output
    with rasterio.open(tmp_path / "int8.tif") as a, rasterio.open(tmp_path / "fp32.tif") as b:
        assert a.crs == b.crs and a.transform == b.transform
        diff = np.abs(a.read().astype(int) - b.read().astype(int))
    assert diff.mean() < 8  # 8-bit levels


def test_calibration_reads_only_the_tiles_it_uses(make_raster):
    from geo_pix2pix.io.read import map_tiles

    data = map_like(1, seed=5, size=1024)[0]
    path = make_raster(1024, 1024, data=data)  # a 4 × 4 grid of tiles
    assert len(list(map_tiles(path))) == 16
    picked = list(map_tiles(path, limit=3))  # first, middle and last grid positions
    assert len(picked) == 3
    assert np.array_equal(picked[0], data[:, :256, :256]) and np.array_equal(picked[-1], data[:, 768:, 768:])


def test_cli_int8_without_calibration_is_one_line(tmp_path, make_raster, calibrated):
    gen, _ = calibrated
    weights = save_checkpoint(tmp_path / "plain.pt", gen)
    r = cli("render", make_raster(64, 64), tmp_path / "o.tif", "-w", weights, "--precision", "int8")
    assert_user_error(r, "holds no int8 calibration")
    assert not (tmp_path / "o.tif").exists()


def test_cli_calibrate_refuses_empty_input_and_existing_output(tmp_path, calibrated):
    gen, _ = calibrated
    weights = save_checkpoint(tmp_path / "plain.pt", gen)
    r = cli("calibrate", tmp_path / "missing.tif", "-w", weights, "-o", tmp_path / "c.pt")
    assert r.exit_code == 1 and "missing.tif" in r.output
    (tmp_path / "c.pt").write_bytes(b"keep me")
    r = cli("calibrate", tmp_path / "x.tif", "-w", weights, "-o", tmp_path / "c.pt")
    assert_user_error(r, "--overwrite")
    assert (tmp_path / "c.pt").read_bytes() == b"keep me"


def test_int8_leaves_the_processs_quantised_engine_as_it_was(calibrated, monkeypatch):
    gen, cal = calibrated
    other = next((e for e in torch.backends.quantized.supported_engines if e not in ("x86", "none")), None)
    if other is None:
        pytest.skip("this PyTorch has one quantised engine")
    monkeypatch.setattr(torch.backends.quantized, "engine", other)
    int8 = Pix2PixModel(gen, precision="int8")
    int8.int8 = cal
    assert np.isfinite(run_batch(int8, map_like(1, seed=6))).all()
    assert torch.backends.quantized.engine == other
