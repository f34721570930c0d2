"""Geodesy: how many metres on the ground a raster's pixel covers.

Measured, not read from the CRS's units, so that it is right for geographic CRSs
(degrees), Web Mercator (whose "metres" stretch by 1/cos(latitude)) and projected CRSs
alike. Render and tiles compare it with the model's ground resolution (:mod:`model_grid`).
"""

from __future__ import annotations

import math

__all__ = ["EARTH_RADIUS", "ground_pixel_size", "ground_resolution"]

EARTH_RADIUS = 6_371_008.8  # mean radius (IUGG), metres


def ground_resolution(crs, transform, width: int, height: int) -> float | None:
    """Metres on the ground per pixel at the raster's centre, or None if unknown: the
    centre pixel's neighbours taken to longitude/latitude, their great-circle distances
    averaged over x and y."""
    size = ground_pixel_size(crs, transform, width, height)
    return None if size is None else (size[0] + size[1]) / 2


def ground_pixel_size(crs, transform, width: int, height: int) -> tuple[float, float] | None:
    """(x, y) metres on the ground of the raster's centre pixel, or None if unknown: a
    pixel square in degrees is twice as tall as it is wide at 60° N."""
    if crs is None or transform.is_identity:
        return None
    from rasterio.warp import transform as warp_transform

    cx, cy = width / 2, height / 2
    pts = [transform @ (cx, cy), transform @ (cx + 1, cy), transform @ (cx, cy + 1)]
    try:
        lon, lat = warp_transform(crs, "EPSG:4326", [p[0] for p in pts], [p[1] for p in pts])
    except Exception:  # a CRS PROJ cannot take to lon/lat
        return None

    def dist(i: int, j: int) -> float:
        p1, p2 = math.radians(lat[i]), math.radians(lat[j])
        dp, dl = p2 - p1, math.radians(lon[j] - lon[i])
        a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
        return 2 * EARTH_RADIUS * math.asin(min(1.0, math.sqrt(a)))

    gx, gy = dist(0, 1), dist(0, 2)
    return (gx, gy) if gx > 0 and gy > 0 and math.isfinite(gx + gy) else None
