"""The tile server's HTTP side: Starlette routes over a :class:`~.cache.LiveCache`.

Endpoints (GET and HEAD; OPTIONS answers CORS preflights):

- ``/{z}/{x}/{y}.{ext}`` — synthetic aerial tiles: from the cache when their block has
  been checked against the source in this process, else made through the coalescer
  (:mod:`.coalesce`). A tile of a zoom outside ``--zoom``, outside SOURCE's extent, or
  with no source data under it answers ``404`` at once, without rendering (not a
  transparent tile: map clients draw nothing for a 404, and nothing is cached);
- ``/map/{z}/{x}/{y}.{ext}`` — SOURCE's own map tiles, to compare with;
- ``/tilejson.json`` — TileJSON 3.0.0, tile URLs absolute from the request's host;
- ``/`` — the viewer page (:mod:`.viewer`), ``/viewer/…`` its files;
- ``/healthz`` — ``ok`` and the queue's counters, as JSON.

Tiles carry ``Content-Type``, a strong ``ETag`` (the tile's manifest key: it changes
whenever anything the pixels depend on changes) honoured by ``If-None-Match`` with ``304``,
``Cache-Control`` and ``Access-Control-Allow-Origin: *``. Routes match digits only, so no
path reaches a file other than a tile; there is no directory listing.
"""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import asynccontextmanager

import mercantile
from anyio import to_thread
from starlette.datastructures import State
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, Router

from ..errors import TileSourceError
from ..tiles.imaging import encode
from ..tiles.sinks import tilejson
from ..tiles.tilemath import MAX_ZOOM
from .cache import CacheReader, LiveCache, Outcome
from .coalesce import ClientGone, Coalescer, Overloaded
from .viewer import STATIC, page, static_file, viewer_config

log = logging.getLogger(__name__)

__all__ = ["CACHE_CONTROL", "create_app"]

#: Tiles may be kept an hour, then revalidated with their ETag (a 304 costs a key lookup).
CACHE_CONTROL = "public, max-age=3600"
#: Answers that say "no tile here": short, so that a source that grows is seen soon.
MISSING_CACHE_CONTROL = "public, max-age=300"
CORS = {"Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": "ETag"}
#: The headers every tile and 304 carries besides its ETag, encoded once.
TILE_HEADERS = [(b"cache-control", CACHE_CONTROL.encode()),
                *((name.lower().encode(), value.encode()) for name, value in CORS.items())]
#: Cached units remembered as checked against the source; beyond it the set starts again
#: (a unit checked twice costs a read of its source tiles, no model run).
MAX_CHECKED = 200_000
#: Extensions accepted for each format (the canonical one first).
EXTENSIONS = {"png": ("png",), "jpeg": ("jpg", "jpeg"), "webp": ("webp",)}


def create_app(cache: LiveCache, *, workers: int = 1, queue_size: int = 32):
    """The ASGI app serving ``cache``; it closes the cache when the server stops.

    A bare Starlette :class:`~starlette.routing.Router`: the ``Starlette`` app would add two
    middlewares to every tile for what uvicorn already does (a 500 for an exception) and
    exception handlers that no route here raises for."""
    server = _Server(cache, workers, queue_size)

    @asynccontextmanager
    async def lifespan(app):
        server.start()
        try:
            yield
        finally:
            await server.close()

    routes = [  # tiles first: the routes are tried in order, and tiles are nearly every request
        Route("/{z:int}/{x:int}/{y:int}.{ext:str}", server.aerial, methods=["GET", "HEAD"]),
        Route("/", server.index, methods=["GET", "HEAD"]),
        Route("/index.html", server.index, methods=["GET", "HEAD"]),
        Route("/healthz", server.healthz, methods=["GET", "HEAD"]),
        Route("/tilejson.json", server.tilejson, methods=["GET", "HEAD"]),
        Route("/viewer/{name:path}", server.static, methods=["GET", "HEAD"]),
        Route("/map/{z:int}/{x:int}/{y:int}.{ext:str}", server.source_map, methods=["GET", "HEAD"]),
    ]
    app = _cors_preflight(Router(routes=routes, lifespan=lifespan))
    app.state = State({"server": server})
    return app


