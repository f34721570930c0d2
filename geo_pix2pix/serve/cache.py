"""The live cache: the ``tiles`` cache written one request at a time.

:class:`LiveCache` opens SOURCE and DEST as ``geo-pix2pix tiles`` does (the same plan,
settings digest, manifest, sinks and metadata) and makes tiles in *units*:

- a **block**: an aligned block of ``meta_size``² tiles of one zoom at or above the
  model's zoom. Its job runs :func:`~geo_pix2pix.tiles.metatile.run_metatile` over the
  render-zoom tiles under the block, with only the block's tiles as their families, and
  records the result with :func:`~geo_pix2pix.tiles.seed.record_result`: the tiles and
  manifest rows of a ``tiles`` run, made by the same code. Like a ``tiles`` rerun, a
  block's job first compares every tile's key with the manifest and renders only the
  stale or missing ones (a block already up to date reads the source, not the model);
- an **overview** tile below the model's zoom, made from its four children by
  :func:`~geo_pix2pix.tiles.seed.overview_tile`.

SQLite objects belong to the thread that opened them, so the manifest and sinks live in
one writer thread (:meth:`LiveCache.call`); render threads run the model and hand their
results to it. Requests read finished tiles through :class:`CacheReader`'s own
read-only connections. Every tile is written before its manifest row is committed, as in
``tiles``: a server killed at any point leaves a cache that the next run reads.
"""

from __future__ import annotations

import logging
import os
import pickle
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import mercantile

from ..errors import OptionError, OutputExistsError, TileSourceError
from ..io.atomic import sweep_stale
from ..model.provenance import model_identity
from ..tiles.area import Area
from ..tiles.imaging import FORMATS
from ..tiles.manifest import Manifest, destination_lock, work_dir
from ..tiles.metatile import MetaJob, run_metatile
from ..tiles.options import TileOptions
from ..tiles.plan import Plan, children_of
from ..tiles.seed import (
    _check_dest,
    _info,
    _render_zoom,
    _resolve_model,
    _Run,
    overview_tile,
    record_result,
    render_settings,
)
from ..tiles.sinks import MBTilesSink, XYZSink, sink_kind
from ..tiles.sources import TileSource, open_source
from ..tiles.tilemath import parse_zoom_range

log = logging.getLogger(__name__)

__all__ = ["CacheReader", "LiveCache", "MAX_LIVE_OVERVIEW_LEVELS", "Outcome"]

#: Overview zooms below the model's made on request: a tile that many levels up needs
#: 4**3 render-zoom tiles (one 8×8 metatile); lower ones are served from the cache only.
MAX_LIVE_OVERVIEW_LEVELS = 3
#: Tiles whose place in the area is remembered; beyond it the memory starts again.
MAX_REMEMBERED = 200_000


@dataclass(frozen=True)
class Outcome:
    """What a unit's job left for one tile: ``ok`` (data), ``empty`` (no source data under
    it), ``cached`` (up to date in the cache: read it there) or ``failed`` (reason)."""

    status: str
    key: str | None = None
    data: bytes | None = None
    reason: str = ""


