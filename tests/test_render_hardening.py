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
from geo_pix2pix.errors import ModelOutputError
from geo_pix2pix.model.checkpoints import save_checkpoint
from geo_pix2pix.model.networks import Generator

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "geo_pix2pix", *map(str, args)], capture_output=True,
                          text=True, env=ENV, cwd=cwd, timeout=300)


class NaNModel(torch.nn.Module):
    """An API model that returns NaN (as a diverged network does)."""

    def forward(self, x):
        return x * float("nan")


class InfModel(torch.nn.Module):
    """An API model whose outputs overflow (a float16 network past its range)."""

    def forward(self, x):
        return x / 0.0


@pytest.mark.parametrize("model", [NaNModel(), InfModel()], ids=["nan", "inf"])
def test_nan_from_an_api_model_is_an_error_and_leaves_nothing(make_raster, tmp_path, model):
    src = make_raster(300, 300)
    dst = tmp_path / "out.tif"
    with pytest.raises(ModelOutputError, match=r"the model returned NaN or infinite values for \d+ of \d+ tiles"):
        render(src, dst, model=model)
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]


@pytest.mark.slow
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
    pytest.param(100000, 1, ".tif", False, marks=pytest.mark.slow),
    pytest.param(1, 100000, ".tif", False, marks=pytest.mark.slow),
])
def test_narrow_rasters_render_with_the_overviews_their_shape_allows(make_raster, tmp_path, identity,
                                                                     height, width, suffix, cog):
    import rasterio

    from geo_pix2pix.io.write import overview_factors

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


@pytest.mark.slow
def test_a_narrow_raster_through_the_cli(make_raster, tmp_path):
    src = make_raster(2000, 3)
    r = run_cli("render", src, tmp_path / "out.tif", "--weights", _tiny_weights(tmp_path))
    assert r.returncode == 0, r.stderr


def _tiny_weights(tmp_path):
    torch.manual_seed(0)
    return save_checkpoint(tmp_path / "tiny.pt", Generator(base_width=4, norm="instance"))


class Exploding(torch.nn.Module):
    def forward(self, x):
        raise AssertionError("refused before the render: the model must not run")


def _at(res, inner=None):
    from tilesdata import AtResolution, Identity

    return AtResolution(inner or Identity(), res)


# -- 9: GCPs ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_gcp_georeferenced_input_keeps_its_gcps(tmp_path, identity, suffix):
    import rasterio
    from rasterio.control import GroundControlPoint

    from geo_pix2pix import NotGeoreferencedWarning

    gcps = [GroundControlPoint(0, 0, 385_000, 6_672_000), GroundControlPoint(0, 300, 385_600, 6_672_050),
            GroundControlPoint(200, 0, 384_950, 6_671_600), GroundControlPoint(200, 300, 385_550, 6_671_650)]
    src = tmp_path / "gcp.tif"
    with rasterio.open(src, "w", driver="GTiff", width=300, height=200, count=3, dtype="uint8", gcps=gcps,
                       crs="EPSG:32635") as ds:
        ds.write(np.random.default_rng(0).integers(0, 256, (3, 200, 300), dtype=np.uint8))
    dst = tmp_path / f"out{suffix}"
    with pytest.warns(NotGeoreferencedWarning, match="georeferenced by 4 ground control points in EPSG:32635") as w:
        render(src, dst, model=identity)
    assert not any("no georeference" in str(x.message) for x in w)
    with rasterio.open(dst) as out:
        got, crs = out.gcps
        assert crs == "EPSG:32635"
        assert [(g.row, g.col, g.x, g.y) for g in got] == [(g.row, g.col, g.x, g.y) for g in gcps]


# -- 13: the right cause, before the render --------------------------------------------------------
def test_webp_size_limit_is_named_before_the_render(make_raster, tmp_path):
    from geo_pix2pix.errors import OutputPathError

    src = make_raster(2, 16384)
    with pytest.raises(OutputPathError, match=r"WEBP images are at most 16383 × 16383 pixels and this one is "
                                              r"16384 × 2: write \.tif"):
        render(src, tmp_path / "out.webp", model=Exploding())
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]


