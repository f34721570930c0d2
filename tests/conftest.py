"""Shared fixtures: tiny rasters made in code, seeded, written to tmp_path."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin


class Identity(torch.nn.Module):
    """Returns its input: tiling + mosaic through it must give the input back exactly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


CRS_GRIDS = {
    # crs: (west, north, pixel size) of a plausible map grid in that CRS
    "EPSG:3857": (2_777_000.0, 8_438_000.0, 2.0),
    "EPSG:32635": (385_000.0, 6_672_000.0, 2.0),  # UTM 35N (Helsinki)
    "EPSG:4326": (24.93, 60.17, 2e-5),
}


@pytest.fixture
def make_raster(tmp_path):
    """Factory: write a seeded GeoTIFF and return its path.

    ``make_raster(height, width, count=3, crs="EPSG:3857", nodata=None, dtype="uint8",
    data=None, name=None, **profile)``
    """
    counter = iter(range(10_000))

    def factory(height=64, width=64, count=3, crs="EPSG:3857", nodata=None, dtype="uint8",
                data=None, name=None, seed=0, res=None, **extra):
        if data is None:
            rng = np.random.default_rng(seed)
            data = rng.integers(0, 256, (count, height, width)).astype(dtype)
        west, north, size = CRS_GRIDS.get(crs, (0.0, 0.0, 1.0)) if crs else (0.0, 0.0, 1.0)
        if res is not None:
            size = res
        profile = dict(driver="GTiff", width=width, height=height, count=count, dtype=dtype,
                       crs=crs, transform=from_origin(west, north, size, size), nodata=nodata)
        if crs is None:
            profile.pop("crs")
            profile.pop("transform")
        profile.update(extra)
        path = tmp_path / (name or f"raster{next(counter)}.tif")
        with rasterio.open(path, "w", **profile) as ds:
            ds.write(data)
        return path

    return factory


@pytest.fixture
def identity():
    return Identity()


@pytest.fixture
def tiny_generator():
    """A small randomly initialised instance-norm generator (fast on the CPU)."""
    from geo_pix2pix.model.networks import Generator

    torch.manual_seed(0)
    return Generator(base_width=8, norm="instance").eval()
