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
import http.client
import json
import logging
import os
import re
import socket
import sqlite3
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from pathlib import Path
from typing import NamedTuple

import mercantile
import numpy as np

from .._version import __version__
from ..errors import InputRasterError, NotGeoreferencedWarning, TileSourceError
from .imaging import decode
from .tilemath import MAX_LATITUDE, TILE_SIZE

log = logging.getLogger(__name__)

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
        """The source's attribution (copyright, licence), carried into the output's metadata."""
        return None

    def public_name(self) -> str:
        """How metadata names the source: a file's name without the folders above it (no
        local path is published), a URL without its query string or credentials."""
        return os.path.basename(self.spec.rstrip("/\\")) or self.spec

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
        xs, ys = _Extent(), _Extent()  # min and max only: the folder may hold millions of tiles
        for xd in os.scandir(self.root / str(z)):
            if xd.is_dir() and xd.name.isdigit():
                for f in os.scandir(xd.path):
                    stem = f.name.split(".", 1)[0]
                    if stem.isdigit():
                        xs.add(int(xd.name))
                        ys.add(int(stem))
        return _extent_bounds(xs, ys, z)

    def attribution(self) -> str | None:
        """From the folder's tilejson.json (gdal2tiles, geo-pix2pix, tile servers) or
        metadata.json (mb-util)."""
        for name in ("tilejson.json", "metadata.json"):
            try:
                with open(self.root / name, encoding="utf-8") as f:
                    doc = json.load(f)
            except (OSError, ValueError, RecursionError):
                continue
            text = doc.get("attribution") if isinstance(doc, dict) else None
            if isinstance(text, str) and text.strip():
                return text.strip()
        return None

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
            self._zooms = set()
            for (z,) in db.execute("SELECT DISTINCT zoom_level FROM tiles"):
                if isinstance(z, float) and z.is_integer():
                    z = int(z)
                if isinstance(z, bool) or not isinstance(z, int) or not 0 <= z <= 30:
                    raise TileSourceError(f"MBTiles {spec!r} has tiles with zoom_level {z!r}, not a zoom (a whole "
                                          "number from 0 to 30): it is not valid MBTiles; fix or delete those rows")
                self._zooms.add(z)
            self.meta = {str(k): v for k, v in db.execute("SELECT name, value FROM metadata")} \
                if "metadata" in names else {}
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
        """The extent of the tiles at the deepest zoom (an index range, not a scan), narrowed
        to the metadata's ``bounds`` where they say less: writers often leave those at the
        whole world."""
        data = None
        if self._zooms:
            z = max(self._zooms)
            row = self._db.execute(
                "SELECT MIN(tile_column), MAX(tile_column), MIN(tile_row), MAX(tile_row) FROM tiles "
                "WHERE zoom_level=? AND typeof(tile_column)='integer' AND typeof(tile_row)='integer'",
                (z,)).fetchone()
            if row and row[0] is not None:
                xs, ys = _Extent(), _Extent()
                xs.add(row[0])
                xs.add(row[1])
                ys.add(2**z - 1 - row[3])
                ys.add(2**z - 1 - row[2])
                data = _extent_bounds(xs, ys, z)
        try:
            meta = tuple(float(v) for v in str(self.meta["bounds"]).split(","))
            if len(meta) != 4 or meta[0] > meta[2] or meta[1] >= meta[3]:
                raise ValueError
        except (KeyError, ValueError, TypeError):
            return data
        if data is None:
            return meta
        w, s, e, n = max(meta[0], data[0]), max(meta[1], data[1]), min(meta[2], data[2]), min(meta[3], data[3])
        return (w, s, e, n) if w < e and s < n else data

    def attribution(self) -> str | None:
        text = self.meta.get("attribution")
        return text.strip() if isinstance(text, str) and text.strip() else None

    def _read(self, tile: mercantile.Tile) -> SourceTile | None:
        row = self._db.execute(
            "SELECT tile_data FROM tiles WHERE zoom_level=? AND tile_column=? AND tile_row=?",
            (tile.z, tile.x, 2**tile.z - 1 - tile.y)).fetchone()
        if row is None:
            return None
        if not isinstance(row[0], bytes):
            what = "NULL" if row[0] is None else f"a {type(row[0]).__name__}, not a blob"
            raise TileSourceError(f"MBTiles tile {tile.z}/{tile.x}/{tile.y} of {self.spec!r} has no image data "
                                  f"(tile_data is {what}); it is skipped")
        data = bytes(row[0])
        return SourceTile(_digest(data), data)

    def close(self) -> None:
        if getattr(self, "_h_db", None) is not None:
            self._h_db.close()
            self._h_db = None


