"""Areas of interest: a lon/lat bounding box or GeoJSON polygons, and the tiles they cover.

An :class:`Area` is immutable. A tile belongs to the area when it shares more than a
boundary with it: a box whose edge runs exactly along a tile border does not pull in
the next row of tiles (mercantile's rule for bounding boxes, applied to polygons too).

Nothing here holds every tile of an area: :meth:`Area.spans` gives, row by row, the
runs of columns inside the area, :meth:`Area.count` adds them up (for a box, by
arithmetic) and :meth:`Area.blocks` yields aligned blocks of tiles one at a time, so a
whole-world area at zoom 15 (10⁹ tiles) is planned in the memory of one row of blocks.

An area that crosses the antimeridian is split there into pieces on either side of
180°: a bounding box with W > E when that is the shorter way round (``170,-20,-170,-10``),
and a GeoJSON ring whose consecutive vertices jump by more than 180° of longitude (as
drawn across the date line) or that goes on beyond ±180°.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import mercantile
import numpy as np
import shapely
import shapely.affinity
from shapely.validation import explain_validity

from ..errors import OptionError
from .tilemath import MAX_LATITUDE, check_bbox

__all__ = ["Area", "parse_bbox"]

#: mercantile.tiles' epsilon: a box ending exactly on a tile border does not reach the next tile.
_LL_EPSILON = 1e-11
#: Rows of a zoom level clipped against a polygon at once (bounded memory, few GEOS calls).
_BAND_ROWS = 256


def parse_bbox(text: str | tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """``"W,S,E,N"`` (degrees) → a validated tuple (W > E: across the antimeridian)."""
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
    """Where to make tiles: lon/lat boxes, or polygons.

    ``bounds`` is the (west, south, east, north) of the whole area in degrees, within
    ±180°; ``boxes`` (no ``geometry``) the boxes it is made of, one or, across the
    antimeridian, two; ``geometry`` the polygons, when the area is not a box.
    """

    bounds: tuple[float, float, float, float]
    geometry: shapely.Geometry | None = None  # None: the union of ``boxes``
    label: str = field(default="")
    boxes: tuple[tuple[float, float, float, float], ...] = ()
    crosses_antimeridian: bool = False
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.geometry is None and not self.boxes:
            object.__setattr__(self, "boxes", (tuple(self.bounds),))

    # -- construction ------------------------------------------------------------------
    @classmethod
    def from_bbox(cls, bbox: str | tuple[float, float, float, float], label: str | None = None) -> Area:
        w, s, e, n = parse_bbox(bbox)
        text = label or "bbox " + ",".join(f"{v:g}" for v in (w, s, e, n))
        if w > e:  # across the antimeridian (check_bbox allowed it: the shorter way round)
            boxes = ((w, s, 180.0, n), (-180.0, s, e, n))
            return cls((-180.0, s, 180.0, n), None, text, boxes, True)
        return cls((w, s, e, n), None, text)

    @classmethod
    def from_geojson(cls, path: str | os.PathLike) -> Area:
        """Polygons of a GeoJSON file (FeatureCollection, Feature or geometry), lon/lat."""
        name = os.fspath(path)
        try:
            with open(name, encoding="utf-8") as f:
                doc = json.load(f)
        except FileNotFoundError:
            raise OptionError(f"--aoi {name!r} does not exist: check the path") from None
        except IsADirectoryError:
            raise OptionError(f"--aoi {name!r} is a folder: give a .geojson file") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise OptionError(f"--aoi {name!r} is not readable GeoJSON ({exc}): give a .geojson "
                              "file of polygons in lon/lat") from None
        polys, other = _polygons(doc, name)
        if other:
            raise OptionError(f"--aoi {name!r} holds {', '.join(sorted(other))}: an area of interest must be "
                              "Polygon or MultiPolygon features (buffer lines or points first)")
        polys = [p for p in polys if not p.is_empty]
        if not polys:
            raise OptionError(f"--aoi {name!r} has no polygon (empty geometry): draw the area to tile")
        for i, p in enumerate(polys):
            if not p.is_valid:
                raise OptionError(f"--aoi {name!r}: polygon {i} is invalid ({explain_validity(p)}): "
                                  "repair it, e.g. with shapely.make_valid or QGIS 'Fix geometries'")
        geom = shapely.union_all(polys)
        w, s, e, n = geom.bounds
        if not (-540 <= w and e <= 540 and -90 <= s and n <= 90):
            raise OptionError(f"--aoi {name!r} has coordinates outside lon/lat ({w:g},{s:g},{e:g},{n:g}): "
                              "GeoJSON must be in degrees (EPSG:4326); reproject it, e.g. "
                              "ogr2ogr -t_srs EPSG:4326 out.geojson in.geojson")
        crossing = w < -180 or e > 180
        if crossing:  # cut at ±180° and bring each piece back within the world
            pieces = [shapely.affinity.translate(shapely.intersection(geom, shapely.box(lo, -90, lo + 360, 90)),
                                                 xoff=-lo - 180)
                      for lo in (-540, -180, 180)]
            geom = shapely.union_all([p for p in pieces if not p.is_empty])
        world = shapely.box(-180, -MAX_LATITUDE, 180, MAX_LATITUDE)
        clipped = shapely.intersection(geom, world)
        clipped = shapely.union_all([p for p in shapely.get_parts(clipped)
                                     if p.geom_type in ("Polygon", "MultiPolygon") and p.area > 0])
        if clipped.is_empty or clipped.area == 0:
            raise OptionError(f"--aoi {name!r} lies beyond ±{MAX_LATITUDE:.4f}° latitude, outside "
                              "Web Mercator tiles: nothing to tile")
        shapely.prepare(clipped)
        return cls(tuple(clipped.bounds), clipped, f"aoi {os.path.basename(name)}",
                   crosses_antimeridian=crossing and clipped.bounds[0] < -179.999 and clipped.bounds[2] > 179.999)

    @classmethod
    def of_source(cls, bounds: tuple[float, float, float, float], spec: str) -> Area:
        """The area of a source's extent (lon/lat), clamped to Web Mercator's square: its
        errors name the source, not a --bbox the user never gave."""
        values = tuple(float(v) for v in bounds)
        what = f"the extent of source {spec!r} ({','.join(f'{v:g}' for v in values)})"
        if len(values) != 4 or not all(math.isfinite(v) for v in values):
            raise OptionError(f"{what} is not four finite numbers: pass --bbox W,S,E,N or --aoi")
        w, s, e, n = values
        if w >= 180 or e <= -180:
            raise OptionError(f"{what} lies beyond ±180° of longitude, outside Web Mercator tiles: "
                              "give the source in longitudes -180..180 (e.g. gdalwarp -t_srs EPSG:4326 "
                              "--config CENTER_LONG 0), or pass --bbox W,S,E,N")
        s, n = max(s, -MAX_LATITUDE), min(n, MAX_LATITUDE)
        w, e = max(w, -180.0), min(e, 180.0)
        if s >= n or w == e:
            raise OptionError(f"{what} covers no Web Mercator tile (latitudes within ±{MAX_LATITUDE:.4f}°, "
                              "longitudes within ±180°): pass --bbox W,S,E,N or --aoi")
        label = f"extent of {_short(spec)}"
        if w > e:  # across the antimeridian
            return cls((-180.0, s, 180.0, n), None, label, ((w, s, 180.0, n), (-180.0, s, e, n)), True)
        return cls((w, s, e, n), None, label)

    # -- facts -------------------------------------------------------------------------
    @property
    def centre(self) -> tuple[float, float]:
        w, s, e, n = self.bounds
        if self.crosses_antimeridian and self.geometry is None:
            (w1, _, _, _), (_, _, e2, _) = self.boxes
            lon = (w1 + e2 + 360) / 2
            return (lon - 360 if lon > 180 else lon), (s + n) / 2
        if self.crosses_antimeridian:
            p = self.geometry.representative_point()
            return p.x, (s + n) / 2
        return (w + e) / 2, (s + n) / 2

    def __repr__(self) -> str:
        return f"Area({self.label or self.bounds})"

    # -- tiles, streamed -----------------------------------------------------------------
    def _box_ranges(self, z: int) -> list[tuple[int, int, int, int]]:
        """(x0, y0, x1, y1), inclusive tile ranges at zoom ``z`` of the area's boxes (for a
        polygon area: of its bounds), by mercantile.tiles' rule."""
        key = ("ranges", z)
        if key not in self._cache:
            out = []
            for w, s, e, n in (self.boxes if self.geometry is None else (self.bounds,)):
                s, n = max(-85.051129, s), min(85.051129, n)
                w, e = max(-180.0, w), min(180.0, e)
                ul = mercantile.tile(w, n, z)
                lr = mercantile.tile(e - _LL_EPSILON, s + _LL_EPSILON, z)
                top = 2**z - 1
                out.append((min(max(ul.x, 0), top), min(max(ul.y, 0), top),
                            min(max(lr.x, 0), top), min(max(lr.y, 0), top)))
            self._cache[key] = out
        return self._cache[key]

    def rows(self, z: int) -> range:
        """Rows of zoom ``z`` that may hold tiles of the area."""
        ranges = self._box_ranges(z)
        return range(min(r[1] for r in ranges), max(r[3] for r in ranges) + 1)

    def spans(self, z: int, y0: int, y1: int, x0: int = 0, x1: int | None = None
              ) -> Iterator[tuple[int, list[tuple[int, int]]]]:
        """For each row ``y`` in ``[y0, y1)``: ``(y, [(a, b), …])``, the sorted, disjoint
        half-open runs of columns ``[a, b)`` within ``[x0, x1)`` whose tiles are in the area."""
        x1 = 2**z if x1 is None else x1
        if self.geometry is None:
            ranges = self._box_ranges(z)
            for y in range(y0, y1):
                runs = [(max(rx0, x0), min(rx1 + 1, x1)) for rx0, ry0, rx1, ry1 in ranges if ry0 <= y <= ry1]
                yield y, _merge([r for r in runs if r[0] < r[1]])
            return
        for b0 in range(y0, y1, _BAND_ROWS):
            b1 = min(b0 + _BAND_ROWS, y1)
            yield from self._polygon_spans(z, b0, b1, x0, x1)

    def _polygon_spans(self, z: int, y0: int, y1: int, x0: int, x1: int):
        n = 2**z
        rows = self.rows(z)
        lo, hi = max(y0, rows.start), min(y1, rows.stop)
        if lo >= hi or x0 >= x1:
            for y in range(y0, y1):
                yield y, []
            return
        ys = np.arange(lo, hi + 1, dtype=np.float64)
        lats = _lat(ys, n)  # lats[i]: top of row lo + i
        west, east = x0 / n * 360 - 180, x1 / n * 360 - 180
        band = shapely.intersection(self.geometry, shapely.box(west, lats[-1], east, lats[0]))
        if band.is_empty:
            for y in range(y0, y1):
                yield y, []
            return
        shapely.prepare(band)
        strips = shapely.box(west, lats[1:], east, lats[:-1])
        pieces = shapely.intersection(band, strips)
        for y in range(y0, lo):
            yield y, []
        for i, y in enumerate(range(lo, hi)):
            runs = []
            ends: list[int] = []
            for part in shapely.get_parts(pieces[i]):
                if part.geom_type != "Polygon" or part.area <= 0:
                    continue  # a shared edge or corner: not inside the area
                pw, _, pe, _ = part.bounds
                a = max(math.floor((pw + 180) / 360 * n), x0)
                b = min(math.ceil((pe + 180) / 360 * n), x1)
                if a < b:
                    runs.append([a, b])
                    ends.extend((a, b - 1))
            if runs:
                # The columns between a run's ends overlap the piece's inside (a polygon's
                # inside is connected, and so is its projection): only the end columns,
                # where the piece may merely touch a tile border, are tested exactly.
                cols = np.array(sorted(set(ends)), dtype=np.float64)
                boxes = shapely.box(*_lonlat_bounds(cols, np.full(len(cols), float(y)), z))
                inside = shapely.intersects(band, boxes) & ~shapely.touches(band, boxes)
                keep = {int(c) for c, k in zip(cols, inside, strict=True) if k}
                for r in runs:
                    if r[0] not in keep:
                        r[0] += 1
                    if r[1] - 1 not in keep and r[1] - 1 >= r[0]:
                        r[1] -= 1
                runs = [(a, b) for a, b in runs if a < b]
            yield y, _merge(runs)
        for y in range(hi, y1):
            yield y, []

    def count(self, z: int) -> int:
        """Tiles of zoom ``z`` in the area, without listing them."""
        key = ("count", z)
        if key not in self._cache:
            if self.geometry is None:  # boxes (two across the antimeridian never share a tile)
                total = sum((x1 - x0 + 1) * (y1 - y0 + 1) for x0, y0, x1, y1 in self._box_ranges(z))
            else:
                rows = self.rows(z)
                total = sum(sum(b - a for a, b in runs) for _, runs in self.spans(z, rows.start, rows.stop))
            self._cache[key] = total
        return self._cache[key]

    def at_least(self, z: int) -> int:
        """A lower bound of :meth:`count`, from the area's size alone (instant)."""
        if self.geometry is None:
            return self.count(z)
        key = "mercator_area"
        if key not in self._cache:
            def to_unit(coords: np.ndarray) -> np.ndarray:  # lon/lat → Web Mercator, in world widths
                lat = np.radians(np.clip(coords[:, 1], -MAX_LATITUDE, MAX_LATITUDE))
                y = np.log(np.tan(math.pi / 4 + lat / 2)) / (2 * math.pi)
                return np.column_stack([coords[:, 0] / 360, y])
            self._cache[key] = shapely.transform(self.geometry, to_unit).area
        return int(self._cache[key] * 4**z)

    def tiles(self, z: int) -> list[mercantile.Tile]:
        """Tiles of zoom ``z`` in the area, row by row (y, then x): for small areas and
        tests; runs stream with :meth:`blocks`."""
        rows = self.rows(z)
        return [mercantile.Tile(x, y, z) for y, runs in self.spans(z, rows.start, rows.stop)
                for a, b in runs for x in range(a, b)]

    def members(self, z: int, x0: int, y0: int, x1: int, y1: int) -> set[tuple[int, int]]:
        """``(x, y)`` of the area's tiles of zoom ``z`` within columns [x0, x1) and rows [y0, y1)."""
        return {(x, y) for y, runs in self.spans(z, y0, y1, x0, x1) for a, b in runs for x in range(a, b)}

    def blocks(self, z: int, size: int) -> Iterator[tuple[tuple[int, int], list[mercantile.Tile]]]:
        """Aligned blocks of ``size``² tiles of zoom ``z`` holding tiles of the area, one at
        a time, in row order: ``((column, row), tiles in row order)``."""
        rows = self.rows(z)
        for by in range(rows.start // size, (rows.stop - 1) // size + 1):
            y0, y1 = max(by * size, rows.start), min((by + 1) * size, rows.stop)
            band = list(self.spans(z, y0, y1))
            for bx in _block_columns(_merge([r for _, runs in band for r in runs]), size):
                lo, hi = bx * size, (bx + 1) * size
                tiles = [mercantile.Tile(x, y, z) for y, runs in band for a, b in runs
                         for x in range(max(a, lo), min(b, hi))]
                if tiles:
                    yield (bx, by), tiles


def _block_columns(runs: list[tuple[int, int]], size: int) -> Iterator[int]:
    """Block columns touched by sorted disjoint runs, each once, in order."""
    last = -1
    for a, b in runs:
        for bx in range(max(a // size, last + 1), (b - 1) // size + 1):
            yield bx
            last = bx


def _merge(runs: list) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for a, b in sorted(runs):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def _lat(y: np.ndarray, n: float) -> np.ndarray:
    return np.degrees(np.arctan(np.sinh(math.pi * (1 - 2 * y / n))))


def _lonlat_bounds(xs: np.ndarray, ys: np.ndarray, z: int):
    """Vectorised mercantile.bounds: (west, south, east, north) arrays of tiles."""
    n = 2.0**z
    return xs / n * 360 - 180, _lat(ys + 1, n), (xs + 1) / n * 360 - 180, _lat(ys, n)


def _short(spec: str) -> str:
    """A source named without the local folders above it (or a URL's query string)."""
    if "://" in spec:
        return spec.split("?", 1)[0]
    return os.path.basename(spec.rstrip("/")) or spec


# -- GeoJSON ---------------------------------------------------------------------------------
_OTHER_TYPES = ("Point", "MultiPoint", "LineString", "MultiLineString")


def _polygons(doc, name: str) -> tuple[list, set[str]]:
    """(shapely polygons, names of the other geometry types found) of a GeoJSON document."""
    kind = doc.get("type") if isinstance(doc, dict) else None
    if kind == "FeatureCollection":
        features = doc.get("features")
        if not isinstance(features, list):
            raise OptionError(f"--aoi {name!r}: its 'features' is not a list: give a FeatureCollection "
                              "whose features are GeoJSON objects")
        items = []
        for i, f in enumerate(features):
            if not isinstance(f, dict):
                raise OptionError(f"--aoi {name!r}: feature {i} is {_what(f)}, not a GeoJSON object: every "
                                  "feature must be {\"type\": \"Feature\", \"geometry\": {…}}")
            items.append((f"feature {i}", f.get("geometry")))
    elif kind == "Feature":
        items = [("the feature", doc.get("geometry"))]
    elif kind in ("Polygon", "MultiPolygon", "GeometryCollection", *_OTHER_TYPES):
        items = [("the geometry", doc)]
    else:
        raise OptionError(f"--aoi {name!r} is JSON but not GeoJSON (type {kind!r}): give a "
                          "FeatureCollection, Feature or Polygon")
    polys: list = []
    other: set[str] = set()
    for where, g in items:
        _collect(g, f"--aoi {name!r}: {where}", polys, other, 0)
    return polys, other


def _collect(g, where: str, polys: list, other: set, depth: int) -> None:
    if g is None:
        return  # a feature without geometry: nothing to tile
    if not isinstance(g, dict):
        raise OptionError(f"{where} has a geometry that is {_what(g)}, not a GeoJSON object")
    kind = g.get("type")
    if kind == "GeometryCollection" and depth < 8:
        members = g.get("geometries")
        if not isinstance(members, list):
            raise OptionError(f"{where}: its GeometryCollection has no 'geometries' list")
        for m in members:
            _collect(m, where, polys, other, depth + 1)
    elif kind == "Polygon":
        polys.append(_polygon(g.get("coordinates"), where))
    elif kind == "MultiPolygon":
        coords = g.get("coordinates")
        if not isinstance(coords, list):
            raise OptionError(f"{where}: MultiPolygon coordinates are {_what(coords)}, not a list of polygons")
        polys.extend(_polygon(c, where) for c in coords)
    elif kind in _OTHER_TYPES:
        other.add(kind)
    else:
        raise OptionError(f"{where} has a geometry of type {kind!r}: give Polygon or MultiPolygon geometries")


def _polygon(rings, where: str) -> shapely.Polygon:
    """A polygon from GeoJSON rings: every position checked, longitudes unwrapped across
    the antimeridian (each vertex within 180° of the one before it)."""
    if not isinstance(rings, list):
        raise OptionError(f"{where}: Polygon coordinates are {_what(rings)}, not a list of rings")
    if not rings:
        return shapely.Polygon()
    out = []
    for r, ring in enumerate(rings):
        label = "the outer ring" if r == 0 else f"hole {r}"
        if not isinstance(ring, list):
            raise OptionError(f"{where}: {label} is {_what(ring)}, not a list of [lon, lat] positions")
        pts = []
        for p in ring:
            if not (isinstance(p, list) and len(p) >= 2
                    and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p[:2])):
                raise OptionError(f"{where}: {label} has the position {_brief(p)}: every position must be "
                                  "[lon, lat] in numbers")
            lon, lat = float(p[0]), float(p[1])
            if not (math.isfinite(lon) and math.isfinite(lat)):
                raise OptionError(f"{where}: {label} has the position {_brief(p)}: coordinates must be finite "
                                  "numbers (not NaN or Infinity)")
            pts.append((lon, lat))
        if len(pts) >= 2 and pts[0] != pts[-1]:
            pts.append(pts[0])  # close it, as OGR does
        if len(pts) < 4:
            raise OptionError(f"{where}: {label} has {len(set(pts))} distinct position(s): a polygon ring needs "
                              "at least 3 corners (4 positions, the last repeating the first)")
        unwrapped = _unwrap(pts)
        # a ring around a pole (its longitudes add up to a full turn) keeps its coordinates
        out.append(unwrapped if unwrapped[-1] == unwrapped[0] else pts)
    shell, holes = out[0], out[1:]
    # a hole drawn on the other side of the date line belongs beside its shell
    lo = min(x for x, _ in shell)
    holes = [[(x + 360 * round((lo - h[0][0]) / 360) if abs(h[0][0] - lo) > 180 else x, y) for x, y in h]
             for h in holes]
    return shapely.Polygon(shell, holes)


def _unwrap(pts: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out = [pts[0]]
    for lon, lat in pts[1:]:
        prev = out[-1][0]
        if abs(lon) == 180 or abs(prev) == 180:  # an edge along or onto ±180°: as drawn
            out.append((lon, lat))
            continue
        while lon - prev > 180:
            lon -= 360
        while prev - lon > 180:
            lon += 360
        out.append((lon, lat))
    return out


def _what(v) -> str:
    return {str: "a string", int: "a number", float: "a number", bool: "true/false", list: "a list",
            type(None): "null"}.get(type(v), type(v).__name__)


def _brief(v) -> str:
    text = json.dumps(v, allow_nan=True, default=str)
    return text if len(text) <= 40 else text[:37] + "…"