def test_jpeg_of_a_transparent_input_is_refused_before_the_render(make_raster, tmp_path):
    from geo_pix2pix.errors import OutputPathError

    data = np.full((4, 30, 30), 200, np.uint8)
    src = make_raster(30, 30, count=4, data=data, photometric="RGB", alpha="YES")
    with pytest.raises(OutputPathError, match="JPEG has no alpha"):
        render(src, tmp_path / "out.jpg", model=Exploding())


def test_a_tiny_model_resolution_is_named_as_the_cause(make_raster, tmp_path):
    from geo_pix2pix.errors import OutputPathError

    src = make_raster(300, 300)
    with pytest.raises(OutputPathError, match=r"the model's ground resolution \(0\.0001 m/px\) is [\d.e+]+× finer "
                                              r"than the input's \(0\.994 m/px\).*check the model's ground resolution"):
        render(src, tmp_path / "out.tif", model=_at(1e-4, Exploding()))
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]


def _vrt(tmp_path, make_raster):
    import rasterio

    src = make_raster(200, 300, name="part.tif")
    with rasterio.open(src) as ds:
        gt, wkt = ", ".join(map(str, ds.transform.to_gdal())), ds.crs.to_wkt()
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource><SourceFilename relativeToVRT="1">part.tif'
        f"</SourceFilename><SourceBand>{b}</SourceBand></SimpleSource></VRTRasterBand>" for b in (1, 2, 3))
    vrt = tmp_path / "map.vrt"
    vrt.write_text(f'<VRTDataset rasterXSize="300" rasterYSize="200"><SRS>{wkt}</SRS>'
                   f"<GeoTransform>{gt}</GeoTransform>{bands}</VRTDataset>")
    return vrt, src


def test_a_vrt_with_a_missing_source_names_the_file(make_raster, tmp_path):
    vrt, part = _vrt(tmp_path, make_raster)
    render(vrt, tmp_path / "ok.tif", model=_at(1.0))
    part.unlink()
    from geo_pix2pix.errors import InputRasterError

    with pytest.raises(InputRasterError) as err:
        render(vrt, tmp_path / "out.tif", model=_at(1.0, Exploding()))
    assert (f"reads the file {str(part)!r}, which does not exist: restore it, or fix its path in 'map.vrt'"
            in str(err.value))
    assert not (tmp_path / "out.tif").exists()


# -- 14: GDAL virtual paths --------------------------------------------------------------------------
def test_vsizip_input_renders(make_raster, tmp_path):
    import zipfile

    import rasterio

    src = make_raster(120, 90, name="map.tif", seed=9)
    archive = tmp_path / "maps.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(src, "maps/map.tif")
    render(f"/vsizip/{archive}/maps/map.tif", tmp_path / "api.tif", model=_at(1.0))
    with rasterio.open(src) as a, rasterio.open(tmp_path / "api.tif") as b:
        assert np.array_equal(a.read(), b.read())
        assert b.crs == a.crs and b.transform == a.transform

    from geo_pix2pix.errors import InputRasterError

    with pytest.raises(InputRasterError, match=r"'/vsizip/.*/maps/nope\.tif' does not exist \(.*\): check the path"):
        render(f"/vsizip/{archive}/maps/nope.tif", tmp_path / "x.tif", model=_at(1.0))


