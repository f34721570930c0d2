"""Map rasters from OpenStreetMap data, drawn in the style of the training maps.

The default model learnt on Google-style maps of New York (pix2pix's "maps" data); this
module draws any place from OpenStreetMap data in their colours and road widths:

- a pure core: OSM tags → what to draw (:func:`classify`), features → buffered shapes
  in paint order (:func:`paint`), shapes → an anti-aliased RGB block
  (:meth:`PaintedMap.draw`, supersampled ``rasterio.features.rasterize``), the sea
  from coastlines (:func:`sea_polygons`), the pixel grid (:func:`map_grid`);
- the I/O edges: :func:`read_osm` (a ``.osm.pbf`` read through pyrosm, the optional
  ``geo-pix2pix[osm]`` extra) and :func:`osm_map` (writes the GeoTIFF).

Maps are in EPSG:3857 at a ground resolution in true metres: the pixel size in
projected units is ``resolution / cos(latitude)`` at the map's centre, and line widths
are scaled the same way at each feature's latitude.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import numpy as np
import shapely
from affine import Affine

from .errors import MissingDependencyError, OptionError, OsmDataError

log = logging.getLogger(__name__)

__all__ = ["AREA_CLASSES", "DEFAULT_RESOLUTION", "PALETTE", "ROAD_STYLES", "Feature", "MapGrid",
           "OsmMapResult", "PaintedMap", "RoadStyle", "classify", "map_grid", "osm_map", "paint",
           "parse_bbox", "read_osm", "sea_polygons"]

# -- palette: measured on the map halves of ../shared/datasets/maps/train ----------------
# Colour modes of 400 map halves picked at random (seed 0): the local maxima of a 3-D
# histogram with 4-level bins, each refined to the exact mode of the pixels within ±4 of
# it. In brackets, the share of map pixels in the maximum's bin. Casings and 1-px lines have no
# mode of their own: they are the median of the darkest quartile (lines: 5 %) of the
# pixels bordering the road fills (in the rail corridors).
BACKGROUND = (233, 228, 222)  # land with nothing drawn on it (15.8 %)
WATER = (177, 208, 254)  # sea, rivers, lakes (13.5 %)
BUILDING = (243, 240, 233)  # building footprints (6.3 %)
PARK = (203, 223, 172)  # parks, grass, pitches (4.6 %)
MINOR_ROAD = (255, 255, 253)  # streets, service roads, paths: white (4.3 %)
MANMADE = (223, 218, 212)  # industrial, railway and airport land (1.8 %)
CEMETERY = (186, 210, 186)  # (0.33 %)
CAMPUS = (232, 221, 189)  # universities, colleges, schools (0.30 %)
WOOD = (194, 218, 158)  # woods (0.25 %)
HIGHWAY = (251, 158, 37)  # motorways and trunk roads: orange (0.13 %)
HOSPITAL = (237, 209, 206)  # (0.12 %)
MAJOR_ROAD = (255, 225, 103)  # arterials: yellow (0.025 %)
LINK_ROAD = (255, 225, 152)  # ramps: light yellow (0.022 %)
HIGHWAY_CASING = (207, 147, 43)  # 1 px either side of the orange
MAJOR_CASING = (220, 197, 104)  # 1 px either side of the yellow
LINE_GREY = (184, 181, 174)  # rail lines, path edges (1 px)

#: Every colour a map can hold before anti-aliasing; index 0 is the background.
PALETTE = (BACKGROUND, WATER, BUILDING, PARK, MINOR_ROAD, MANMADE, CEMETERY, CAMPUS, WOOD, HIGHWAY,
           HOSPITAL, MAJOR_ROAD, LINK_ROAD, HIGHWAY_CASING, MAJOR_CASING, LINE_GREY)
_PALETTE_RGB = np.array(PALETTE, dtype=np.float32)
_INDEX = {c: i for i, c in enumerate(PALETTE)}

# -- widths: measured on the same map halves (600 px at 0.905 m/px: zoom 17 at 40.7° N) --
# Road width = 2 × the distance transform on the road's skeleton, over 300 map halves:
# white streets 9–10 px, wide white streets 12–16 px, yellow arterials 12–13 px, ramps
# 7–9 px, orange motorways 12–13 px (one carriageway) and 22–26 px (both), casings 1 px.
# Widths below are metres on the ground (px × 0.905); the default model sees them at
# 2.12 m/px, as it saw the training maps after their 600 → 256 px resize.
CASING_WIDTH = 1.0  # metres, each side
LINE_WIDTH = 1.5  # rail lines


class RoadStyle(NamedTuple):
    width: float  # metres on the ground, the fill without its casing
    fill: tuple[int, int, int]
    casing: tuple[int, int, int] | None = None
    rank: int = 0  # paint order: fills of higher ranks over lower; every casing under every fill


#: OSM ``highway=*`` → how it is drawn; values not listed are not drawn.
ROAD_STYLES: dict[str, RoadStyle] = {
    "motorway": RoadStyle(20.0, HIGHWAY, HIGHWAY_CASING, 6),
    "trunk": RoadStyle(16.0, HIGHWAY, HIGHWAY_CASING, 5),
    "primary": RoadStyle(12.0, MAJOR_ROAD, MAJOR_CASING, 4),
    "secondary": RoadStyle(12.0, MINOR_ROAD, None, 3),
    "tertiary": RoadStyle(10.0, MINOR_ROAD, None, 2),
    "pedestrian": RoadStyle(7.0, MINOR_ROAD, None, 1),
    "service": RoadStyle(5.0, MINOR_ROAD, None, 0),
    "track": RoadStyle(3.0, MINOR_ROAD, LINE_GREY, 0),
    **dict.fromkeys(("motorway_link", "trunk_link", "primary_link"), RoadStyle(8.0, LINK_ROAD, None, 4)),
    **dict.fromkeys(("secondary_link", "tertiary_link"), RoadStyle(8.0, MINOR_ROAD, None, 2)),
    **dict.fromkeys(("residential", "unclassified", "living_street", "road"),
                    RoadStyle(9.0, MINOR_ROAD, None, 1)),
    **dict.fromkeys(("footway", "path", "cycleway", "bridleway", "steps"),
                    RoadStyle(2.0, MINOR_ROAD, LINE_GREY, -1)),  # white with grey edges, as in parks
}
#: ``footway=*`` values drawn as part of their street (the training maps have no sidewalks).
SKIPPED_FOOTWAYS = {"sidewalk", "crossing"}
UNDERGROUND = {"yes", "building_passage", "culvert"}  # tunnel=* values not drawn
RAILWAYS = {"rail", "light_rail", "narrow_gauge", "monorail", "funicular", "preserved"}
WATERWAY_WIDTHS = {"river": 12.0, "canal": 10.0, "stream": 3.0, "ditch": 1.5, "drain": 1.5}
#: Area classes in paint order: their colour and the OSM ``key: values`` that select them.
AREA_CLASSES: dict[str, tuple[tuple[int, int, int], dict[str, str]]] = {
    "manmade": (MANMADE, {"landuse": "industrial railway port", "aeroway": "aerodrome"}),
    "campus": (CAMPUS, {"amenity": "university college school"}),
    "hospital": (HOSPITAL, {"amenity": "hospital"}),
    "park": (PARK, {"leisure": "park garden playground pitch golf_course nature_reserve dog_park common",
                    "landuse": "grass recreation_ground village_green meadow allotments orchard",
                    "natural": "grassland scrub heath wetland"}),
    "cemetery": (CEMETERY, {"landuse": "cemetery", "amenity": "grave_yard"}),
    "wood": (WOOD, {"landuse": "forest", "natural": "wood"}),
    "water": (WATER, {"natural": "water bay strait", "landuse": "basin reservoir pond",
                      "waterway": "riverbank"}),
}
_AREA_TAGS = {(k, v): name for name, (_, tags) in AREA_CLASSES.items() for k, vs in tags.items()
              for v in vs.split()}
#: The OSM keys :func:`classify` looks at (read from the file as columns).
TAG_KEYS = ("building", "highway", "footway", "area", "tunnel", "railway", "waterway", "natural",
            "landuse", "leisure", "amenity", "aeroway")
WGS84_RADIUS = 6_378_137.0  # EPSG:3857's sphere
DEFAULT_RESOLUTION = 2.12  # ground m/px of the default model, when its file is missing
OSM_ATTRIBUTION = "© OpenStreetMap contributors, ODbL"  # written into every map's metadata


class Feature(NamedTuple):
    layer: str  # building, road, road_area, rail, waterway, coastline or area
    style: str  # the highway/waterway value, or the area class
    geometry: shapely.Geometry  # in EPSG:3857


class MapGrid(NamedTuple):
    transform: Affine
    width: int
    height: int


def classify(tags: Mapping[str, str]) -> tuple[str, str] | None:
    """``(layer, style)`` of an OSM feature with these tags, or None if the map omits it."""
    if tags.get("tunnel") in UNDERGROUND:
        return None
    if tags.get("building", "no") != "no":
        return "building", "building"
    highway = tags.get("highway")
    if highway in ROAD_STYLES and tags.get("footway") not in SKIPPED_FOOTWAYS:
        return ("road_area" if tags.get("area") == "yes" else "road"), highway
    if tags.get("railway") in RAILWAYS:
        return "rail", "rail"
    if tags.get("waterway") in WATERWAY_WIDTHS:
        return "waterway", tags["waterway"]
    if tags.get("natural") == "coastline":
        return "coastline", "coastline"
    for key in TAG_KEYS:
        area = _AREA_TAGS.get((key, tags.get(key, "")))
        if area:
            return "area", area
    return None


def parse_bbox(value: str | None) -> tuple[float, float, float, float] | None:
    """``"W,S,E,N"`` in degrees of longitude and latitude → a tuple, checked."""
    if not value:
        return None
    try:
        w, s, e, n = (float(v) for v in value.split(","))
    except ValueError:
        raise OptionError(f"--bbox {value!r} must be 4 numbers W,S,E,N in degrees, e.g. "
                          "24.936,60.165,24.953,60.178") from None
    if not (-180 <= w < e <= 180 and -85 <= s < n <= 85):
        raise OptionError(f"--bbox {value!r} must have W < E within ±180 and S < N within ±85 "
                          "(longitude first, then latitude)")
    return w, s, e, n


def _sec(y: np.ndarray | float) -> np.ndarray | float:
    return np.cosh(np.asarray(y, dtype=float) / WGS84_RADIUS)  # 1 / cos(latitude) at Web Mercator y


def map_grid(bounds: tuple[float, float, float, float], resolution: float) -> MapGrid:
    """North-up pixel grid over EPSG:3857 ``bounds`` at ``resolution`` ground metres per pixel."""
    if not resolution > 0:
        raise OptionError(f"--resolution {resolution} must be a positive number of metres per pixel")
    west, south, east, north = bounds
    size = resolution * float(_sec((south + north) / 2))
    width, height = max(1, math.ceil((east - west) / size)), max(1, math.ceil((north - south) / size))
    if width * height > 40_000 ** 2:
        raise OptionError(f"a {width}×{height} px map is too large: shrink --bbox or coarsen --resolution")
    return MapGrid(Affine(size, 0, west, 0, -size, north), width, height)


def _line_parts(geom: shapely.Geometry) -> list[shapely.LineString]:
    geom = shapely.boundary(geom) if shapely.get_dimensions(geom) == 2 else geom
    return [g for g in shapely.get_parts(geom) if isinstance(g, shapely.LineString)]


def sea_polygons(coastlines: Iterable[shapely.Geometry],
                 bounds: tuple[float, float, float, float]) -> list[shapely.Polygon]:
    """The water side of OSM coastlines within ``bounds`` (land lies left of a coastline).

    Coastline ends inside the box are extended straight to its edge (extracts cut them);
    the box is split along them and each piece voted water or land by points just right
    or left of every coastline segment. Pieces no coastline touches are land.
    """
    box = shapely.box(*bounds)
    lines = [g for c in coastlines for g in _line_parts(c)]
    if not lines:
        return []
    merged = shapely.get_parts(shapely.line_merge(shapely.MultiLineString(lines), directed=True))
    reach = 2 * math.hypot(bounds[2] - bounds[0], bounds[3] - bounds[1])
    extended = []
    for line in merged:
        xy = np.asarray(line.coords)[:, :2]
        if not line.is_closed:  # islands are rings: nothing to extend
            ends = [end + reach * (end - prev) / max(np.hypot(*(end - prev)), 1e-12)
                    if box.contains(shapely.Point(end)) else None
                    for end, prev in ((xy[0], xy[1]), (xy[-1], xy[-2]))]
            xy = np.vstack([e for e in (ends[0], xy, ends[1]) if e is not None])
        extended.append(xy)
    cut = shapely.union_all([box.boundary] + [box.intersection(shapely.LineString(xy)) for xy in extended])
    pieces = shapely.get_parts(shapely.polygonize(shapely.get_parts(cut)))
    a = np.concatenate([xy[:-1] for xy in extended])
    b = np.concatenate([xy[1:] for xy in extended])
    step = b - a
    normal = np.stack([step[:, 1], -step[:, 0]], axis=1) / np.maximum(np.hypot(*step.T), 1e-12)[:, None]
    mid, eps = (a + b) / 2, 1e-6 * reach
    votes, tree = np.zeros(len(pieces)), shapely.STRtree(pieces)
    for sign in (1, -1):  # right of the segment: water; left: land
        _, hit = tree.query(shapely.points(mid + sign * eps * normal), predicate="within")
        np.add.at(votes, hit, sign)
    return list(pieces[votes > 0])


@dataclass(frozen=True)
class PaintedMap:
    """Shapes in paint order, each with its palette index, ready to rasterise by window."""

    geometries: np.ndarray  # shapely geometries, EPSG:3857
    colours: np.ndarray  # palette indices, uint8

    @cached_property
    def _tree(self) -> shapely.STRtree:
        return shapely.STRtree(self.geometries)

    def draw(self, grid: MapGrid, row_off: int = 0, col_off: int = 0, height: int | None = None,
             width: int | None = None, supersample: int = 4) -> np.ndarray:
        """RGB (3, height, width) uint8 of a window of ``grid``: each pixel the mean of
        ``supersample``² sub-pixels, so edges are anti-aliased as in the training maps."""
        from rasterio.features import rasterize

        height = grid.height - row_off if height is None else height
        width = grid.width - col_off if width is None else width
        t = grid.transform * Affine.translation(col_off, row_off)
        fine = t * Affine.scale(1 / supersample)
        (x0, y1), (x1, y0) = t * (0, 0), t * (width, height)
        hits = np.sort(self._tree.query(shapely.box(x0, y0, x1, y1)))
        pairs = zip(self.geometries[hits], self.colours[hits].tolist(), strict=True)
        labels = rasterize(pairs, out_shape=(height * supersample, width * supersample), transform=fine,
                           fill=0, dtype="uint8")
        rgb = _PALETTE_RGB[labels].reshape(height, supersample, width, supersample, 3).mean(axis=(1, 3))
        return np.rint(rgb).astype(np.uint8).transpose(2, 0, 1)


def paint(features: Iterable[Feature], bounds: tuple[float, float, float, float]) -> PaintedMap:
    """Features → shapes in the training maps' paint order: areas, water, rail, buildings,
    then road casings and road fills, each by road rank (higher classes over lower)."""
    layers: dict[str, list[Feature]] = {}
    for f in features:
        layers.setdefault(f.layer, []).append(f)

    def polygons(layer: str) -> list[tuple[str, shapely.Geometry]]:
        return [(f.style, f.geometry) for f in layers.get(layer, [])
                if shapely.get_dimensions(f.geometry) == 2]

    def lines(layer: str) -> list[tuple[str, shapely.Geometry]]:
        return [(f.style, g) for f in layers.get(layer, []) for g in _line_parts(f.geometry)]

    shapes: list[tuple[shapely.Geometry, float, tuple[int, int, int]]] = []  # (shape, line width, colour)
    areas = polygons("area")
    for name, (colour, _) in AREA_CLASSES.items():
        shapes += [(g, 0.0, colour) for style, g in areas if style == name]
    shapes += [(g, 0.0, WATER) for g in sea_polygons([g for _, g in lines("coastline")], bounds)]
    shapes += [(g, WATERWAY_WIDTHS[style], WATER) for style, g in lines("waterway")]
    shapes += [(g, LINE_WIDTH, LINE_GREY) for _, g in lines("rail")]
    shapes += [(g, 0.0, BUILDING) for _, g in polygons("building")]
    roads = sorted([(ROAD_STYLES[s], g, True) for s, g in lines("road")]
                   + [(ROAD_STYLES[s], g, False) for s, g in polygons("road_area")], key=lambda r: r[0].rank)
    shapes += [(g, s.width + 2 * CASING_WIDTH, s.casing) for s, g, line in roads if line and s.casing]
    shapes += [(g, s.width if line else 0.0, s.fill) for s, g, line in roads]
    geoms = np.array([g for g, _, _ in shapes], dtype=object)
    widths = np.array([w for _, w, _ in shapes])
    lined = widths > 0  # lines are buffered to their width in ground metres, at their own latitude
    scale = _sec(shapely.get_coordinates(shapely.centroid(geoms[lined]))[:, 1])
    geoms[lined] = shapely.buffer(geoms[lined], widths[lined] / 2 * scale, quad_segs=4)
    colours = np.array([_INDEX[c] for _, _, c in shapes], dtype=np.uint8)
    keep = ~shapely.is_empty(geoms)
    return PaintedMap(geoms[keep], colours[keep])


# -- I/O edges ---------------------------------------------------------------------------
def read_osm(path: str | os.PathLike, bbox: tuple[float, float, float, float] | None = None) -> list[Feature]:
    """The features of an ``.osm.pbf`` file that a map draws, in EPSG:3857.

    ``bbox`` (W, S, E, N in degrees) keeps what reaches into it; ways crossing its edge
    are kept whole.
    """
    try:
        import pyrosm
    except ImportError:
        raise MissingDependencyError('reading OpenStreetMap files needs pyrosm, which is not installed: '
                                     'pip install "geo-pix2pix[osm]"') from None
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise OsmDataError(f"input {path!r} does not exist: give an OpenStreetMap .osm.pbf file")
    wanted = {k: True for k in TAG_KEYS if k not in ("footway", "area", "tunnel")}  # any value
    with warnings.catch_warnings():  # pyrosm and geopandas warn about their own internals
        warnings.simplefilter("ignore")
        try:
            frame = pyrosm.OSM(path, bounding_box=list(bbox) if bbox else None).get_data_by_custom_criteria(
                custom_filter=wanted, filter_type="keep", keep_nodes=False, tags_as_columns=list(TAG_KEYS))
        except Exception as exc:  # pyrosm raises bare exceptions on bad files
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise OsmDataError(f"input {path!r} could not be read as OpenStreetMap PBF ({first}): "
                               "give an .osm.pbf extract") from None
        if frame is None or frame.empty:
            return []
        frame = frame.to_crs("EPSG:3857")
    keys = [k for k in TAG_KEYS if k in frame.columns]
    features = []
    for row, geom in zip(frame[keys].itertuples(index=False), frame.geometry.values, strict=True):
        tags = {k: v for k, v in zip(keys, row, strict=True) if isinstance(v, str)}
        kind = classify(tags)
        if kind and geom is not None and not geom.is_empty and shapely.get_dimensions(geom) > 0:
            features.append(Feature(kind[0], kind[1], geom))
    log.info("%s: %s", path, dict(Counter(f.layer for f in features)) or "nothing to draw")
    return features


@dataclass(frozen=True)
class OsmMapResult:
    """What :func:`osm_map` wrote."""

    path: Path
    width: int
    height: int
    resolution: float  # ground metres per pixel at the centre
    features: int


def osm_map(src: str | os.PathLike, dst: str | os.PathLike, *, resolution: float,
            bbox: tuple[float, float, float, float] | None = None, overwrite: bool = False,
            supersample: int = 4, block: int = 512,
            progress: Callable[[int, int], None] | None = None) -> OsmMapResult:
    """Draw the OpenStreetMap file ``src`` as an RGB GeoTIFF map ``dst`` (EPSG:3857).

    ``bbox`` is W, S, E, N in degrees; without it, the extent of the file's roads and
    buildings. ``resolution`` is in ground metres per pixel (the model's, for render).
    """
    import rasterio.warp
    from rasterio.windows import Window

    from .io.write import GTIFF_OPTIONS, atomic_output, check_output_path, open_output

    dst_p = check_output_path(src, dst, overwrite)
    if dst_p.suffix.lower() not in (".tif", ".tiff"):
        raise OptionError(f"output {str(dst)!r} must be a GeoTIFF (.tif): the map keeps its georeference")
    features = read_osm(src, bbox)
    if not features:
        where = f"in --bbox {','.join(map(str, bbox))}" if bbox else "in the file"
        raise OsmDataError(f"input {os.fspath(src)!r} has nothing to draw {where} (no roads, buildings, "
                           "water or land use): check the bbox, longitude first (W,S,E,N)")
    if bbox:
        xs, ys = rasterio.warp.transform("EPSG:4326", "EPSG:3857", [bbox[0], bbox[2]], [bbox[1], bbox[3]])
        bounds = (xs[0], ys[0], xs[1], ys[1])
    else:  # the roads and buildings: areas and coastlines often reach far out of an extract
        core = [f.geometry for f in features if f.layer in ("road", "building")]
        bounds = tuple(shapely.total_bounds(core or [f.geometry for f in features]).tolist())
    grid = map_grid(bounds, resolution)
    painted = paint(features, bounds)
    profile = dict(driver="GTiff", width=grid.width, height=grid.height, count=3, dtype="uint8",
                   crs="EPSG:3857", transform=grid.transform, photometric="RGB", **GTIFF_OPTIONS)
    windows = [(r, c, min(block, grid.height - r), min(block, grid.width - c))
               for r in range(0, grid.height, block) for c in range(0, grid.width, block)]  # row, col, h, w
    log.info("drawing %d×%d px, %d shapes", grid.width, grid.height, len(painted.geometries))
    with atomic_output(dst_p) as tmp:
        with open_output(tmp, profile) as ds:
            ds.update_tags(ATTRIBUTION=OSM_ATTRIBUTION, SOURCE=Path(src).name)
            for i, (r, c, h, w) in enumerate(windows):
                ds.write(painted.draw(grid, r, c, h, w, supersample), window=Window(c, r, w, h))
                if progress:
                    progress(i + 1, len(windows))
    return OsmMapResult(dst_p, grid.width, grid.height, resolution, len(features))
