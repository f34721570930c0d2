"""The map tiles int8 calibration observes, chosen by the library for every caller."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from geo_pix2pix.errors import OptionError
from geo_pix2pix.train.calibration import calibration_batches
from geo_pix2pix.train.data import SideBySideFolder, split_names


def test_rasters_give_at_most_limit_tiles_in_batches(make_raster):
    maps = [make_raster(600, 600), make_raster(300, 300)]
    batches = calibration_batches(maps, limit=5)
    assert sum(len(b) for b in batches) == 5
    assert all(b.dtype == np.uint8 and b.shape[1:] == (3, 256, 256) for b in batches)


def test_a_paired_folder_gives_its_training_maps_resized(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (300, 600, 3), dtype=np.uint8)).save(tmp_path / f"{i:02d}.png")
    source = SideBySideFolder(tmp_path)
    train, _ = split_names(source.names, 0.1)
    tiles = np.concatenate(calibration_batches(source, limit=100))
    assert tiles.shape == (len(train), 3, 256, 256)


def test_no_tiles_is_a_clear_error(make_raster):
    empty = make_raster(64, 64, nodata=0, data=np.zeros((3, 64, 64), np.uint8))
    with pytest.raises(OptionError, match=f"no map tiles found in {empty}: give map rasters or images"):
        calibration_batches([empty])
