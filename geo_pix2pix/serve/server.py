"""Running the tile server: in the foreground (the CLI) or in a background thread (QGIS, tests).

uvicorn serves the app of :mod:`.app`. On SIGINT or SIGTERM it stops accepting
connections; the coalescer then answers queued requests with 503 and lets the renders
already running finish, so every tile and manifest row is written whole; the cache's
metadata is written and its lock released. A restart serves the cache at once.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from dataclasses import replace
from pathlib import Path

from ..errors import MissingDependencyError, OptionError
from ..tiles.options import TileOptions

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_QUEUE", "LiveServer", "serve", "start_background"]

#: Blocks waiting for the model before new ones are refused with 503: a few screens of tiles.
DEFAULT_QUEUE = 32
#: Seconds the server waits for open connections at shutdown before closing them.
GRACEFUL_SECONDS = 10


def _uvicorn():
    try:
        import starlette  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise MissingDependencyError(f"geo-pix2pix serve needs the serve extra ({exc}): "
                                     "pip install \"geo-pix2pix[serve]\"") from None
    return uvicorn


class LiveServer:
    """A tile server, configured and not yet running (see :func:`serve`, :func:`start_background`)."""

    def __init__(self, source, cache=None, *, host: str = "127.0.0.1", port: int = 8000, zooms="12-18",
                 model=None, workers: int = 1, queue_size: int = DEFAULT_QUEUE, area=None,
                 options: TileOptions | None = None, **kwargs) -> None:
        uvicorn = _uvicorn()
        from .app import create_app
        from .cache import LiveCache

        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise OptionError(f"--workers {workers!r} must be at least 1 (model runs at once)")
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
            raise OptionError(f"--queue {queue_size!r} must be at least 1 (blocks waiting for the model)")
        if not 0 <= int(port) <= 65535:
            raise OptionError(f"--port {port!r} must be from 0 to 65535 (0: any free port)")
        self._temporary = None
        if cache is None:  # tiles kept while the server runs only
            self._temporary = Path(tempfile.mkdtemp(prefix="geo-pix2pix-serve-"))
            cache = self._temporary / "tiles"
        opts = replace(options or TileOptions(), **kwargs)
        try:
            self.cache = LiveCache(source, cache, zooms=zooms, model=model, area=area, options=opts)
        except BaseException:
            self._remove_temporary()
            raise
        app = create_app(self.cache, workers=workers, queue_size=queue_size)
        self.app = app
        config = uvicorn.Config(app, host=host, port=int(port), log_config=None, access_log=False, lifespan="on",
                                timeout_graceful_shutdown=GRACEFUL_SECONDS)
        self.server = _server_class()(config)
        self.server.on_shutdown = app.state.server.begin_close
        self.host = host
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port listened on (the one chosen when 0 was asked), once started."""
        for s in getattr(self.server, "servers", []):
            for sock in s.sockets:
                return sock.getsockname()[1]
        return self.server.config.port

    @property
    def running(self) -> bool:
        """A background server that accepts connections and has not been asked to stop."""
        return (self._thread is not None and self._thread.is_alive() and self.server.started
                and not self.server.should_exit)

    @property
    def url(self) -> str:
        host = self.host if self.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/"

    def describe(self) -> str:
        c = self.cache
        where = "a temporary folder (pass --cache to keep the tiles)" if self._temporary else str(c.dest)
        return (f"serving {self.url} : synthetic aerial tiles at zooms {c.zooms} (the model at zoom {c.render_zoom}) "
                f"of {c.area.label or c.area.bounds}, cached in {where}; the viewer at {self.url}")

    def run(self) -> None:
        """Serve until SIGINT/SIGTERM (in the main thread) or :meth:`stop`."""
        try:
            self.server.run()
        finally:
            if not self.server.started:  # it failed before the app's shutdown closed the cache
                self.cache.close()
            self._remove_temporary()

    def start(self, timeout: float = 60) -> LiveServer:
        """Serve from a background thread; returns once the server accepts connections."""
        self._thread = threading.Thread(target=self.run, name="geo-pix2pix-serve", daemon=True)
        self._thread.start()
        waited = threading.Event()
        for _ in range(int(timeout * 20)):
            if self.server.started or not self._thread.is_alive():
                break
            waited.wait(0.05)
        if not self.server.started:
            self.stop()
            raise OptionError(f"the tile server did not start on {self.host}:{self.server.config.port} (is the "
                              "port in use? pass another --port, or 0 for any free one)")
        return self

    def stop(self, timeout: float = 60) -> None:
        """Stop a background server: queued requests get 503, running renders finish."""
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)

    def _remove_temporary(self) -> None:
        if self._temporary is not None:
            shutil.rmtree(self._temporary, ignore_errors=True)
            self._temporary = None


def _server_class():
    uvicorn = _uvicorn()

    class Server(uvicorn.Server):
        """uvicorn's server, telling the app the moment shutdown starts (before it waits for
        connections): requests waiting in the queue are answered 503 instead of holding it."""

        on_shutdown = None

        async def shutdown(self, sockets=None) -> None:
            if self.on_shutdown is not None:
                self.on_shutdown()
            await super().shutdown(sockets=sockets)

    return Server


def serve(source, cache=None, **kwargs) -> None:
    """Serve synthetic aerial tiles of ``source`` live until SIGINT/SIGTERM (see
    :class:`LiveServer` for the keywords; other keywords are :class:`TileOptions` fields)."""
    server = LiveServer(source, cache, **kwargs)
    log.info("%s", server.describe())
    server.run()


def start_background(source, cache=None, **kwargs) -> LiveServer:
    """Start a tile server in a background thread of this process and return it, running
    (``port=0`` picks a free port; ``server.url`` says which). ``server.stop()`` stops it."""
    server = LiveServer(source, cache, **kwargs)
    server.start()
    log.info("%s", server.describe())
    return server
