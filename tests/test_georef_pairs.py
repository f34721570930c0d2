"""RasterPairs: a UTM map and a Web Mercator aerial of one area, made in code, aligned
onto the map's grid and cut into training tiles."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.transform import from_origin
from rasterio.warp import transform as warp_transform
from rasterio.warp import transform_bounds

from geo_pix2pix.cli.main import main
from geo_pix2pix.errors import DatasetError, ResolutionWarning
from geo_pix2pix.model.checkpoints import load_checkpoint
from geo_pix2pix.model.networks import DiscriminatorConfig, GeneratorConfig
from geo_pix2pix.train.data import Jitter, JitteredPairs
from geo_pix2pix.train.pairs import RasterPairs
from geo_pix2pix.train.trainer import TrainConfig, Trainer

MAP_CRS, AERIAL_CRS = "EPSG:32635", "EPSG:3857"
WEST, NORTH, RES, SIZE = 385_000.0, 6_672_000.0, 2.0, 600  # a 1.2 km map at 2 m (Helsinki)
SQUARE = (WEST + 400, WEST + 480, NORTH - 480, NORTH - 400)  # x0, x1, y0, y1 (UTM metres)
SQUARE_PX = (200, 240, 200, 240)  # the same square in map pixels: c0, c1, r0, r1
MAP_BG, MAP_SQUARE = (230, 228, 220), (200, 30, 30)


def write_map(path, nodata_box=None, paletted=False):
    """The map: a plain background with a red square; optionally a nodata box (r0, r1, c0, c1)."""
    index = np.zeros((SIZE, SIZE), np.uint8)
    c0, c1, r0, r1 = SQUARE_PX
    index[r0:r1, c0:c1] = 1
    colours = np.array([MAP_BG, MAP_SQUARE], np.uint8)
    profile = dict(driver="GTiff", width=SIZE, height=SIZE, dtype="uint8", crs=MAP_CRS,
                   transform=from_origin(WEST, NORTH, RES, RES))
    if paletted:
        with rasterio.open(path, "w", count=1, **profile) as ds:
            ds.write(index + 1, 1)
            ds.write_colormap(1, {0: (0, 0, 0, 255), 1: (*MAP_BG, 255), 2: (*MAP_SQUARE, 255)})
        return path
    data = colours[index].transpose(2, 0, 1).copy()
    if nodata_box is not None:
        r0, r1, c0, c1 = nodata_box
        data[:, r0:r1, c0:c1] = 0
    with rasterio.open(path, "w", count=3, nodata=0 if nodata_box else None, **profile) as ds:
        ds.write(data)
    return path


def expected_aerial(x, y):
    """The aerial as a function of UTM position: an R/G ramp, white on the square."""
    r = 40 + 150 * (x - WEST) / 1200
    g = 40 + 150 * (NORTH - y) / 1200
    b = np.full_like(r, 60.0)
    inside = (x >= SQUARE[0]) & (x < SQUARE[1]) & (y >= SQUARE[2]) & (y < SQUARE[3])
    return np.where(inside, 250, np.stack([r, g, b])).clip(1, 255)


def write_aerial(path, utm_box=(WEST - 100, WEST + 1300, NORTH - 1300, NORTH + 100), res=3.0,
                 hole=None, crs=AERIAL_CRS):
    """The aerial in Web Mercator (``res`` Mercator metres, ~res/2 true metres at 60° N)
    covering ``utm_box``; ``hole`` is a UTM box (x0, x1, y0, y1) of nodata."""
    left, bottom, right, top = transform_bounds(MAP_CRS, crs, utm_box[0], utm_box[2], utm_box[1], utm_box[3])
    width, height = int(np.ceil((right - left) / res)), int(np.ceil((top - bottom) / res))
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    xm, ym = left + cols.ravel() * res, top - rows.ravel() * res
    xu, yu = (np.array(v).reshape(height, width) for v in warp_transform(crs, MAP_CRS, xm, ym))
    data = np.rint(expected_aerial(xu, yu)).astype(np.uint8)
    if hole is not None:
        x0, x1, y0, y1 = hole
        data[:, (xu >= x0) & (xu < x1) & (yu >= y0) & (yu < y1)] = 0
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=3, dtype="uint8",
                       crs=crs, transform=from_origin(left, top, res, res),
                       nodata=0 if hole is not None else None) as ds:
        ds.write(data)
    return path


@pytest.fixture
def rasters(tmp_path):
    return write_map(tmp_path / "map.tif"), write_aerial(tmp_path / "aerial.tif")


def test_tiles_align_across_crs_and_resolution(rasters):
    with RasterPairs(*rasters) as pairs:
        assert pairs.ground_resolution == pytest.approx(2.0, rel=0.01)
        assert pairs.crs == MAP_CRS
        assert len(pairs) == 9 and pairs.names[0] == "r0000c0000"  # 3 × 3 tiles of 286 px
        i = pairs.names.index("r0001c0001")
        m, a = pairs[i]
        assert m.shape == a.shape == (286, 286, 3) and m.dtype == a.dtype == np.uint8
        assert pairs.size(i) == m.shape[:2]
        chip = pairs.chips[i]
        # The square, red on the map and white on the aerial, is at the same pixels.
        on_map = (m == MAP_SQUARE).all(axis=-1)
        on_aerial = (a > 200).all(axis=-1)
        c0, c1, r0, r1 = SQUARE_PX
        assert on_map.sum() == 40 * 40
        rows, cols = np.nonzero(on_map)
        assert (rows.min(), cols.min()) == (r0 - chip.row_off, c0 - chip.col_off)
        assert (on_map & on_aerial).sum() / (on_map | on_aerial).sum() > 0.9
        ar, ac = np.nonzero(on_aerial)
        assert abs(ar.mean() - rows.mean()) < 0.5 and abs(ac.mean() - cols.mean()) < 0.5
        # Away from the square, the aerial is the known ramp of UTM position.
        t = pairs.transform(i)
        cc, rr = np.meshgrid(np.arange(286) + 0.5, np.arange(286) + 0.5)
        x, y = t.c + cc * t.a, t.f + rr * t.e
        want = expected_aerial(x, y).transpose(1, 2, 0)
        far = ((x < SQUARE[0] - 10) | (x > SQUARE[1] + 10) | (y < SQUARE[2] - 10) | (y > SQUARE[3] + 10))
        assert np.abs(a[far].astype(float) - want[far]).max() <= 1


def test_tiles_with_nodata_in_either_raster_are_skipped(tmp_path):
    map_path = write_map(tmp_path / "map.tif", nodata_box=(0, 100, 0, 100))  # in tile r0c0
    aerial_path = write_aerial(
        tmp_path / "aerial.tif",
        # ends near map column 500, so the tiles of column 2 are not covered
        utm_box=(WEST - 100, WEST + 1000, NORTH - 1300, NORTH + 100),
        hole=(WEST + 100, WEST + 200, NORTH - 940, NORTH - 900),  # map rows 450-470, cols 50-100: r2c0
    )
    with RasterPairs(map_path, aerial_path) as pairs:
        assert pairs.names == ["r0000c0001", "r0001c0000", "r0001c0001", "r0002c0001"]
        assert len(pairs.grid) == 9
        for i in range(len(pairs)):
            m, a = pairs[i]
            assert (m.max(axis=-1) > 0).all() and (a.max(axis=-1) > 0).all()


def test_paletted_map_is_expanded_to_rgb(tmp_path):
    with RasterPairs(write_map(tmp_path / "map.tif", paletted=True), write_aerial(tmp_path / "a.tif"),
                     tile_size=256) as pairs:
        m, _ = pairs[0]
        colours = {tuple(c) for c in m.reshape(-1, 3)}
        assert colours == {MAP_BG, MAP_SQUARE}


def test_tiles_smaller_than_the_crop_are_refused_before_training(rasters):
    with RasterPairs(*rasters, tile_size=200) as pairs:
        with pytest.raises(DatasetError, match="is 200×200 px, smaller than the 256 px training crop"):
            JitteredPairs(pairs, range(len(pairs)), Jitter())
        assert JitteredPairs(pairs, range(len(pairs)), Jitter(load_size=(256, 256), crop_size=128)).sized


def test_coarser_aerial_warns_and_disjoint_rasters_are_refused(tmp_path):
    map_path = write_map(tmp_path / "map.tif")
    with pytest.warns(ResolutionWarning, match="coarser"):
        RasterPairs(map_path, write_aerial(tmp_path / "coarse.tif", res=12.0)).close()
    far = write_aerial(tmp_path / "far.tif", utm_box=(WEST + 5000, WEST + 6000, NORTH - 1000, NORTH))
    with pytest.raises(DatasetError, match="valid in both"):
        RasterPairs(map_path, far)


def test_trainer_runs_on_raster_pairs(rasters, tmp_path):
    with RasterPairs(*rasters) as pairs:
        config = TrainConfig(steps=3, batch_size=2, crop_size=256, val_fraction=0,
                             ground_resolution=pairs.ground_resolution)
        trainer = Trainer(pairs, tmp_path / "run", config,
                          GeneratorConfig(base_width=4, norm="instance"),
                          DiscriminatorConfig(base_width=4, norm="instance"), device="cpu")
        final = trainer.fit()
    ckpt = load_checkpoint(final)
    assert ckpt.provenance["steps"] == 3 and ckpt.provenance["train_tiles"] == 9
    assert ckpt.ground_resolution == pytest.approx(2.0, rel=0.01)
    assert (tmp_path / "run" / "last.pt").exists()


def test_cli_train_layout_rasters(rasters, tmp_path, monkeypatch):
    # bfloat16 mixed precision as on a CPU that has it (it runs, slowly, on any CPU)
    monkeypatch.setattr("geo_pix2pix.model.devices.cpu_has_native_bf16", lambda: True)
    out = tmp_path / "run"
    result = CliRunner().invoke(main, [
        "-q", "train", str(rasters[0]), str(out), "--layout", "rasters", "--aerial", str(rasters[1]),
        "--steps", "2", "-b", "2", "--width", "4", "--d-width", "4", "--val-fraction", "0",
        "--device", "cpu"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    ckpt = load_checkpoint(out / "model.pt")
    assert ckpt.ground_resolution == pytest.approx(2.0, rel=0.01)
    assert ckpt.provenance["layout"] == "rasters"
    assert ckpt.provenance["precision"] == "bfloat16 mixed"
    result = CliRunner().invoke(main, [
        "-q", "train", str(rasters[0]), str(tmp_path / "fp32"), "--layout", "rasters", "--aerial", str(rasters[1]),
        "--steps", "1", "--width", "4", "--d-width", "4", "--val-fraction", "0", "--device", "cpu", "--no-amp"],
        catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert load_checkpoint(tmp_path / "fp32" / "model.pt").provenance["precision"] == "float32"
