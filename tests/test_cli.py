"""The command line, driven through click's runner; outputs opened with rasterio."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner
from clihelpers import assert_user_error

from geo_pix2pix.cli.main import main
from geo_pix2pix.model.checkpoints import save_checkpoint
from geo_pix2pix.model.networks import Generator


@pytest.fixture
def weights(tmp_path):
    torch.manual_seed(0)
    return save_checkpoint(tmp_path / "tiny.pt", Generator(base_width=4, norm="instance"),
                           ground_resolution=2.0)


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result


def test_render_no_overviews_skips_only_the_overviews(make_raster, tmp_path, weights):
    src = make_raster(600, 500, crs="EPSG:32635", res=2.0)
    with_ovr, without = tmp_path / "a.tif", tmp_path / "b.tif"
    assert run("render", src, with_ovr, "--weights", weights).exit_code == 0
    assert run("render", src, without, "--weights", weights, "--no-overviews").exit_code == 0
    with rasterio.open(with_ovr) as a, rasterio.open(without) as b:
        assert a.overviews(1) == [2] and b.overviews(1) == []
        assert b.crs == a.crs and b.transform == a.transform
        assert np.array_equal(a.read(), b.read())
    result = run("render", src, tmp_path / "c.tif", "--weights", weights, "--cog", "--no-overviews")
    assert_user_error(result, "--cog --no-overviews")
    assert not (tmp_path / "c.tif").exists()


def test_render_compress_option(make_raster, tmp_path, weights):
    src = make_raster(300, 300, crs="EPSG:32635", res=2.0)
    assert run("render", src, tmp_path / "d.tif", "--weights", weights, "--compress", "DEFLATE").exit_code == 0
    with rasterio.open(tmp_path / "d.tif") as d:
        assert d.compression.name.lower() == "deflate"
    result = run("render", src, tmp_path / "e.tif", "--weights", weights, "--compress", "gzip")
    assert_user_error(result, "--compress 'gzip' is not one of zstd, deflate, lzw, jpeg, none")
    assert not (tmp_path / "e.tif").exists()


def test_render_writes_a_georeferenced_tiled_geotiff_with_overviews(make_raster, tmp_path, weights):
    data = np.random.default_rng(0).integers(1, 256, (3, 600, 500), dtype=np.uint8)
    data[:, :50, :50] = 0
    src = make_raster(600, 500, crs="EPSG:32635", data=data, nodata=0, res=2.0)
    dst = tmp_path / "out.tif"
    result = run("render", src, dst, "--weights", weights, "--batch-size", 3)
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output
    with rasterio.open(src) as a, rasterio.open(dst) as b:
        assert b.crs == a.crs and b.transform == a.transform
        assert b.dtypes == ("uint8",) * 3 and b.count == 3
        assert b.nodata == 0
        assert b.overviews(1) == [2]
        assert b.profile["tiled"] and b.profile["blockxsize"] == 256
        assert b.compression.name.lower() == "zstd"
        out = b.read()
        assert (out[:, :50, :50] == 0).all()  # nodata kept
        assert (out.reshape(3, -1).max(axis=0)[data.reshape(3, -1).max(axis=0) > 0] > 0).all()


def test_render_refuses_existing_output_and_keeps_it(make_raster, tmp_path, weights):
    src = make_raster(40, 40)
    dst = tmp_path / "out.tif"
    dst.write_bytes(b"keep me")
    result = run("render", src, dst, "--weights", weights)
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: output {str(dst)!r} exists: pass --overwrite (overwrite=True in Python) to replace it"]
    assert dst.read_bytes() == b"keep me"
    assert run("render", src, dst, "--weights", weights, "--overwrite").exit_code == 0


@pytest.mark.parametrize(
    "args,message",
    [
        (["--batch-size", "0"], "--batch-size 0 must be at least 1"),
        (["--batch-size", "-3"], "--batch-size -3 must be at least 1"),
        (["--overlap", "256"], "--overlap 256 must be at least 0 and less than the tile size"),
        (["--device", "cuda"] if not torch.cuda.is_available() else ["--device", "nope"], "device"),
    ],
)
def test_bad_options_are_one_line_errors(make_raster, tmp_path, weights, args, message):
    src = make_raster(40, 40)
    dst = tmp_path / "out.tif"
    result = run("render", src, dst, "--weights", weights, *args)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0]
    assert not dst.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_missing_input_and_bad_weights(tmp_path, make_raster):
    result = run("render", tmp_path / "nope.tif", tmp_path / "out.tif")
    assert result.exit_code == 1 and "does not exist" in result.output
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    result = run("render", make_raster(20, 20), tmp_path / "out.tif", "--weights", bad)
    assert result.exit_code == 1 and "not a readable geo-pix2pix checkpoint" in result.output


def test_version_and_help():
    assert "geo-pix2pix" in run("--version").output
    out = run("render", "--help").output
    assert "--overlap" in out and "--cog" in out


def test_calibrate_takes_the_bands_its_message_asks_for(make_raster, tmp_path, weights):
    """A 5-band map: the error asks for --bands, which calibrate accepts (as render does)."""
    src = make_raster(300, 300, count=5)
    out = tmp_path / "calibrated.pt"
    result = CliRunner().invoke(main, ["calibrate", str(src), "-w", str(weights), "-o", str(out), "--tiles", "2"])
    assert result.exit_code == 1 and "choose the red, green and blue bands with --bands R,G,B" in result.output
    assert not out.exists()
    result = run("-q", "calibrate", src, "-w", weights, "-o", out, "--tiles", "2", "--bands", "3,2,1")
    assert result.exit_code == 0, result.output
    from geo_pix2pix.model.checkpoints import load_checkpoint

    assert load_checkpoint(out).int8["tiles"] == 2
    result = CliRunner().invoke(main, ["calibrate", str(tmp_path), "--layout", "folders", "-w", str(weights),
                                       "-o", str(tmp_path / "x.pt"), "--bands", "1,2,3"])
    assert result.exit_code == 1 and "--bands applies to --layout maps" in result.output