# -- 16: provenance ---------------------------------------------------------------------------------
def test_attribution_version_and_model_are_recorded(make_raster, tmp_path):
    import hashlib

    import rasterio
    from PIL import Image

    from geo_pix2pix import __version__

    src = make_raster(100, 120, seed=4)
    with rasterio.open(src, "r+") as ds:
        ds.update_tags(ATTRIBUTION="© OpenStreetMap contributors, ODbL", SOURCE="Helsinki.osm.pbf",
                       UNRELATED="not carried")
    from geo_pix2pix.model.load import load_model

    weights = _tiny_weights(tmp_path)
    model = load_model(weights, "cpu")
    for suffix in (".tif", ".png", ".jpg"):
        render(src, tmp_path / f"out{suffix}", model=model)
    with rasterio.open(tmp_path / "out.tif") as ds:
        tags = ds.tags()
    assert tags["ATTRIBUTION"] == ("Synthetic aerial imagery generated by geo-pix2pix (not a photograph); "
                                   "map data: © OpenStreetMap contributors, ODbL")
    assert tags["SOURCE"] == "Helsinki.osm.pbf" and "UNRELATED" not in tags
    assert tags["TIFFTAG_SOFTWARE"] == f"geo-pix2pix {__version__}" == f"geo-pix2pix {tags['GEO_PIX2PIX_VERSION']}"
    assert tags["GEO_PIX2PIX_MODEL"] == hashlib.sha256(Path(weights).read_bytes()).hexdigest()
    png = Image.open(tmp_path / "out.png").text  # in the PNG itself, not only in a side file
    assert png["ATTRIBUTION"] == tags["ATTRIBUTION"] and png["GEO_PIX2PIX_MODEL"] == tags["GEO_PIX2PIX_MODEL"]
    with rasterio.open(tmp_path / "out.jpg") as ds:
        exif = ds.tags()
    assert exif["EXIF_Copyright"] == tags["ATTRIBUTION"] and exif["EXIF_Software"] == tags["TIFFTAG_SOFTWARE"]


# -- 18: RGBA ---------------------------------------------------------------------------------------------
def test_rgba_output_uses_gdals_alpha_value(make_raster, tmp_path, identity, caplog):
    import logging

    import rasterio

    data = np.full((4, 40, 40), 180, np.uint8)
    data[3, :10] = 0
    src = make_raster(40, 40, count=4, data=data, photometric="RGB", alpha="YES")
    with caplog.at_level(logging.WARNING):
        render(src, tmp_path / "out.tif", model=_at(1.0))
    assert not [r for r in caplog.records if "ALPHA" in r.getMessage()], caplog.text
    with rasterio.open(tmp_path / "out.tif") as ds:
        assert ds.colorinterp[3] == rasterio.enums.ColorInterp.alpha
        assert (ds.read(4)[:10] == 0).all() and (ds.read(4)[10:] == 255).all()


# -- 19: ground resolution ------------------------------------------------------------------------------
def test_anisotropic_degrees_are_resampled_to_square_ground_pixels(make_raster, tmp_path):
    import rasterio

    from geo_pix2pix.errors import ResolutionWarning

    # 2e-5° at 60.17° N: 1.1 m wide, 2.2 m tall on the ground.
    yy, xx = np.mgrid[0:200, 0:200]
    base = (128 + 60 * np.sin(xx / 20.0) * np.cos(yy / 17.0)).astype(np.uint8)
    src = make_raster(200, 200, crs="EPSG:4326", data=np.stack([base] * 3))
    with pytest.warns(ResolutionWarning, match=r"pixels of 1\.1\d* × 2\.2\d* m on the ground \(not square"):
        result = render(src, tmp_path / "out.tif", model=_at(1.1))
    assert result.resampled
    with rasterio.open(src) as a, rasterio.open(tmp_path / "out.tif") as b:
        assert b.shape == a.shape and b.transform == a.transform
    with pytest.warns(ResolutionWarning):
        render(src, tmp_path / "grid.tif", model=_at(1.1), model_grid=True)
    with rasterio.open(tmp_path / "grid.tif") as b:
        assert abs(b.width - 200) <= 2 and abs(b.height - 400) <= 4  # square 1.1 m pixels: twice as many rows
    with pytest.warns(ResolutionWarning, match=r"the model has no ground resolution, .* without resampling; its "
                                               r"pixels are 1\.1\d* × 2\.2\d* m on the ground, so the model sees "
                                               r"the map stretched 2×"):
        assert not render(src, tmp_path / "plain.tif", model=torch.nn.Identity()).resampled