class TileServer(TileSource):
    """A tile server's URL template.

    Every request has a total ``deadline`` (connect, headers and body together: a server
    that trickles bytes or never answers cannot hold a tile longer), ``tries`` attempts
    in all, with ``backoff`` seconds doubling between them, for connection errors,
    time-outs, 429 and 5xx answers. A tile that fails them all is reported failed (the
    run goes on, exit code 3, a rerun retries it). After ``breaker`` tiles in a row have
    failed so, the server is taken as down: further tiles get one attempt, not
    ``tries``, until one succeeds, so a dead server costs a deadline per tile at most.
    """

    kind = "tile server"
    tries = 3
    deadline = 30.0  # s per request, connect + read, whatever the server does
    backoff = 0.5  # s before the second try, doubling
    breaker = 3  # failed tiles in a row after which tiles get a single try

    def __init__(self, spec: str) -> None:
        super().__init__(spec)
        if not all(k in spec for k in ("{z}", "{x}")) or not ("{y}" in spec or "{-y}" in spec):
            raise TileSourceError(f"URL template {spec!r} must contain {{z}}, {{x}} and {{y}} (or {{-y}} "
                                  "for TMS rows), e.g. http://127.0.0.1:8080/{z}/{x}/{y}.png")

    def url(self, tile: mercantile.Tile) -> str:
        return (self.spec.replace("{z}", str(tile.z)).replace("{x}", str(tile.x))
                .replace("{-y}", str(2**tile.z - 1 - tile.y)).replace("{y}", str(tile.y)))

    def public_name(self) -> str:
        parts = urllib.parse.urlsplit(self.spec)
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))

    def _read(self, tile: mercantile.Tile) -> SourceTile | None:
        url = self.url(tile)
        shown = _without_secrets(url)
        req = urllib.request.Request(url, headers={"User-Agent": f"geo-pix2pix/{__version__} (tiles)"})
        failed_in_a_row = getattr(self, "_h_failed", 0)
        tries = 1 if failed_in_a_row >= self.breaker else self.tries
        for attempt in range(tries):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                data, status = _fetch(req, self.deadline)
                self._h_failed = 0
                if status == 204 or not data:
                    return None
                return SourceTile(_digest(data), data)
            except urllib.error.HTTPError as exc:
                if exc.code in (404, 410):
                    self._h_failed = 0
                    return None
                if exc.code < 500 and exc.code != 429:
                    raise TileSourceError(f"{shown} answered HTTP {exc.code} {exc.reason}: check the URL "
                                          "template and access to the server") from None
                reason = f"HTTP {exc.code}"
            except _DeadlineExceeded:
                reason = f"no complete answer within {self.deadline:g} s"
            except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
                reason = str(getattr(exc, "reason", None) or exc) or type(exc).__name__
        self._h_failed = failed_in_a_row + 1
        times = f"{tries} times" if tries > 1 else "once (the server failed the tiles before it too)"
        raise TileSourceError(f"{shown} failed {times} ({reason}); the tile is skipped")


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
            tags = ds.tags()
        self._attribution = _raster_attribution(tags)
        if w >= 180 or e <= -180:  # e.g. longitudes 0..360: beyond Web Mercator's world
            raise InputRasterError(
                f"raster {self.spec!r} lies at longitudes {w:g}..{e:g}, beyond ±180°, outside Web Mercator "
                "tiles: warp it to longitudes -180..180 first, e.g. gdalwarp -t_srs EPSG:4326 "
                "--config CENTER_LONG 0 in.tif out.tif")
        if w < -180 or e > 180:
            log.warning("raster %s reaches longitudes %g..%g: only its part within ±180° is tiled", self.spec, w, e)
        return merc, (max(w, -180.0), max(s, -MAX_LATITUDE), min(e, 180.0), min(n, MAX_LATITUDE))

    def attribution(self) -> str | None:
        return getattr(self, "_attribution", None)

    def _open_raster(self):
        from ..io.read import open_map_raster

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

        from ..io.geodesy import ground_resolution
        from ..io.read import MapRaster
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
        if bw > be:  # across the antimeridian: outside means between its east and west edges
            if be <= w and e <= bw or n <= bs or s >= bn:
                return None
        elif e <= bw or w >= be or n <= bs or s >= bn:
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