class LiveCache:
    """SOURCE, the model and DEST opened for live rendering (see the module docstring)."""

    def __init__(self, source: str | os.PathLike | TileSource, dest: str | os.PathLike, *, zooms="12-18",
                 model=None, area: Area | None = None, options: TileOptions | None = None) -> None:
        self.opts = opts = options or TileOptions()
        self.dest, self.kind = Path(dest), sink_kind(dest)
        if self.kind == "pmtiles":
            raise OptionError(f"--cache {str(dest)!r}: a PMTiles archive is written whole, in tile-id order, and "
                              "cannot take tiles one at a time; serve into a folder or an .mbtiles file (and "
                              "publish PMTiles with `geo-pix2pix tiles SOURCE aerial.pmtiles`)")
        _check_dest(self.dest, self.kind)
        self.zooms = parse_zoom_range(zooms)
        self.source = source if isinstance(source, TileSource) else open_source(source, opts.bands)
        self._writer = None
        try:
            if area is None:
                bounds = self.source.bounds()
                if bounds is None:
                    raise OptionError(f"source {self.source.spec!r} does not tell its extent: pass --bbox W,S,E,N")
                area = Area.of_source(bounds, self.source.spec)
            self.area = area
            self._inside: dict[mercantile.Tile, bool] = {}
            self.model, _ = _resolve_model(model, opts.device)
            zn = _render_zoom(opts.render_zoom, self.model, area, self.zooms)
            have = self.source.zooms()
            if have is not None and zn not in have:
                raise TileSourceError(f"source {self.source.spec!r} has no zoom {zn} tiles (it has zooms "
                                      f"{min(have)}-{max(have)}) and the model runs at zoom {zn}: pass "
                                      "--render-zoom with a zoom it has" if have else
                                      f"source {self.source.spec!r} holds no tiles")
            self.source.prepare(zn)
            self.render_zoom = zn
            self.plan = Plan(area, self.zooms, zn, opts.meta_size, render_zoom_given=opts.render_zoom is not None)
            self.identity = model_identity(self.model)
            self.settings = render_settings(self.identity, zn, opts)
            self.info = _info(self.dest, self.plan, opts, self.source, self.model, self.identity)
            self.ext, self.mime = FORMATS[opts.fmt][1], FORMATS[opts.fmt][2]
            self._local = threading.local()
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="geo-pix2pix-cache")
            self.call(self._open)
        except BaseException:
            self.close()
            raise

    # -- the writer thread -----------------------------------------------------------------
    def call(self, fn: Callable, *args):
        """Run ``fn(*args)`` in the writer thread and return its result."""
        return self._writer.submit(fn, *args).result()

    def _open(self) -> None:
        work = work_dir(self.dest, self.kind)
        man_path = work / "manifest.sqlite"
        if self.dest.exists() and not man_path.exists() and not (
                self.kind == "xyz" and self.dest.is_dir() and not any(self.dest.iterdir())):
            raise OutputExistsError(f"--cache {str(self.dest)!r} exists and was not made by geo-pix2pix: choose "
                                    "another --cache (serve writes only into caches it or `tiles` made)")
        self._lock = destination_lock(work, str(self.dest)).__enter__()
        self._run = None
        if self.kind == "xyz":  # temporaries that a run killed with -9 left (dead owners only)
            sweep_stale(self.dest, "tilejson.json")
            sweep_stale(work / "incoming")
        else:
            sweep_stale(self.dest.parent, self.dest.name)
        manifest = Manifest(man_path)
        have = manifest.meta("format")
        if have not in (None, self.opts.fmt):
            manifest.close()
            raise OptionError(f"--cache {str(self.dest)!r} holds {have} tiles: pass --format {have}, or choose "
                              "another --cache")
        manifest.set_meta(format=self.opts.fmt)
        manifest.commit()
        sink = XYZSink(self.dest, self.opts.fmt, scratch=work / "incoming") if self.kind == "xyz" \
            else MBTilesSink(self.dest, self.opts.fmt)
        hidden = MBTilesSink(work / "hidden.mbtiles", self.opts.fmt) \
            if any(not self.plan.requested(z) for z in self.plan.stored_levels) else None
        self._run = _Run(self.plan, manifest, sink, hidden, None)

    def close(self) -> None:
        """Write the cache's metadata (tilejson.json, MBTiles metadata) if it changed, and
        close it; the lock on DEST is released."""
        if self._writer is None:
            self.source.close()
            return
        try:
            self.call(self._close)
        finally:
            self._writer.shutdown(wait=True)
            self._writer = None
            self.source.close()

    def _close(self) -> None:
        run = getattr(self, "_run", None)
        try:
            if run is not None:
                run.commit()
                if run.wrote or run.manifest.dirty:
                    info = replace(self.info, version=max(run.manifest.generation, 1))
                    run.sink.finish(info)
                    run.manifest.mark_published()
        finally:
            if run is not None:
                for s in (run.sink, run.hidden):
                    if s is not None:
                        s.close()
                run.manifest.close()
            lock = getattr(self, "_lock", None)
            if lock is not None:
                lock.__exit__(None, None, None)

    # -- units -------------------------------------------------------------------------------
    def in_area(self, t: mercantile.Tile) -> bool:
        # Every request asks, and a polygon area answers with NumPy work: remember the answers.
        inside = self._inside.get(t)
        if inside is None:
            if len(self._inside) >= MAX_REMEMBERED:
                self._inside.clear()
            inside = self._inside[t] = (t.x, t.y) in self.area.members(t.z, t.x, t.y, t.x + 1, t.y + 1)
        return inside

    def live(self, z: int) -> bool:
        """Whether tiles of zoom ``z`` are made on request (else only served from the cache)."""
        return z in self.zooms and z >= self.render_zoom - MAX_LIVE_OVERVIEW_LEVELS

    def unit_of(self, t: mercantile.Tile) -> tuple:
        if t.z >= self.render_zoom:
            m = self.opts.meta_size
            return ("block", t.z, t.x // m, t.y // m)
        return ("overview", t.z, t.x, t.y)

    def children(self, t: mercantile.Tile) -> list[mercantile.Tile | None]:
        """An overview tile's four children, None outside the area (as ``tiles`` builds it)."""
        x, y, z = 2 * t.x, 2 * t.y, t.z + 1
        return children_of(t, self.area.members(z, x, y, x + 2, y + 2))

    def run_block(self, unit: tuple) -> tuple[dict[mercantile.Tile, Outcome], int]:
        """Render the stale tiles of a block (in a render thread): Tile → Outcome for the
        block's tiles in the area, and the number of chips the model ran."""
        _, z, bx, by = unit
        m, zn = self.opts.meta_size, self.render_zoom
        f = 2 ** (z - zn)
        inside = self.area.members(z, bx * m, by * m, (bx + 1) * m, (by + 1) * m)
        fams: dict[mercantile.Tile, list[mercantile.Tile]] = {}
        for x, y in sorted(inside, key=lambda p: (p[1], p[0])):
            fams.setdefault(mercantile.Tile(x // f, y // f, zn), []).append(mercantile.Tile(x, y, z))
        pairs = [(b, tuple(fam)) for b, fam in sorted(fams.items(), key=lambda kv: (kv[0].y, kv[0].x))]
        if not pairs:
            return {}, 0
        tiles = [t for _, fam in pairs for t in fam]
        known = self.call(self._run.known, tiles)
        job = MetaJob(0, tuple(b for b, _ in pairs), tuple(fam for _, fam in pairs),
                      {t: key for t, (key, _) in known.items()})
        result = run_metatile(job, self._thread_source(), self.model, self.settings)
        statuses = {t: status for t, (_, status) in known.items()}
        self.call(self._record, pairs, statuses, result)
        made = {t: (key, data) for t, key, data in result.outputs}
        failed = dict(result.failed)
        out = {}
        for b, fam in pairs:
            for t in fam:
                if b in failed:
                    out[t] = Outcome("failed", reason=failed[b])
                elif t in made:
                    key, data = made[t]
                    out[t] = Outcome("ok" if data is not None else "empty", key, data)
                else:
                    key, status = known[t]
                    out[t] = Outcome("cached" if status != "empty" else "empty", key)
        return out, result.chips

    def _record(self, pairs, statuses, result) -> None:
        record_result(self._run, pairs, statuses, result)
        self._run.commit()

    def make_overview(self, t: mercantile.Tile) -> Outcome:
        """Make (or confirm) overview tile ``t``, its children being done (writer thread)."""
        return self.call(self._overview, t)

    def _overview(self, t: mercantile.Tile) -> Outcome:
        run = self._run
        kids = self.children(t)
        kid_keys = {k: key for k, (key, _) in run.manifest.lookup([k for k in kids if k is not None]).items()}
        known = run.known([t]).get(t)
        overview_tile(run, self.settings, t, kids, kid_keys, known, run.store(t.z + 1))
        run.commit()
        key, status = run.manifest.lookup([t])[t]
        if status == "empty":
            return Outcome("empty", key)
        return Outcome("ok", key, run.store(t.z).get(t))

    def _thread_source(self) -> TileSource:
        """This thread's own copy of SOURCE (its SQLite and GDAL handles are per thread)."""
        src = getattr(self._local, "source", None)
        if src is None:
            src = self._local.source = pickle.loads(pickle.dumps(self.source))
        return src

    def map_source(self, z: int) -> TileSource:
        """This thread's SOURCE for reading map tiles of zoom ``z`` (a raster is read at ``z``)."""
        by_zoom = getattr(self._local, "maps", None)
        if by_zoom is None:
            by_zoom = self._local.maps = {}
        src = by_zoom.get(z)
        if src is None:
            src = by_zoom[z] = pickle.loads(pickle.dumps(self.source))
            src.prepare(z)
        return src

    def reader(self) -> CacheReader:
        return CacheReader(self)


class CacheReader:
    """Reads finished tiles and their keys, with read-only connections of the calling thread."""

    def __init__(self, cache: LiveCache) -> None:
        work = work_dir(cache.dest, cache.kind)
        self.kind, self.root, self.ext = cache.kind, os.fspath(cache.dest), cache.ext
        self.manifest = _read_only(work / "manifest.sqlite")
        self.tiles = _read_only(cache.dest) if cache.kind == "mbtiles" else None

    def row(self, t: mercantile.Tile) -> tuple[str, str] | None:
        """(key, status) of ``t`` in the manifest, None if not recorded."""
        return self.manifest.execute("SELECT key, status FROM tiles WHERE z=? AND x=? AND y=?",
                                     (t.z, t.x, t.y)).fetchone()

    def data(self, t: mercantile.Tile) -> bytes | None:
        if self.tiles is None:
            # The warm path: a plain string path and four system calls (open() adds a buffer,
            # an isatty, a seek and more reads). Tiles are replaced whole, by a rename, so the
            # file this descriptor opened keeps the size fstat gives.
            try:
                fd = os.open(f"{self.root}/{t.z}/{t.x}/{t.y}.{self.ext}", os.O_RDONLY)
            except FileNotFoundError:
                return None
            try:
                return os.read(fd, os.fstat(fd).st_size)
            finally:
                os.close(fd)
        row = self.tiles.execute("SELECT tile_data FROM tiles WHERE zoom_level=? AND tile_column=? AND tile_row=?",
                                 (t.z, t.x, 2**t.z - 1 - t.y)).fetchone()
        return bytes(row[0]) if row else None

    def close(self) -> None:
        for db in (self.manifest, self.tiles):
            if db is not None:
                db.close()


def _read_only(path: Path) -> sqlite3.Connection:
    # A writer commits in the other thread: wait for its short exclusive lock, not fail.
    return sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True, timeout=10, check_same_thread=False)
