"""The model's grid: when render resamples the input to the model's ground resolution,
and the ``WarpedVRT`` it reads the input through then.

Pure decisions (:func:`grid_factors`, :func:`model_grid_shape`) on numbers measured by
:func:`geo_pix2pix.io.geodesy.ground_pixel_size`; :class:`on_model_grid` is the one place a
resampled input is opened, by render and by its Dask workers alike.
"""

from __future__ import annotations

import warnings

from affine import Affine
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT

from ..errors import ResolutionWarning
from .read import MapRaster

__all__ = ["RESOLUTION_TOLERANCE", "grid_factors", "model_grid_shape", "on_model_grid"]

#: Inputs within this relative difference of the model's ground resolution are not
#: resampled: a 5 % scale change is within the training jitter and resampling blurs.
#: Pixels whose ground width and height differ by more are made square.
RESOLUTION_TOLERANCE = 0.05


def grid_factors(src: str, pixel: tuple[float, float] | None,
                 model_res: float | None) -> tuple[float, float] | None:
    """(x, y) scale from the input's grid to the model's, or None to render the input's.

    Pixels that are not square on the ground (degrees far from the equator) are made
    square when the model has a resolution; without one nothing is resampled, and the
    user is told what that means.
    """
    if pixel is None:
        return None
    gx, gy = pixel
    in_res = (gx + gy) / 2
    square = abs(gx / gy - 1) <= RESOLUTION_TOLERANCE
    shape = f"{gx:.3g} × {gy:.3g} m"
    if not model_res:
        stretch = "" if square else (f"; its pixels are {shape} on the ground, so the model sees the map "
                                     f"stretched {max(gx, gy) / min(gx, gy):.2g}× along one axis")
        warnings.warn(f"the model has no ground resolution, so {src!r} is rendered at its own {in_res:.3g} m/px "
                      f"without resampling{stretch}: right only for a model trained at that scale; use a "
                      "checkpoint that records its resolution (train --ground-resolution; the default model does)",
                      ResolutionWarning, stacklevel=3)
        return None
    if not square:
        warnings.warn(f"input {src!r} has pixels of {shape} on the ground (not square, as degrees are away "
                      f"from the equator): resampled to square {model_res:.3g} m pixels for the model",
                      ResolutionWarning, stacklevel=3)
        return gx / model_res, gy / model_res
    if abs(in_res / model_res - 1) > RESOLUTION_TOLERANCE:
        return in_res / model_res, in_res / model_res
    return None


def model_grid_shape(width: int, height: int, factor: tuple[float, float]) -> tuple[int, int]:
    """(width, height) of the input resampled by ``factor`` (x, y) onto the model's grid."""
    return max(1, round(width * factor[0])), max(1, round(height * factor[1]))


class on_model_grid:
    """Context manager: a MapRaster reading the input through a WarpedVRT whose pixel
    size is the model's ground resolution (same CRS and extent); ``factor``: (x, y) scale."""

    def __init__(self, raster: MapRaster, factor: tuple[float, float]) -> None:
        self.raster, self.factor = raster, factor

    def __enter__(self) -> MapRaster:
        r = self.raster
        ds = r.dataset
        width, height = model_grid_shape(ds.width, ds.height, self.factor)
        transform = ds.transform @ Affine.scale(ds.width / width, ds.height / height)
        # Colour tables hold indices: interpolating them would invent colours.
        if r.lut is not None:
            resampling = Resampling.nearest
        else:
            resampling = Resampling.cubic if min(self.factor) > 1 else Resampling.average
        self.vrt = WarpedVRT(ds, crs=ds.crs, transform=transform, width=width, height=height,
                             resampling=resampling)
        return MapRaster(self.vrt, r.path, r.bands, r.lut, r.alpha_band, r.has_mask, r.georeferenced)

    def __exit__(self, *exc) -> None:
        self.vrt.close()