class _DeadlineExceeded(Exception):
    pass


class _Watchdog:
    """Shuts a connection's socket down when the request's deadline passes: a blocked
    connect, read or TLS handshake then returns at once, whatever the server does."""

    def __init__(self, deadline: float) -> None:
        self.deadline, self.fired, self.sockets = deadline, False, []
        self.lock = threading.Lock()
        self.timer = threading.Timer(max(deadline - time.monotonic(), 0), self._fire)
        self.timer.daemon = True
        self.timer.start()

    def _fire(self) -> None:
        with self.lock:
            self.fired = True
            for sock in self.sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def watch(self, sock) -> None:
        with self.lock:
            self.sockets.append(sock)
            fired = self.fired
        if fired:
            self._fire()

    def cancel(self) -> None:
        self.timer.cancel()


def _fetch(req: urllib.request.Request, seconds: float) -> tuple[bytes, int]:
    """GET with a total deadline (urllib's ``timeout`` bounds each socket operation only)."""
    deadline = time.monotonic() + seconds
    dog = _Watchdog(deadline)

    class Watched(http.client.HTTPConnection):
        def connect(self):
            super().connect()
            dog.watch(self.sock)

    class WatchedTLS(http.client.HTTPSConnection):
        def connect(self):
            super().connect()
            dog.watch(self.sock)

    class Handler(urllib.request.HTTPHandler):
        def http_open(self, r):
            return self.do_open(Watched, r)

    class TLSHandler(urllib.request.HTTPSHandler):
        def https_open(self, r):
            return self.do_open(WatchedTLS, r, context=self._context)

    opener = urllib.request.build_opener(Handler, TLSHandler)
    try:
        with opener.open(req, timeout=max(min(seconds, deadline - time.monotonic()), 0.001)) as resp:
            chunks = []
            while True:
                chunk = resp.read1(1 << 16) if hasattr(resp, "read1") else resp.read(1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    raise _DeadlineExceeded()
            if dog.fired:
                raise _DeadlineExceeded()  # the socket was shut mid-body: what came is not the tile
            return b"".join(chunks), resp.status
    except _DeadlineExceeded:
        raise
    except Exception:
        if dog.fired or time.monotonic() >= deadline:
            raise _DeadlineExceeded() from None
        raise
    finally:
        dog.cancel()


def _without_secrets(url: str) -> str:
    """A URL as shown in messages: no credentials, no query string (API keys live there)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "…" if parts.query else "", ""))


class _Extent:
    """Running min and max of integers."""

    def __init__(self) -> None:
        self.lo: int | None = None
        self.hi: int | None = None

    def add(self, v: int) -> None:
        self.lo = v if self.lo is None else min(self.lo, v)
        self.hi = v if self.hi is None else max(self.hi, v)


def _extent_bounds(xs: _Extent, ys: _Extent, z: int) -> tuple[float, float, float, float] | None:
    """Lon/lat bounds of the tiles from columns xs.lo..xs.hi and rows ys.lo..ys.hi of zoom z."""
    if xs.lo is None or ys.lo is None:
        return None
    top = 2**z - 1
    if not (0 <= xs.lo <= xs.hi <= top and 0 <= ys.lo <= ys.hi <= top):
        return None
    nw = mercantile.bounds(mercantile.Tile(xs.lo, ys.lo, z))
    se = mercantile.bounds(mercantile.Tile(xs.hi, ys.hi, z))
    e = 1e-9  # a hair inside, so that rounding at tile edges pulls in no neighbour
    return nw.west + e, se.south + e, se.east - e, nw.north - e


def _raster_attribution(tags: dict) -> str | None:
    """A raster's attribution: its ATTRIBUTION tag (geo-pix2pix osm-map, many producers),
    else its copyright tag, else where it was made from (SOURCE)."""
    for name in ("ATTRIBUTION", "COPYRIGHT", "TIFFTAG_COPYRIGHT"):
        value = str(tags.get(name) or "").strip()
        if value:
            return value
    value = str(tags.get("SOURCE") or "").strip()
    return f"source: {os.path.basename(value)}" if value else None


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
