"""The render pipeline end to end, on rasters made in code and opened by rasterio."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine

from geo_pix2pix import NotGeoreferencedWarning, render
from geo_pix2pix.errors import OutputExistsError
from geo_pix2pix.model.load import Pix2PixModel


@pytest.mark.parametrize(
    "height,width,overlap,crs",
    [
        (1, 1, 64, "EPSG:3857"),
        (255, 257, 64, "EPSG:32635"),
        (700, 523, 0, "EPSG:4326"),
        (700, 523, 100, "EPSG:3857"),
        (1000, 3000, 64, "EPSG:32635"),
        (300, 40, 255, "EPSG:4326"),
    ],
)
def test_identity_round_trip_is_exact(make_raster, tmp_path, identity, height, width, overlap, crs):
    src = make_raster(height, width, crs=crs, seed=height + width)
    dst = tmp_path / "out.tif"
    render(src, dst, model=identity, overlap=overlap, batch_size=5)
    with rasterio.open(src) as a, rasterio.open(dst) as b:
        assert np.array_equal(a.read(), b.read())
        assert b.crs == a.crs
        assert b.transform == a.transform
        assert (b.width, b.height) == (a.width, a.height)
        assert b.nodata == a.nodata
        assert b.dtypes == ("uint8",) * 3


def test_identity_round_trip_keeps_nodata(make_raster, tmp_path, identity):
    rng = np.random.default_rng(3)
    data = rng.integers(1, 256, (3, 900, 700), dtype=np.uint8)
    data[:, :400, :] = 0  # a nodata band across the top: whole tiles of nodata
    data[:, 700:, 500:] = 0
    data[0, 800, 100] = 0  # nodata in one band only: still a valid pixel
    src = make_raster(900, 700, data=data, nodata=0)
    dst = tmp_path / "out.tif"
    result = render(src, dst, model=identity)
    with rasterio.open(dst) as b:
        assert b.nodata == 0
        assert np.array_equal(b.read(), data)
        assert np.array_equal(b.dataset_mask() > 0, (data != 0).any(axis=0))
    assert result.tiles_rendered < result.tiles_total  # the all-nodata tiles were skipped


def test_all_nodata_raster_calls_no_model(make_raster, tmp_path):
    class Exploding(torch.nn.Module):
        def forward(self, x):
            raise AssertionError("the model must not be called for an all-nodata raster")

    src = make_raster(300, 300, data=np.zeros((3, 300, 300), np.uint8), nodata=0)
    dst = tmp_path / "out.tif"
    result = render(src, dst, model=Exploding())
    assert result.tiles_rendered == 0
    with rasterio.open(dst) as b:
        assert b.nodata == 0
        assert not b.dataset_mask().any()


def test_rgba_alpha_is_kept(make_raster, tmp_path, identity):
    rng = np.random.default_rng(5)
    data = rng.integers(0, 256, (4, 300, 280), dtype=np.uint8)
    data[3] = 255
    data[3, 100:150, :] = 0
    src = make_raster(300, 280, count=4, data=data, photometric="RGB", alpha="YES")
    dst = tmp_path / "out.tif"
    render(src, dst, model=identity)
    with rasterio.open(dst) as b:
        out = b.read()
        assert b.count == 4
        assert b.colorinterp[3] == rasterio.enums.ColorInterp.alpha
        assert np.array_equal(out[3], data[3])
        valid = data[3] > 0
        assert np.array_equal(out[:3][:, valid], data[:3][:, valid])


def test_paletted_and_grey_inputs_expand_to_rgb(make_raster, tmp_path, identity):
    rng = np.random.default_rng(7)
    index = rng.integers(0, 4, (1, 200, 260), dtype=np.uint8)
    colors = {0: (240, 238, 232, 255), 1: (170, 210, 160, 255), 2: (160, 190, 230, 255), 3: (255, 255, 255, 255)}
    path = make_raster(200, 260, count=1, data=index, photometric="palette")
    with rasterio.open(path, "r+") as ds:
        ds.write_colormap(1, colors)
    dst = tmp_path / "pal.tif"
    render(path, dst, model=identity)
    lut = np.array([colors[i][:3] for i in range(4)], np.uint8)
    with rasterio.open(dst) as b:
        assert np.array_equal(b.read(), lut[index[0]].transpose(2, 0, 1))

    grey = make_raster(90, 70, count=1, seed=1)
    dst2 = tmp_path / "grey.tif"
    render(grey, dst2, model=identity)
    with rasterio.open(grey) as a, rasterio.open(dst2) as b:
        assert np.array_equal(b.read(), np.repeat(a.read(), 3, axis=0))


def test_plain_png_in_png_out(tmp_path, identity):
    from PIL import Image

    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    src = tmp_path / "map.png"
    Image.fromarray(img).save(src)
    dst = tmp_path / "aerial.png"
    with pytest.warns(NotGeoreferencedWarning):
        render(src, dst, model=identity)
    assert np.array_equal(np.asarray(Image.open(dst)), img)
    assert not (tmp_path / "aerial.png.aux.xml").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aerial.png", "map.png"]


def test_batch_size_does_not_change_output(make_raster, tmp_path, tiny_generator):
    src = make_raster(600, 700, seed=11)
    outs = []
    for bs in (1, 7):
        dst = tmp_path / f"bs{bs}.tif"
        render(src, dst, model=tiny_generator, batch_size=bs)
        with rasterio.open(dst) as ds:
            outs.append(ds.read())
    assert np.array_equal(outs[0], outs[1])


def test_render_is_deterministic_across_runs(make_raster, tmp_path, tiny_generator):
    src = make_raster(300, 300, seed=4)
    render(src, tmp_path / "a.tif", model=tiny_generator)
    render(src, tmp_path / "b.tif", model=tiny_generator)
    with rasterio.open(tmp_path / "a.tif") as a, rasterio.open(tmp_path / "b.tif") as b:
        assert np.array_equal(a.read(), b.read())


def test_no_seams_at_tile_borders(make_raster, tmp_path):
    """Differences across tile borders are no larger than differences inside tiles."""
    from geo_pix2pix.grid.tiling import TileGrid
    from geo_pix2pix.model.networks import Generator

    torch.manual_seed(0)
    gen = Generator(base_width=8, norm="instance").eval()
    # A smooth map-like input: seams would stand out against it.
    yy, xx = np.mgrid[0:768, 0:768]
    base = (128 + 60 * np.sin(xx / 37.0) * np.cos(yy / 53.0)).astype(np.uint8)
    data = np.stack([base, np.roll(base, 40, 0), np.roll(base, 40, 1)])
    src = make_raster(768, 768, data=data)
    dst = tmp_path / "out.tif"
    render(src, dst, model=gen, overlap=64)
    with rasterio.open(dst) as ds:
        out = ds.read().astype(np.float64).mean(axis=0)
    grid = TileGrid(768, 768, 256, 64)
    # Columns where a tile starts or ends: where a seam would be.
    borders = sorted({x for x in grid.col_starts[1:]} | {x + 256 for x in grid.col_starts[:-1]})
    step = np.abs(np.diff(out, axis=1))  # step[:, j] = |out[:, j+1] - out[:, j]|
    across = np.mean([step[:, b - 1].mean() for b in borders if 0 < b < 768])
    inside = step.mean()
    assert across <= 1.25 * inside, (across, inside)


class ScaledIdentity(Pix2PixModel):
    """An identity 'model' that claims a ground resolution, to exercise resampling."""

    def __init__(self, resolution):
        from geo_pix2pix.model.networks import Generator

        super().__init__(Generator(base_width=1, num_downs=5, norm="instance"))
        self.ground_resolution = resolution
        self.tile_multiple = 1

    def forward(self, x):
        return x


def test_resampling_to_model_resolution_and_back(make_raster, tmp_path):
    # A smooth image at 1 m/px; the model works at 2 m/px.
    yy, xx = np.mgrid[0:400, 0:300]
    base = (128 + 80 * np.sin(xx / 25.0) * np.cos(yy / 31.0)).astype(np.uint8)
    src = make_raster(400, 300, crs="EPSG:32635", data=np.stack([base] * 3), res=1.0)
    dst = tmp_path / "out.tif"
    result = render(src, dst, model=ScaledIdentity(2.0))
    assert result.resampled
    assert result.input_resolution == pytest.approx(1.0, rel=0.01)
    with rasterio.open(src) as a, rasterio.open(dst) as b:
        assert b.transform == a.transform and b.crs == a.crs and b.shape == a.shape
        diff = np.abs(b.read().astype(int) - a.read().astype(int))
        assert diff.mean() < 3  # down and up again at 2×: smooth content survives

    dst2 = tmp_path / "model_grid.tif"
    render(src, dst2, model=ScaledIdentity(2.0), model_grid=True)
    with rasterio.open(dst2) as b:
        # UTM's point scale makes 1 grid metre ≈ 0.9997 ground metres here.
        assert abs(b.height - 200) <= 1 and abs(b.width - 150) <= 1
        assert b.transform.a == pytest.approx(2.0, rel=0.01)
        assert b.crs == "EPSG:32635"


def test_ground_resolution_of_web_mercator_is_ground_metres():
    # 1 "metre" of EPSG:3857 at 60° N is 0.5 m on the ground.
    import mercantile

    from geo_pix2pix.io.geodesy import ground_resolution

    x, y = mercantile.xy(25.0, 60.0)
    t = Affine(1.0, 0, x - 50, 0, -1.0, y + 50)
    assert ground_resolution("EPSG:3857", t, 100, 100) == pytest.approx(0.5, rel=0.01)
    t = Affine(1e-5, 0, 25.0, 0, -1e-5, 60.0)
    assert ground_resolution("EPSG:4326", t, 10, 10) == pytest.approx((1.112 * 0.5 + 1.112) / 2, rel=0.01)


def test_existing_output_is_left_untouched(make_raster, tmp_path, identity):
    src = make_raster(50, 50)
    dst = tmp_path / "out.tif"
    dst.write_bytes(b"precious")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        render(src, dst, model=identity)
    assert dst.read_bytes() == b"precious"
    render(src, dst, model=identity, overwrite=True)
    with rasterio.open(dst) as b:
        assert b.width == 50


def test_failure_leaves_no_partial_output(make_raster, tmp_path):
    class FailsLater(torch.nn.Module):
        calls = 0

        def forward(self, x):
            FailsLater.calls += 1
            if FailsLater.calls > 1:
                raise RuntimeError("boom")
            return x

    src = make_raster(900, 900)
    dst = tmp_path / "out.tif"
    with pytest.raises(RuntimeError, match="boom"):
        render(src, dst, model=FailsLater(), batch_size=8)
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]


def test_cog_output_is_valid(make_raster, tmp_path, identity):
    src = make_raster(1100, 900)
    dst = tmp_path / "out.tif"
    render(src, dst, model=identity, cog=True)
    with rasterio.open(dst) as b:
        assert b.driver == "GTiff"
        assert b.overviews(1)
        assert b.profile.get("tiled")
        layout = b.tags(ns="IMAGE_STRUCTURE").get("LAYOUT")
        assert layout == "COG"
    with rasterio.open(src) as a, rasterio.open(dst) as b:
        assert np.array_equal(a.read(), b.read())


@pytest.mark.parametrize("compress,cog", [(None, False), ("deflate", False), ("LZW", False), ("none", False),
                                          (None, True), ("deflate", True)])
def test_compression_choices_round_trip(make_raster, tmp_path, identity, compress, cog):
    """zstd by default, the others on request, lossless ones exact; COG too."""
    src = make_raster(700, 600, seed=5)
    dst = tmp_path / "out.tif"
    render(src, dst, model=identity, compress=compress, cog=cog)
    with rasterio.open(src) as a, rasterio.open(dst) as b:
        expected = "zstd" if compress is None else compress.lower()
        assert (b.compression.name.lower() if b.compression else "none") == expected
        assert np.array_equal(a.read(), b.read())
        assert b.overviews(1)


def test_cog_predictor_and_a_single_lossy_encoding(make_raster, tmp_path, identity):
    """A COG gets the horizontal predictor as the GeoTIFF output does, and JPEG output is
    encoded once: the files on the way to it are lossless."""
    src = make_raster(600, 700, seed=8)
    render(src, tmp_path / "cog.tif", model=identity, cog=True, compress="deflate")
    with rasterio.open(tmp_path / "cog.tif") as b:
        assert b.tags(ns="IMAGE_STRUCTURE").get("PREDICTOR") == "2"
    pixels = []
    for cog in (False, True):
        dst = tmp_path / f"jpeg-{cog}.tif"
        render(src, dst, model=identity, cog=cog, compress="jpeg")
        with rasterio.open(dst) as b:
            assert b.compression.name.lower() == "jpeg"
            pixels.append(b.read())
    # Both encode the same pixels once, in whole 16-pixel JPEG blocks: the same result
    # (with a JPEG intermediate, the COG's pixels were encoded twice and differed).
    assert np.array_equal(*pixels)


def test_unknown_compression_is_refused_before_any_work(make_raster, tmp_path, identity):
    from geo_pix2pix.errors import OptionError

    src = make_raster(300, 300)
    with pytest.raises(OptionError, match=r"--compress 'webp' is not one of zstd, deflate, .*: choose one"):
        render(src, tmp_path / "out.tif", model=identity, compress="webp")
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]


def test_compression_levels_are_the_fast_ones(make_raster):
    """Level 1 for zstd and deflate: GDAL's defaults (9, 6) compress synthetic imagery
    no better at several times the CPU time (docs/performance.md)."""
    from geo_pix2pix.io.read import open_map_raster
    from geo_pix2pix.io.write import output_profile

    with open_map_raster(make_raster(64, 64)) as raster:
        def profile(c):
            return output_profile(raster, width=64, height=64, transform=raster.dataset.transform,
                                  crs=raster.dataset.crs, **({} if c is None else {"compress": c}))

        assert profile(None)["compress"] == "zstd" and profile(None)["zstd_level"] == 1
        assert profile(None)["predictor"] == 2
        assert profile("deflate")["zlevel"] == 1
        assert "predictor" not in profile("jpeg") and profile("jpeg")["photometric"] == "YCbCr"


@pytest.mark.parametrize("nodata", [None, 0])
def test_background_writer_writes_the_same_file(tmp_path, make_raster, nodata):
    """The writer thread (used when the model runs on a GPU or a cluster) gives the same
    pixels and mask as writing in the caller's thread, and re-raises its errors."""
    from geo_pix2pix.io.read import open_map_raster
    from geo_pix2pix.io.write import _BlockRowWriter, open_output, output_profile

    src = make_raster(700, 300, nodata=nodata)
    rng = np.random.default_rng(1)
    rows = rng.integers(0, 256, (3, 700, 300), dtype=np.uint8)
    valid = rng.random((700, 300)) > 0.1
    outputs = []
    with open_map_raster(src) as raster:
        for background in (False, True):
            path = tmp_path / f"out-{background}.tif"
            profile = output_profile(raster, width=300, height=700, transform=raster.dataset.transform,
                                     crs=raster.dataset.crs)
            with open_output(path, profile) as out:
                writer = _BlockRowWriter(out, raster, background=background)
                try:
                    for first in range(0, 700, 100):  # rows arrive in pieces that straddle blocks
                        writer.add(first, rows[:, first : first + 100], valid[first : first + 100])
                    writer.flush()
                finally:
                    writer.close()
            with rasterio.open(path) as ds:
                outputs.append((ds.read(), ds.read_masks(1)))
        assert np.array_equal(outputs[0][0], outputs[1][0]) and np.array_equal(outputs[0][1], outputs[1][1])
        if nodata is not None:  # the rows' own mask is what is written
            assert np.array_equal((outputs[0][0] != 0).any(axis=0), valid)

        class Broken:
            block_shapes = [(256, 256)]
            count, nodata = 3, None

            def write(self, *a, **k):
                raise OSError("disk full")

            write_mask = write

        writer = _BlockRowWriter(Broken(), raster, background=True)
        writer.add(0, rows[:, :256], valid[:256])  # a whole block row: handed to the thread
        with pytest.raises(OSError, match="disk full"):
            writer.close()


