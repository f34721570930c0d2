"""Areas of interest: a lon/lat bounding box or GeoJSON polygons, and the tiles they cover.

An :class:`Area` is immutable. A tile belongs to the area when it shares more than a
boundary with it: a box whose edge runs exactly along a tile border does not pull in
the next row of tiles (mercantile's rule for bounding boxes, applied to polygons too).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import mercantile
import numpy as np
import shapely
from shapely.geometry import shape
from shapely.validation import explain_validity

from ..errors import OptionError
from .tilemath import MAX_LATITUDE, check_bbox

__all__ = ["Area", "parse_bbox"]


def parse_bbox(text: str | tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """``"W,S,E,N"`` (degrees) → a validated tuple."""
    if isinstance(text, str):
        parts = text.replace(" ", "").split(",")
        try:
            values = tuple(float(v) for v in parts)
        except ValueError:
            values = ()
        if len(values) != 4:
            raise OptionError(f"--bbox {text!r} must be four numbers W,S,E,N in degrees, "
                              "e.g. 24.90,60.15,24.98,60.19")
        return check_bbox(*values)
    return check_bbox(*(float(v) for v in text))


@dataclass(frozen=True, eq=False)
class Area:
    """Where to make tiles: a lon/lat box, optionally narrowed to polygons."""

    bounds: tuple[float, float, float, float]  # west, south, east, north (degrees)
    geometry: shapely.Geometry | None = None  # None: the whole box
    label: str = field(default="")

    @classmethod
    def from_bbox(cls, bbox: str | tuple[float, float, float, float]) -> Area:
        b = parse_bbox(bbox)
        return cls(b, None, "bbox " + ",".join(f"{v:g}" for v in b))

    @classmethod
    def from_geojson(cls, path: str | os.PathLike) -> Area:
        """Polygons of a GeoJSON file (FeatureCollection, Feature or geometry), lon/lat."""
        name = os.fspath(path)
        try:
            with open(name, encoding="utf-8") as f:
                doc = json.load(f)
        except FileNotFoundError:
            raise OptionError(f"--aoi {name!r} does not exist: check the path") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise OptionError(f"--aoi {name!r} is not readable GeoJSON ({exc}): give a .geojson "
                              "file of polygons in lon/lat") from None
        geoms = [shape(g) for g in _geometries(doc, name) if g]
        polys = [g for g in geoms if g.geom_type in ("Polygon", "MultiPolygon")]
        if len(polys) != len(geoms):
            other = sorted({g.geom_type for g in geoms} - {"Polygon", "MultiPolygon"})
            raise OptionError(f"--aoi {name!r} holds {', '.join(other)}: an area of interest must be "
                              "Polygon or MultiPolygon features (buffer lines or points first)")
        if not polys or all(p.is_empty for p in polys):
            raise OptionError(f"--aoi {name!r} has no polygon (empty geometry): draw the area to tile")
        for i, p in enumerate(polys):
            if not p.is_valid:
                raise OptionError(f"--aoi {name!r}: polygon {i} is invalid ({explain_validity(p)}): "
                                  "repair it, e.g. with shapely.make_valid or QGIS 'Fix geometries'")
        geom = shapely.union_all(polys)
        w, s, e, n = geom.bounds
        if not (-180 <= w and e <= 180 and -90 <= s and n <= 90):
            raise OptionError(f"--aoi {name!r} has coordinates outside lon/lat ({w:g},{s:g},{e:g},{n:g}): "
                              "GeoJSON must be in degrees (EPSG:4326); reproject it, e.g. "
                              "ogr2ogr -t_srs EPSG:4326 out.geojson in.geojson")
        world = shapely.box(-180, -MAX_LATITUDE, 180, MAX_LATITUDE)
        clipped = shapely.intersection(geom, world)
        if clipped.is_empty or clipped.area == 0:
            raise OptionError(f"--aoi {name!r} lies beyond ±{MAX_LATITUDE:.4f}° latitude, outside "
                              "Web Mercator tiles: nothing to tile")
        shapely.prepare(clipped)
        return cls(tuple(clipped.bounds), clipped, f"aoi {os.path.basename(name)}")

    @property
    def centre(self) -> tuple[float, float]:
        w, s, e, n = self.bounds
        return (w + e) / 2, (s + n) / 2

    def tiles(self, z: int) -> list[mercantile.Tile]:
        """Tiles of zoom ``z`` in the area, row by row (y, then x)."""
        w, s, e, n = self.bounds
        cand = sorted(mercantile.tiles(w, s, e, n, [z]), key=lambda t: (t.y, t.x))
        if self.geometry is None or not cand:
            return cand
        xs = np.array([t.x for t in cand], dtype=np.float64)
        ys = np.array([t.y for t in cand], dtype=np.float64)
        boxes = shapely.box(*_lonlat_bounds(xs, ys, z))
        keep = shapely.intersects(self.geometry, boxes) & ~shapely.touches(self.geometry, boxes)
        return [t for t, k in zip(cand, keep, strict=True) if k]

    def __repr__(self) -> str:
        return f"Area({self.label or self.bounds})"


def _lonlat_bounds(xs: np.ndarray, ys: np.ndarray, z: int):
    """Vectorised mercantile.bounds: (west, south, east, north) arrays of tiles."""
    n = 2.0**z

    def lat(y: np.ndarray) -> np.ndarray:
        return np.degrees(np.arctan(np.sinh(math.pi * (1 - 2 * y / n))))

    return xs / n * 360 - 180, lat(ys + 1), (xs + 1) / n * 360 - 180, lat(ys)


def _geometries(doc, name: str) -> list:
    kind = doc.get("type") if isinstance(doc, dict) else None
    if kind == "FeatureCollection":
        return [f.get("geometry") for f in doc.get("features", [])]
    if kind == "Feature":
        return [doc.get("geometry")]
    if kind in ("Polygon", "MultiPolygon", "GeometryCollection", "Point", "MultiPoint",
                "LineString", "MultiLineString"):
        if kind == "GeometryCollection":
            return list(doc.get("geometries", []))
        return [doc]
    raise OptionError(f"--aoi {name!r} is JSON but not GeoJSON (type {kind!r}): give a "
                      "FeatureCollection, Feature or Polygon")