class _Server:
    def __init__(self, cache: LiveCache, workers: int, queue_size: int) -> None:
        self.cache = cache
        self.coalescer = Coalescer(cache.run_block, workers=workers, queue_size=queue_size, on_done=self._done)
        self.checked: set = set()
        self.chips = self.renders = 0
        self.reader: CacheReader | None = None
        self.exts = EXTENSIONS[cache.opts.fmt]
        self.mime = cache.mime.encode()
        src = cache.source
        have = src.zooms()
        self.map_zooms = (min(have), max(have)) if have else (cache.zooms.min, cache.zooms.max)
        if src.kind == "raster":
            self.map_zooms = (cache.zooms.min, min(cache.zooms.max, 22))

    def start(self) -> None:
        self.reader = self.cache.reader()
        self.coalescer.start()

    def begin_close(self) -> None:
        self.coalescer.begin_close()

    async def close(self) -> None:
        await self.coalescer.close()
        if self.reader is not None:
            self.reader.close()
        await to_thread.run_sync(self.cache.close)

    def _done(self, unit, result) -> None:
        outcomes, chips = result
        self._check(unit)
        self.chips += chips
        self.renders += chips > 0

    def _check(self, unit) -> None:
        if len(self.checked) >= MAX_CHECKED:
            self.checked.clear()
        self.checked.add(unit)

    # -- aerial tiles ---------------------------------------------------------------------------
    async def aerial(self, request: Request) -> Response:
        p = request.path_params
        z, x, y = p["z"], p["x"], p["y"]
        cache = self.cache
        if p["ext"] not in self.exts:
            return _text(404, f"tiles here are {self.exts[0]}: /{z}/{x}/{y}.{self.exts[0]}")
        if z > MAX_ZOOM or x >= 2**z or y >= 2**z:
            return _text(404, f"no tile {z}/{x}/{y}")
        t = mercantile.Tile(x, y, z)
        if z not in cache.zooms:
            return _text(404, f"zoom {z} is outside the served zooms {cache.zooms}", MISSING_CACHE_CONTROL)
        if not cache.in_area(t):
            return _text(404, f"tile {z}/{x}/{y} is outside the source's extent", MISSING_CACHE_CONTROL)
        unit = cache.unit_of(t)
        if unit in self.checked or not cache.live(z):
            answer = self._from_cache(request, t)
            if answer is not None or not cache.live(z):
                return answer or _text(404, f"tile {z}/{x}/{y} is made only by `geo-pix2pix tiles` (zoom {z} "
                                            f"is over {z - cache.render_zoom} levels below the model's)",
                                       MISSING_CACHE_CONTROL)
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            outcome = await self._make(t, unit, gone)
        except Overloaded as exc:
            return _text(503, f"busy: {exc}; retry in {exc.retry_after} s",
                         "no-store", {"Retry-After": str(exc.retry_after)})
        except ClientGone:
            return _text(499, "client went away", "no-store")  # nobody reads it
        finally:
            gone.cancel()
        if outcome.status == "failed":
            return _text(502, f"tile {z}/{x}/{y} failed: {outcome.reason}", "no-store")
        if outcome.status == "empty":
            return _text(404, f"no source data under tile {z}/{x}/{y}", MISSING_CACHE_CONTROL)
        data = outcome.data if outcome.data is not None else self.reader.data(t)
        if data is None:
            return _text(503, "the tile was removed from the cache meanwhile: retry", "no-store", {"Retry-After": "1"})
        if _matches(request, outcome.key):
            return _not_modified(outcome.key)
        return _tile(outcome.key, data, self.mime)

    async def _make(self, t: mercantile.Tile, unit, gone) -> Outcome:
        if unit[0] == "block":
            outcomes, _ = await self.coalescer.get(unit, gone)
            return outcomes[t]
        return await self.coalescer.shared_task(unit, lambda abandoned: self._overview(t, abandoned), gone)

    async def _overview(self, t: mercantile.Tile, abandoned) -> Outcome:
        """An overview tile: its children first (their own units, coalesced), then itself."""
        kids = [k for k in self.cache.children(t) if k is not None]
        await asyncio.gather(*(self._make(k, self.cache.unit_of(k), abandoned) for k in kids))
        outcome = await to_thread.run_sync(self.cache.make_overview, t)
        self._check(self.cache.unit_of(t))
        return outcome

    def _from_cache(self, request: Request, t: mercantile.Tile) -> Response | None:
        row = self.reader.row(t)
        if row is None:
            return None
        key, status = row
        if status == "empty":
            return _text(404, f"no source data under tile {t.z}/{t.x}/{t.y}", MISSING_CACHE_CONTROL)
        if _matches(request, key):
            return _not_modified(key)
        data = self.reader.data(t)
        return None if data is None else _tile(key, data, self.mime)

    # -- the source's map tiles ------------------------------------------------------------------
    async def source_map(self, request: Request) -> Response:
        p = request.path_params
        z, x, y = p["z"], p["x"], p["y"]
        if p["ext"] not in ("png", "jpg", "jpeg", "webp"):
            return _text(404, f"map tiles are /map/{z}/{x}/{y}.png")
        lo, hi = self.map_zooms
        if not lo <= z <= hi or x >= 2**z or y >= 2**z:
            return _text(404, f"the source's map has no zoom {z} tiles here (zooms {lo}-{hi})", MISSING_CACHE_CONTROL)
        try:
            found = await to_thread.run_sync(self._read_map, mercantile.Tile(x, y, z))
        except TileSourceError as exc:
            return _text(502, str(exc), "no-store")
        if found is None:
            return _text(404, f"the source has no map tile {z}/{x}/{y}", MISSING_CACHE_CONTROL)
        digest, data, mime = found
        if _matches(request, digest):
            return _not_modified(digest)
        return _tile(digest, data, mime.encode())

    def _read_map(self, t: mercantile.Tile):
        src = self.cache.map_source(t.z)
        st = src.get(t)
        if st is None:
            return None
        if isinstance(st.payload, bytes):
            return st.digest[:40], st.payload, _sniff(st.payload)
        data = encode(*st.payload, "png")
        return None if data is None else (st.digest[:40], data, "image/png")

    # -- documents ---------------------------------------------------------------------------------
    async def tilejson(self, request: Request) -> Response:
        base = str(request.base_url).rstrip("/")
        doc = tilejson(self.cache.info, f"{base}/{{z}}/{{x}}/{{y}}.{self.exts[0]}")
        return Response(json.dumps(doc, indent=1), 200, {"Cache-Control": "no-cache", **CORS},
                        media_type="application/json")

    async def index(self, request: Request) -> Response:
        info, cache = self.cache.info, self.cache
        cfg = viewer_config(name=info.name, bounds=info.bounds, minzoom=cache.zooms.min, maxzoom=cache.zooms.max,
                            aerial_url=f"{{z}}/{{x}}/{{y}}.{self.exts[0]}", aerial_attribution=info.attribution,
                            aerial_zooms=(cache.zooms.min, cache.zooms.max),
                            map_url="map/{z}/{x}/{y}.png", map_attribution=cache.source.attribution(),
                            map_zooms=self.map_zooms)
        return Response(page(cfg), 200, {"Cache-Control": "no-cache"}, media_type="text/html")

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:
            return _text(404, "not found")
        return Response(static_file(name), 200, {"Cache-Control": "public, max-age=86400", **CORS},
                        media_type=STATIC[name])

    async def healthz(self, request: Request) -> Response:
        c = self.coalescer
        s = c.stats
        doc = {"status": "stopping" if c.closing else "ok", "queued": len(c.queue), "rendering": c.running,
               "queue_size": c.queue_size, "jobs": s.jobs, "renders": self.renders, "chips": self.chips,
               "coalesced": s.coalesced, "dropped": s.dropped, "rejected": s.rejected}
        return Response(json.dumps(doc), 503 if c.closing else 200, {"Cache-Control": "no-store", **CORS},
                        media_type="application/json")