def _gdal_cache_max():
    """A function returning GDAL's block-cache limit in bytes, from the libgdal rasterio
    loaded (None when that library cannot be found, e.g. rasterio on a system GDAL)."""
    import ctypes
    import glob
    import os

    libs = glob.glob(os.path.join(os.path.dirname(rasterio.__file__) + ".libs", "libgdal*"))
    if not libs:
        return None
    gdal = ctypes.CDLL(libs[0])
    gdal.GDALGetCacheMax64.restype = ctypes.c_int64
    return gdal.GDALGetCacheMax64


def test_render_sets_gdal_cache_in_bytes(make_raster, tmp_path, monkeypatch):
    """rasterio hands an integer GDAL_CACHEMAX to GDAL as bytes: render must give bytes
    (sessions 1-2 gave 16 meaning MB, and ran with a 16-byte cache)."""
    from geo_pix2pix.io.write import GDAL_CACHE_BYTES

    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)  # a user's setting wins over render's
    getter = _gdal_cache_max()
    if getter is None:
        pytest.skip("rasterio's libgdal not found")
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x):
            seen.append(getter())
            return x

    render(make_raster(300, 300), tmp_path / "out.tif", model=Spy())
    assert seen and set(seen) == {GDAL_CACHE_BYTES} and GDAL_CACHE_BYTES == 1 << 20
