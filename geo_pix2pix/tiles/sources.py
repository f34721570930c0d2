"""Where map tiles come from: an XYZ folder, an MBTiles file, a tile server, or a raster.

Every source answers ``get(tile)`` with a :class:`SourceTile` (a content digest and
the data to decode) or ``None`` where it has no tile; an unreadable tile raises
:class:`~geo_pix2pix.errors.TileSourceError`, which the run reports and skips.
Sources are picklable: worker processes reopen them lazily, from their spec.

- :class:`XYZFolder` — ``{z}/{x}/{y}.png`` (or .jpg/.jpeg/.webp), rows from the top;
- :class:`MBTilesFile` — an MBTiles 1.3 SQLite file (rows from the bottom, TMS);
- :class:`TileServer` — a URL template with ``{z}``, ``{x}``, ``{y}`` (or ``{-y}``
  for TMS rows), fetched with urllib; 404 means no tile;
- :class:`RasterSource` — any georeferenced raster GDAL reads, in any CRS, read
  through a ``WarpedVRT`` on the Web Mercator grid of the render zoom, as gdal2tiles
  does. Its digest is a hash of the warped pixels.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import NamedTuple

import mercantile
import numpy as np

from .. import __version__
from ..errors import InputRasterError, NotGeoreferencedWarning, TileSourceError
from .imaging import decode
from .tilemath import MAX_LATITUDE, TILE_SIZE

__all__ = ["MBTilesFile", "RasterSource", "SourceTile", "TileServer", "TileSource", "XYZFolder",
           "open_source"]

IMAGE_SUFFIXES = ("png", "jpg", "jpeg", "webp")
WORLD = 20037508.342789244  # half the Web Mercator square, metres


class SourceTile(NamedTuple):
    digest: str  # sha256 of the content: what the manifest compares
    payload: bytes | tuple[np.ndarray, np.ndarray]  # encoded image, or (rgb, valid)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class TileSource:
    """Base class: subclasses implement :meth:`_read` and may override the facts."""

    kind = "source"

    def __init__(self, spec: str) -> None:
        self.spec = spec

    def zooms(self) -> set[int] | None:
        """Zooms the source holds; None when any zoom can be asked for."""
        return None

    def bounds(self) -> tuple[float, float, float, float] | None:
        """Lon/lat bounds of the data, if the source knows them."""
        return None

    def attribution(self) -> str | None:
        return None

    def prepare(self, render_zoom: int) -> None:
        """Called once, before tiles of ``render_zoom`` are read."""

    def get(self, tile: mercantile.Tile) -> SourceTile | None:
        try:
            return self._read(tile)
        except TileSourceError:
            raise
        except (OSError, sqlite3.Error) as exc:
            raise TileSourceError(f"{self.kind} tile {tile.z}/{tile.x}/{tile.y} of {self.spec!r} "
                                  f"is unreadable ({exc}); it is skipped") from None

    def _read(self, tile: mercantile.Tile) -> SourceTile | None:
        raise NotImplementedError

    def pixels(self, tile: mercantile.Tile, st: SourceTile) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(st.payload, bytes):
            return decode(st.payload, f"{self.kind} tile {tile.z}/{tile.x}/{tile.y} of {self.spec!r}")
        return st.payload

    def close(self) -> None:
        pass

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_h_")}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"


class XYZFolder(TileSource):
    kind = "XYZ"

    def __init__(self, spec: str) -> None:
        super().__init__(spec)
        self.root = Path(spec)
        levels = [int(p.name) for p in self.root.iterdir() if p.is_dir() and p.name.isdigit()]
        self._zooms = set(levels)
        self.suffix = self._find_suffix()

    def _find_suffix(self) -> str:
        for z in sorted(self._zooms):
            for xdir in (self.root / str(z)).iterdir():
                for f in xdir.iterdir() if xdir.is_dir() else ():
                    suffix = f.suffix.lower().lstrip(".")
                    if suffix in IMAGE_SUFFIXES:
                        return suffix
        raise TileSourceError(f"XYZ folder {self.spec!r} holds no {{z}}/{{x}}/{{y}}.png (or .jpg, .webp) "
                              "tiles: check the path")

    def zooms(self) -> set[int]:
        return self._zooms

    def bounds(self) -> tuple[float, float, float, float] | None:
        z = max(self._zooms)  # the deepest level: the finest outline of the data
        tiles = [mercantile.Tile(int(xd.name), int(f.stem), z)
                 for xd in (self.root / str(z)).iterdir() if xd.is_dir() and xd.name.isdigit()
                 for f in xd.iterdir() if f.stem.isdigit()]
        return _union_bounds(tiles)

    def _read(self, tile: mercantile.Tile) -> SourceTile | None:
        path = self.root / str(tile.z) / str(tile.x) / f"{tile.y}.{self.suffix}"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        return SourceTile(_digest(data), data)


class MBTilesFile(TileSource):
    kind = "MBTiles"

    def __init__(self, spec: str) -> None:
        super().__init__(spec)
        db = self._open()
        try:
            rows = db.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")
            names = {r[0] for r in rows}
            if "tiles" not in names:
                raise TileSourceError(f"{spec!r} is SQLite but has no 'tiles' table: it is not MBTiles")
            self._zooms = {r[0] for r in db.execute("SELECT DISTINCT zoom_level FROM tiles")}
            self.meta = dict(db.execute("SELECT name, value FROM metadata")) if "metadata" in names else {}
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise TileSourceError(f"MBTiles {spec!r} is locked by another program ({exc}): close the "
                                      "program writing to it (QGIS, sqlite3, a tile server) and rerun") from None
            raise TileSourceError(f"MBTiles {spec!r} cannot be read ({exc})") from None
        except sqlite3.DatabaseError as exc:
            raise TileSourceError(f"MBTiles {spec!r} is not an SQLite file ({exc}): check the path") from None
        finally:
            db.close()

    def _open(self) -> sqlite3.Connection:
        try:
            return sqlite3.connect(f"file:{os.path.abspath(self.spec)}?mode=ro", uri=True)
        except sqlite3.Error as exc:
            raise TileSourceError(f"MBTiles {self.spec!r} cannot be opened ({exc})") from None

    @property
    def _db(self) -> sqlite3.Connection:
        if getattr(self, "_h_db", None) is None:
            self._h_db = self._open()
        return self._h_db

    def zooms(self) -> set[int]:
        return self._zooms

    def bounds(self) -> tuple[float, float, float, float] | None:
        try:
            w, s, e, n = (float(v) for v in self.meta["bounds"].split(","))
            return w, s, e, n
        except (KeyError, ValueError):
            pass
        if not self._zooms:
            return None
        z = max(self._zooms)
        rows = self._db.execute("SELECT tile_column, tile_row FROM tiles WHERE zoom_level=?", (z,))
        return _union_bounds([mercantile.Tile(x, 2**z - 1 - r, z) for x, r in rows])

    def attribution(self) -> str | None:
        return self.meta.get("attribution")

    def _read(self, tile: mercantile.Tile) -> SourceTile | None:
        row = self._db.execute(
            "SELECT tile_data FROM tiles WHERE zoom_level=? AND tile_column=? AND tile_row=?",
            (tile.z, tile.x, 2**tile.z - 1 - tile.y)).fetchone()
        if row is None:
            return None
        data = bytes(row[0])
        return SourceTile(_digest(data), data)

    def close(self) -> None:
        if getattr(self, "_h_db", None) is not None:
            self._h_db.close()
            self._h_db = None


class TileServer(TileSource):
    kind = "tile server"
    retries = 3
    timeout = 30.0

    def __init__(self, spec: str) -> None:
        super().__init__(spec)
        if not all(k in spec for k in ("{z}", "{x}")) or not ("{y}" in spec or "{-y}" in spec):
            raise TileSourceError(f"URL template {spec!r} must contain {{z}}, {{x}} and {{y}} (or {{-y}} "
                                  "for TMS rows), e.g. http://127.0.0.1:8080/{z}/{x}/{y}.png")

    def url(self, tile: mercantile.Tile) -> str:
        return (self.spec.replace("{z}", str(tile.z)).replace("{x}", str(tile.x))
                .replace("{-y}", str(2**tile.z - 1 - tile.y)).replace("{y}", str(tile.y)))

    def _read(self, tile: mercantile.Tile) -> SourceTile | None:
        url = self.url(tile)
        req = urllib.request.Request(url, headers={"User-Agent": f"geo-pix2pix/{__version__} (tiles)"})
        for attempt in range(self.retries):
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    data = resp.read()
                    if resp.status == 204 or not data:
                        return None
                    return SourceTile(_digest(data), data)
            except urllib.error.HTTPError as exc:
                if exc.code in (404, 410):
                    return None
                if exc.code < 500 and exc.code != 429:
                    raise TileSourceError(f"{url} answered HTTP {exc.code} {exc.reason}: check the URL "
                                          "template and access to the server") from None
                reason = f"HTTP {exc.code}"
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                reason = str(getattr(exc, "reason", exc))
            time.sleep(0.5 * 2**attempt)
        raise TileSourceError(f"{url} failed {self.retries} times ({reason}); the tile is skipped")


class RasterSource(TileSource):
    kind = "raster"

    def __init__(self, spec: str, bands: str | tuple[int, ...] | None = None) -> None:
        super().__init__(spec)
        self.bands = bands
        self.render_zoom: int | None = None
        self._bounds_3857, self._lonlat = self._extent()

    def _extent(self):
        from rasterio.warp import transform_bounds

        with self._open_raster() as r:
            ds = r.dataset
            merc = transform_bounds(ds.crs, "EPSG:3857", *ds.bounds, densify_pts=21)
            w, s, e, n = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds, densify_pts=21)
        return merc, (max(w, -180.0), max(s, -MAX_LATITUDE), min(e, 180.0), min(n, MAX_LATITUDE))

    def _open_raster(self):
        from ..raster import open_map_raster

        with warnings.catch_warnings():
            warnings.simplefilter("error", NotGeoreferencedWarning)
            try:
                return open_map_raster(self.spec, self.bands)
            except NotGeoreferencedWarning:
                raise InputRasterError(f"raster {self.spec!r} has no CRS or transform: tiles need a "
                                       "georeferenced raster; assign one, e.g. gdal_edit.py -a_srs") from None

    def bounds(self) -> tuple[float, float, float, float]:
        return self._lonlat

    def prepare(self, render_zoom: int) -> None:
        if render_zoom > 22:
            raise TileSourceError(f"a raster source can be read at zooms up to 22, not {render_zoom}: "
                                  "pass --render-zoom 22 or less")
        self.close()
        self.render_zoom = render_zoom

    @property
    def _raster(self):
        if getattr(self, "_h_raster", None) is None:
            self._h_raster = self._open_warped()
        return self._h_raster

    def _open_warped(self):
        from affine import Affine
        from rasterio.enums import Resampling
        from rasterio.vrt import WarpedVRT

        from ..raster import MapRaster, ground_resolution
        from .tilemath import resolution_at

        if self.render_zoom is None:
            raise RuntimeError("RasterSource.prepare(render_zoom) must be called before reading")
        r = self._open_raster()
        self._h_base = r
        ds, z = r.dataset, self.render_zoom
        lat = (self._lonlat[1] + self._lonlat[3]) / 2
        in_res = ground_resolution(ds.crs, ds.transform, ds.width, ds.height) or 0
        if r.lut is not None:
            resampling = Resampling.nearest  # colour indices must not be interpolated
        elif in_res < resolution_at(z, lat):
            resampling = Resampling.average
        else:
            resampling = Resampling.cubic
        res = 2 * WORLD / (TILE_SIZE * 2**z)
        size = TILE_SIZE * 2**z
        add_alpha = r.alpha_band is None
        vrt = WarpedVRT(ds, crs="EPSG:3857", transform=Affine(res, 0, -WORLD, 0, -res, WORLD),
                        width=size, height=size, resampling=resampling, add_alpha=add_alpha)
        alpha = vrt.count if add_alpha else r.alpha_band
        return MapRaster(vrt, self.spec, r.bands, r.lut, alpha, True, True)

    def _read(self, tile: mercantile.Tile) -> SourceTile | None:
        w, s, e, n = mercantile.xy_bounds(tile)
        bw, bs, be, bn = self._bounds_3857
        if e <= bw or w >= be or n <= bs or s >= bn:
            return None
        try:
            rgb, valid = self._raster.read(tile.y * TILE_SIZE, tile.x * TILE_SIZE, TILE_SIZE, TILE_SIZE)
        except Exception as exc:  # rasterio raises its own kinds for broken blocks
            raise TileSourceError(f"raster {self.spec!r} cannot be read for tile {tile.z}/{tile.x}/{tile.y} "
                                  f"({type(exc).__name__}: {exc})") from None
        if not valid.any():
            return None
        rgb = np.where(valid, rgb, 0).astype(np.uint8)
        return SourceTile(_digest(rgb.tobytes() + np.packbits(valid).tobytes()), (rgb, valid))

    def close(self) -> None:
        for name in ("_h_raster", "_h_base"):
            h = getattr(self, name, None)
            if h is not None:
                h.close()
                setattr(self, name, None)


def _union_bounds(tiles: list[mercantile.Tile]) -> tuple[float, float, float, float] | None:
    if not tiles:
        return None
    bs = [mercantile.bounds(t) for t in tiles]
    e = 1e-9  # a hair inside, so that rounding at tile edges pulls in no neighbour
    return (min(b.west for b in bs) + e, min(b.south for b in bs) + e,
            max(b.east for b in bs) - e, max(b.north for b in bs) - e)


URL_RE = re.compile(r"^https?://", re.IGNORECASE)


def open_source(spec: str | os.PathLike, bands: str | tuple[int, ...] | None = None) -> TileSource:
    """Open SOURCE by what it is: URL template, XYZ folder, .mbtiles file, or a raster."""
    text = os.fspath(spec)
    if URL_RE.match(text):
        return TileServer(text)
    path = Path(text)
    if not path.exists():
        raise TileSourceError(f"source {text!r} does not exist: give an XYZ folder, an .mbtiles file, "
                              "a georeferenced raster or an http(s) URL template with {z}/{x}/{y}")
    if path.is_dir():
        return XYZFolder(text)
    with open(path, "rb") as f:
        is_sqlite = f.read(16) == b"SQLite format 3\x00"
    if is_sqlite or path.suffix.lower() == ".mbtiles":
        if not is_sqlite:
            raise TileSourceError(f"{text!r} is named .mbtiles but is not an SQLite file: it is damaged")
        return MBTilesFile(text)
    return RasterSource(text, bands)