def _matches(request: Request, key: str) -> bool:
    # The raw headers, as request.headers.get would find them (the first one), without
    # building its mapping: this runs for every tile.
    header = next((value for name, value in request.scope["headers"] if name == b"if-none-match"), None)
    if not header:
        return False
    tags = [tag.strip().removeprefix(b"W/") for tag in header.split(b",")]
    return b'"%s"' % key.encode() in tags or b"*" in tags


class _TileResponse(Response):
    """A tile (200) or its 304, its headers given encoded: Response's own header building
    (a dict encoded item by item) is a visible share of a cached tile's cost."""

    def __init__(self, status: int, key: str, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.status_code, self.body, self.background = status, body, None
        self.raw_headers = [(b"etag", b'"%s"' % key.encode()), *TILE_HEADERS, *headers]


def _tile(key: str, data: bytes, mime: bytes) -> Response:
    return _TileResponse(200, key, data, [(b"content-type", mime), (b"content-length", b"%d" % len(data))])


def _not_modified(key: str) -> Response:
    return _TileResponse(304, key, b"", [])


def _text(status: int, text: str, cache_control: str = "no-cache", headers: dict | None = None) -> Response:
    return Response(text + "\n", status, {"Cache-Control": cache_control, **CORS, **(headers or {})},
                    media_type="text/plain")


def _sniff(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


async def _disconnected(request: Request) -> None:
    """Done when the client closes its connection (ASGI ``http.disconnect``)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _cors_preflight(app):
    """Answer OPTIONS (CORS preflight) for every path at once; pass the rest to ``app``."""

    async def asgi(scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "OPTIONS":
            headers = [(b"access-control-allow-origin", b"*"), (b"access-control-allow-methods", b"GET, HEAD, OPTIONS"),
                       (b"access-control-allow-headers", b"*"), (b"access-control-max-age", b"86400"),
                       (b"content-length", b"0")]
            await send({"type": "http.response.start", "status": 204, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        await app(scope, receive, send)

    asgi.app = app
    return asgi
