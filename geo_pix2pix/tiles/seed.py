"""The ``tiles`` run: make or refresh a synthetic-aerial XYZ cache from map tiles.

:func:`make_tiles` ties the parts together, in the manner of gdal2tiles (``--resume``,
``--processes``), MapProxy seeding (``meta_size``, ``--continue``) and renderd
(``render_list``, ``render_expired``):

1. open SOURCE (:mod:`.sources`), pick the render zoom, plan the tiles (:mod:`.plan`);
2. lock DEST, open its manifest (:mod:`.manifest`) and sink (:mod:`.sinks`);
3. run the metatile jobs (:mod:`.metatile`, :mod:`.workers`): each decides from the
   source digests which of its tiles are stale and renders only those;
4. build overview zooms from their children, again only where a child changed;
5. write the cache's metadata (and the PMTiles archive) and return a summary.

Every tile is written (atomically) before its manifest row is committed, so a run
killed at any point resumes where it stopped and ends byte-identical to a run that
was never interrupted. DEST itself is finished (metadata, the PMTiles archive renamed
into place) only after every tile; the manifest says whether it is (``dirty``), so
a run stopped while finishing is finished by the next one. A file DEST that another
program made is replaced (``--overwrite``) only at the end, by a rename.

Memory does not grow with the area: the plan is streamed metatile by metatile
(:mod:`.plan`), what a tile was made from is looked up in the manifest on disk block by
block, and the expire list is kept as given. Before starting, one line gives the
number of tiles and metatiles and, for a model, an estimate of the time; a run larger
than ``max_tiles`` (``--max-tiles``) is refused at once with its size.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

import mercantile
import numpy as np
from torch import nn

from .._version import __version__
from ..errors import OptionError, OutputExistsError, OutputPathError, TileSourceError
from ..io.atomic import sweep_stale
from ..model.load import InferenceModel
from ..model.provenance import model_identity
from ..model.spec import ModelSpec
from .area import Area
from .imaging import decode, downsample, encode
from .manifest import (
    Manifest,
    destination_lock,
    file_identity,
    read_meta,
    settings_digest,
    tile_key,
    work_dir,
)
from .metatile import NO_TILE, UNREADABLE, MetaJob, RenderSettings
from .options import CopyModel, TileOptions, TilesResult
from .plan import Expiry, Plan, children_of
from .sinks import MBTilesSink, PMTilesSink, TileSetInfo, XYZSink, sink_kind
from .sources import TileSource, open_source
from .tilemath import MAX_ZOOM, TILE_SIZE, ChipGrid, native_zoom, parse_expire, parse_zoom_range, resolution_at
from .workers import run_jobs

log = logging.getLogger(__name__)

__all__ = ["make_tiles"]

ProgressCallback = Callable[[int, int], None]
COMMIT_EVERY = 64  # overview tiles per transaction
PROGRESS_EVERY = 0.25  # s between progress calls while tiles are only skipped


class _Run:
    """State of one run: the writer side (main process only)."""

    def __init__(self, plan: Plan, manifest: Manifest, sink, hidden,
                 progress: ProgressCallback | None) -> None:
        self.plan, self.manifest, self.sink, self.hidden = plan, manifest, sink, hidden
        self.progress, self.done, self.total = progress, 0, plan.total
        self.counts = dict(rendered=0, unchanged=0, empty=0, failed=0)
        self.failures: list[tuple[str, str]] = []
        self._reported, self._ticked = -1, 0.0
        self.wrote = False  # this run changed a tile (any level)

    def store(self, z: int):
        return self.sink if self.plan.requested(z) else self.hidden

    def known(self, tiles) -> dict[mercantile.Tile, tuple[str, str]]:
        """Tile → (key, status) for those of ``tiles`` recorded in the manifest and still
        in their store (or recorded as empty)."""
        recorded = self.manifest.lookup(tiles)
        stores: dict[int, tuple[object, list]] = {}
        for t, (_, status) in recorded.items():
            if status != "empty":
                store = self.store(t.z)
                stores.setdefault(id(store), (store, []))[1].append(t)
        there = set().union(*(store.has(ts) for store, ts in stores.values())) if stores else set()
        return {t: row for t, row in recorded.items() if row[1] == "empty" or t in there}

    def count(self, t: mercantile.Tile, what: str) -> None:
        if self.plan.requested(t.z):
            self.counts[what] += 1
            self.done += 1

    def write(self, t: mercantile.Tile, key: str, data: bytes | None) -> None:
        self.manifest.mark_dirty()  # before DEST changes: DEST is unfinished until the end of a run
        self.wrote = True
        store = self.store(t.z)
        if data is None:
            store.delete(t)
            self.manifest.record(t, key, "empty")
            self.count(t, "empty")
        else:
            store.put(t, data)
            self.manifest.record(t, key, "ok")
            self.count(t, "rendered")

    def skip(self, t: mercantile.Tile, status: str) -> None:
        self.count(t, "empty" if status == "empty" else "unchanged")

    def fail(self, t: mercantile.Tile, reason: str) -> None:
        self.manifest.forget(t)
        self.count(t, "failed")
        if len(self.failures) < 20:
            self.failures.append((f"{t.z}/{t.x}/{t.y}", reason))

    def report(self) -> None:
        if self.progress is not None and self.done != self._reported:
            self._reported = self.done
            self.progress(self.done, self.total)

    def tick(self) -> None:
        """Progress while nothing is written (skipped metatiles): at most every 0.25 s."""
        now = time.monotonic()
        if now - self._ticked >= PROGRESS_EVERY:
            self._ticked = now
            self.report()

    def commit(self) -> None:
        for s in {id(self.sink): self.sink, id(self.hidden): self.hidden}.values():
            if s is not None:
                s.commit()
        self.manifest.commit()  # after the tiles: a row never describes a tile not written
        self.report()


def make_tiles(
    source: str | os.PathLike | TileSource,
    dest: str | os.PathLike,
    *,
    zooms: str | int | tuple[int, int],
    area: Area | None = None,
    model: nn.Module | str | os.PathLike | None = None,
    expire: Iterable[str] | str | os.PathLike | None = None,
    progress: ProgressCallback | None = None,
    options: TileOptions | None = None,
    client=None,
    **kwargs,
) -> TilesResult:
    """Make (or bring up to date) the XYZ tile cache ``dest`` from the map tiles ``source``.

    ``area``: default the source's extent. ``model``: a module, a weights path, or
    ``None`` for the shipped default model; :class:`CopyModel` copies the source's
    pixels. ``expire``: lines (or a file of lines) ``z/x/y`` naming changed source
    tiles; only tiles reading them are looked at, and they are made again.
    ``progress(done, total)`` counts requested tiles. ``client``: a
    ``distributed.Client``, a scheduler address (``tcp://HOST:PORT``) or ``local:N``:
    metatiles run as tasks on that Dask cluster (``workers`` is then unused) and come
    back to the one writer here. Other keywords are :class:`TileOptions` fields
    (``fmt``, ``meta_size``, ``buffer``, ``workers``, ``max_tiles``, ``url_base``…).
    """
    start = time.monotonic()
    opts = replace(options or TileOptions(), **kwargs)
    zr = parse_zoom_range(zooms)
    kind = sink_kind(dest)
    dest = Path(dest)
    _check_dest(dest, kind)
    if opts.url_base and kind != "xyz":
        raise OptionError(f"--url-base sets the tile URLs in an XYZ folder's tilejson.json; DEST {str(dest)!r} "
                          f"is {'an MBTiles file' if kind == 'mbtiles' else 'a PMTiles archive'}, which has "
                          "none: drop --url-base")
    if client is not None and not isinstance(source, TileSource) and os.path.exists(source):
        source = os.path.abspath(source)  # Dask workers open it, from their own working folder
    src = source if isinstance(source, TileSource) else open_source(source, opts.bands)
    try:
        if area is None:
            bounds = src.bounds()
            if bounds is None:
                raise OptionError(f"source {src.spec!r} does not tell its extent: "
                                  "pass --bbox W,S,E,N or --aoi")
            area = Area.of_source(bounds, src.spec)
        model, spec = _resolve_model(model, opts.device)
        zn = _render_zoom(opts.render_zoom, model, area, zr)
        have = src.zooms()
        if have is not None and zn not in have:
            levels = f"{min(have)}-{max(have)}" if have else "none"
            why = (f"--render-zoom {zn} asks for them" if opts.render_zoom is not None
                   else f"the model runs at zoom {zn}")
            raise TileSourceError(f"source {src.spec!r} has no zoom {zn} tiles (it has zooms {levels}), and "
                                  f"{why}: add that zoom to the source or pass --render-zoom with one it has")
        src.prepare(zn)
        plan = Plan(area, zr, zn, opts.meta_size, render_zoom_given=opts.render_zoom is not None)
        grid = ChipGrid(opts.buffer)
        expired = _expired(expire, zn, grid) if expire is not None else None
        _check_size(plan, opts.max_tiles)
        identity = model_identity(model)
        settings = render_settings(identity, zn, opts)
        rerun = expired is not None or (work_dir(dest, kind) / "manifest.sqlite").exists()
        log.info("%s", _plan_line(plan, grid, model, opts, client, rerun))
        info = _info(dest, plan, opts, src, model, identity)
        run, note = _write_cache(src, dest, kind, plan, model, spec, settings, opts, expired, progress, client,
                                 info)
    finally:
        src.close()
    c = run.counts
    return TilesResult(dest, zn, plan.total, c["rendered"], c["unchanged"], c["empty"], c["failed"],
                       run.manifest.existed, tuple(run.failures), time.monotonic() - start, note)


def _write_cache(src, dest: Path, kind: str, plan: Plan, model, spec, settings: RenderSettings,
                 opts: TileOptions, expired, progress, client, info: TileSetInfo) -> tuple[_Run, str]:
    work = work_dir(dest, kind)
    man_path = work / "manifest.sqlite"
    had_manifest = man_path.exists()
    meta = read_meta(man_path)
    replacing = meta.get("replacing")
    # An --overwrite that renamed its file onto DEST but stopped before saying so:
    replaced = replacing is not None and meta.get("published") is not None \
        and file_identity(dest) == meta.get("published")
    foreign = dest.exists() and (not had_manifest or (replacing is not None and not replaced)) \
        and not (kind == "xyz" and dest.is_dir() and not any(dest.iterdir()))
    if foreign and not opts.overwrite:
        if replacing is not None:
            raise OutputExistsError(f"DEST {str(dest)!r} was not made by geo-pix2pix tiles, and the --overwrite run "
                                    "that is to replace it stopped before the end (DEST is as it was): pass "
                                    "--overwrite to go on, or choose another DEST")
        raise OutputExistsError(f"DEST {str(dest)!r} exists and was not made by geo-pix2pix tiles: "
                                f"pass --overwrite to {'write into' if kind == 'xyz' else 'replace'} it "
                                f"({'its files are kept' if kind == 'xyz' else 'only once the new one is complete'}), "
                                "or choose another DEST")
    fmt = opts.fmt
    with destination_lock(work, str(dest)):
        if kind == "xyz":  # temporaries a run killed with -9 left (atomic.py: dead owners only)
            sweep_stale(dest, "tilejson.json")
            sweep_stale(work / "incoming")
        else:
            sweep_stale(dest.parent, dest.name)
        if not had_manifest:  # tiles in the work folder that no manifest describes: not to be trusted
            for name in ("staging.mbtiles", "hidden.mbtiles", "replacement.mbtiles"):
                for p in (work / name, work / f"{name}-journal"):
                    p.unlink(missing_ok=True)
        manifest = Manifest(man_path)
        sink = hidden = None
        note = ""
        try:
            if manifest.meta("format") not in (None, fmt):
                raise OptionError(f"DEST {str(dest)!r} holds {manifest.meta('format')} tiles: pass --format "
                                  f"{manifest.meta('format')}, or choose another DEST")
            manifest.set_meta(format=fmt)
            if foreign and kind != "xyz":
                if manifest.meta("replacing") is None:
                    manifest.set_meta(replacing=file_identity(dest) or "")
            elif replaced:
                manifest.mark_published(published=manifest.meta("published"))
            manifest.commit()
            replacing_now = manifest.meta("replacing") is not None
            if kind == "xyz":
                sink = XYZSink(dest, fmt, scratch=work / "incoming")
            elif kind == "mbtiles":
                sink = MBTilesSink(work / "replacement.mbtiles", fmt, final=dest) if replacing_now \
                    else MBTilesSink(dest, fmt)
            else:
                sink = PMTilesSink(dest, fmt, work / "staging.mbtiles")
            if any(not plan.requested(z) for z in plan.stored_levels):
                hidden = MBTilesSink(work / "hidden.mbtiles", fmt)
            run = _Run(plan, manifest, sink, hidden, progress)
            _base_pass(run, src, model, settings, spec, opts.workers, opts.force, expired, client)
            _overview_pass(run, settings, opts.force)
            run.commit()
            info = replace(info, version=max(manifest.generation, 1))

            def recording(identity: str | None) -> None:  # what is about to be renamed onto DEST
                manifest.set_meta(published=identity or "")
                manifest.commit()

            if kind == "pmtiles":
                stale = manifest.dirty or replacing_now or file_identity(dest) != (manifest.meta("published") or None)
                if stale:
                    if not run.wrote and manifest.existed:
                        note = ("the archive was written again: an earlier run stopped before publishing it, "
                                "or DEST had been changed")
                    published = sink.finish(info, before_rename=recording)
                    manifest.mark_published(published=published)
            elif replacing_now:
                sink.finish(info, before_rename=recording)
                manifest.mark_published(published=manifest.meta("published"))
            else:
                sink.finish(info)
                manifest.mark_published()
        finally:
            for s in (sink, hidden):
                if s is not None:
                    s.close()
            manifest.close()
    return run, note


#: Suffixes that say DEST was meant as a single image or another container.
NOT_A_CACHE = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".webp", ".zip", ".gpkg", ".sqlite", ".json")


def _check_dest(dest: Path, kind: str) -> None:
    if kind == "xyz" and dest.suffix.lower() in NOT_A_CACHE:
        raise OutputPathError(f"DEST {str(dest)!r}: tiles go to a folder (XYZ), an .mbtiles file or a "
                              f".pmtiles archive; drop the {dest.suffix} suffix or use one of those")
    if kind == "xyz" and dest.exists() and not dest.is_dir():
        raise OutputPathError(f"DEST {str(dest)!r} is a file: give a folder for XYZ tiles")
    if kind != "xyz" and dest.is_dir():
        raise OutputPathError(f"DEST {str(dest)!r} is a folder: give a file name ending in {dest.suffix}, or a "
                              "folder name without it for XYZ tiles")
    parent = dest.parent if str(dest.parent) else Path(".")
    if not parent.is_dir():
        raise OutputPathError(f"DEST folder {str(parent)!r} does not exist: create it first")


def _resolve_model(model, device) -> tuple[InferenceModel, ModelSpec]:
    """The model here, and the spec worker processes get it by."""
    spec = ModelSpec.of(model, device)
    loaded = spec.load()
    if 256 % loaded.tile_multiple:
        raise OptionError(f"the model needs tiles in multiples of {loaded.tile_multiple} px; map tiles are 256 px")
    return loaded, spec


def _render_zoom(render_zoom: int | None, model: nn.Module, area: Area, zr) -> int:
    if render_zoom is not None:
        if isinstance(render_zoom, bool) or not isinstance(render_zoom, (int, np.integer)) \
                or not 0 <= render_zoom <= MAX_ZOOM:
            raise OptionError(f"--render-zoom {render_zoom!r} must be a zoom from 0 to {MAX_ZOOM} (the zoom the "
                              "model runs at; default: the one matching its ground resolution)")
        return int(render_zoom)
    res = model.ground_resolution
    if res:
        return native_zoom(res, area.centre[1])
    return zr.max


def _expired(expire, zn: int, grid: ChipGrid) -> Expiry:
    """Which render-zoom tiles read an expired source tile (a predicate, see :class:`.plan.Expiry`)."""
    if isinstance(expire, (str, os.PathLike)):
        label = os.fspath(expire)
        try:
            with open(label, encoding="utf-8") as f:
                tiles = parse_expire(f, f"--expire {label!r}")
        except FileNotFoundError:
            raise OptionError(f"--expire {label!r} does not exist: give a file of z/x/y lines") from None
        except IsADirectoryError:
            raise OptionError(f"--expire {label!r} is a folder: give a file of z/x/y lines") from None
        except UnicodeDecodeError:
            raise OptionError(f"--expire {label!r} is not a text file (not UTF-8): give a file of z/x/y lines, "
                              "as osm2pgsql --expire-tiles writes") from None
        except OSError as exc:
            raise OptionError(f"--expire {label!r} cannot be read ({exc.strerror or exc})") from None
    else:
        tiles = parse_expire(expire)
    return Expiry(tiles, zn, grid)


def _check_size(plan: Plan, max_tiles: int | None) -> None:
    """Refuse at once a run of more than ``max_tiles`` tiles (all levels), with its size."""
    if not max_tiles:
        return
    low = plan.at_least()
    n = low if low > max_tiles else plan.work()
    if n <= max_tiles:
        return
    at_least = "at least " if n == low and plan.area.geometry is not None else ""
    extent = plan.area.label.startswith("extent of ")
    where = f"{plan.area.label} (SOURCE's extent: the default area)" if extent else plan.area.label
    hidden = "" if plan.render_zoom in plan.zooms else f", the model's zoom {plan.render_zoom} included"
    raise OptionError(f"{where} at --zoom {plan.zooms} is {at_least}{n:,} tiles to make{hidden}, more than "
                      f"--max-tiles {max_tiles:,}: narrow the area (--bbox, --aoi) or the zooms, or raise "
                      "--max-tiles (0: no limit) if a run of that size is meant")


def _plan_line(plan: Plan, grid: ChipGrid, model, opts: TileOptions, client, rerun: bool = False) -> str:
    """One line before the run: what it makes, where the model runs, how long it may take
    (a rerun, which makes only the tiles whose inputs changed, is not timed)."""
    zn, total = plan.render_zoom, plan.total
    base, metas = plan.count(zn), plan.metatile_count()
    lat = plan.area.centre[1]
    zooms = f"zoom {plan.zooms}" if plan.zooms.min == plan.zooms.max else f"zooms {plan.zooms}"
    line = (f"{plan.area.label or plan.area.bounds}: {total:,} tiles at {zooms}; the model runs at "
            f"zoom {zn} ({resolution_at(zn, lat):.2f} m/px at {lat:.2f}°) over {base:,} tiles in {metas:,} "
            f"metatile{'' if metas == 1 else 's'} of {plan.meta_size}×{plan.meta_size}")
    if rerun:
        return line + "; a rerun makes only the tiles whose inputs changed"
    estimate = _estimate(plan, grid, model, opts, client, base)
    return line + (f"; {estimate}" if estimate else "")


#: Render-zoom tiles from which a run is worth timing the model for an estimate.
ESTIMATE_FROM = 256


def _estimate(plan: Plan, grid: ChipGrid, model, opts: TileOptions, client, base: int) -> str | None:
    """``about 3 h 20 min if every tile is made (…)``: the model timed on one batch here."""
    if isinstance(model, CopyModel) or client is not None or base < ESTIMATE_FROM:
        return None
    from ..model.load import model_device, run_batch

    m = plan.meta_size
    per_axis = len(grid.chips(-grid.margin, m * TILE_SIZE + grid.margin))
    chips = base * per_axis**2 / m**2
    batch = np.zeros((8, 3, grid.size, grid.size), np.uint8)
    try:
        device = model_device(model)
        run_batch(model, batch, device)  # warm-up: first-call costs are not the rate
        t0 = time.perf_counter()
        run_batch(model, batch, device)
        per_chip = (time.perf_counter() - t0) / len(batch)
    except Exception:  # an estimate is not worth failing for; the run reports real errors
        return None
    seconds = chips * per_chip  # --workers share the same cores or GPU: about the same rate
    return f"about {_duration(seconds)} ({chips:,.0f} model chips at {per_chip * 1000:.0f} ms each, timed here)"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    if minutes < 90:
        return f"{minutes:.0f} min"
    hours = minutes / 60
    if hours < 48:
        return f"{hours:.1f} h"
    days = hours / 24
    return f"{days:,.0f} days" if days < 730 else f"{days / 365:,.0f} years"


def _base_pass(run: _Run, src, model, settings, spec, workers, force, expired: Expiry | None, client=None) -> None:
    """Run the metatile jobs, and record what they made."""
    plan = run.plan
    pending: dict[int, tuple[list, dict]] = {}  # the jobs out: their families, the status of known tiles

    def jobs():
        for i, (_, meta) in enumerate(plan.metatiles()):
            pairs = plan.families(meta)  # a tile with nothing to make is not read
            if not pairs:
                continue
            known = run.known([t for _, fam in pairs for t in fam])
            bases = tuple(b for b, _ in pairs)
            if expired is not None and not force and all(t in known for _, fam in pairs for t in fam) \
                    and not any(expired(b) for b in bases):
                # render_expired: only the tiles reading a listed tile are looked at
                for _, fam in pairs:
                    for t in fam:
                        run.skip(t, known[t][1])
                run.tick()
                continue
            forced = frozenset(bases) if force else frozenset(
                b for b in bases if expired is not None and expired(b))
            pending[i] = (pairs, {t: status for t, (_, status) in known.items()})
            yield MetaJob(i, bases, tuple(fam for _, fam in pairs), {t: key for t, (key, _) in known.items()},
                          forced)

    for result in run_jobs(jobs(), src, model, settings, workers, spec, client):
        pairs, statuses = pending.pop(result.index)
        record_result(run, pairs, statuses, result)
        run.commit()
    run.commit()


def render_settings(identity: str, render_zoom: int, opts: TileOptions) -> RenderSettings:
    """The settings every tile's key starts from: the model and the options that change pixels
    (shared with ``serve``, whose tiles must have the keys a ``tiles`` run gives them)."""
    grid = ChipGrid(opts.buffer)
    return RenderSettings(grid, opts.fmt, opts.quality, settings_digest(
        model=identity, render_zoom=render_zoom, buffer=grid.buffer, margin=grid.margin, fmt=opts.fmt,
        quality=opts.quality if opts.fmt != "png" else None))


def record_result(run: _Run, pairs, statuses: dict, result) -> None:
    """Write what one metatile job made and its manifest rows (uncommitted); ``pairs``: the
    job's (base, family) pairs, ``statuses``: Tile → status of the tiles already known."""
    made = {t: data for t, _, data in result.outputs}
    failed = dict(result.failed)
    for b, fam in pairs:
        for t in fam:
            if b in failed:
                run.fail(t, failed[b])
            elif t in made:
                run.write(t, result.keys[b], made[t])
            else:
                run.skip(t, statuses.get(t, "ok"))


def _overview_pass(run: _Run, settings: RenderSettings, force: bool) -> None:
    """Build overview zooms from their children, deepest first, where a child changed.

    A tile's key is made of its children's keys, read from the manifest (the level below
    is complete when a level starts); blocks of tiles are looked up at once.
    """
    plan, n = run.plan, 0
    for z in plan.overview_levels:
        below = run.store(z + 1)
        for tiles, members in plan.overview_blocks(z):
            kids_of = {t: children_of(t, members) for t in tiles}
            kid_keys = {k: key for k, (key, _) in run.manifest.lookup(
                [k for kids in kids_of.values() for k in kids if k is not None]).items()}
            known = run.known(tiles)
            for t in tiles:
                if overview_tile(run, settings, t, kids_of[t], kid_keys, known.get(t), below, force):
                    n += 1
                    if n % COMMIT_EVERY == 0:
                        run.commit()
            run.tick()
        run.commit()


def overview_tile(run: _Run, settings: RenderSettings, t: mercantile.Tile, kids: list, kid_keys: dict,
                  known: tuple[str, str] | None, below, force: bool = False) -> bool:
    """Make overview tile ``t`` from its children (``kids``: TL, TR, BL, BR, None outside the
    area; ``kid_keys``: their manifest keys) unless ``known`` (its row) has the same key.
    Returns whether it was written (uncommitted). Shared with ``serve``."""
    parts = [f"{t.z}/{t.x}/{t.y}"] + [NO_TILE if k is None else (kid_keys.get(k) or UNREADABLE) for k in kids]
    key = tile_key(settings.digest, parts)
    if not force and known is not None and known[0] == key:
        run.skip(t, known[1])
        return False
    pixels = []
    for k in kids:
        data = below.get(k) if k is not None else None
        pixels.append(decode(data, f"tile {k.z}/{k.x}/{k.y}") if data is not None else None)
    rgb, valid = downsample(pixels)
    run.write(t, key, encode(rgb, valid, settings.fmt, settings.quality))
    return True


def _info(dest: Path, plan: Plan, opts: TileOptions, src: TileSource, model, identity: str) -> TileSetInfo:
    """What the cache says about itself: no local path, the source's attribution kept."""
    source_attr = src.attribution()
    name = src.public_name()
    zn = plan.render_zoom
    if isinstance(model, CopyModel):
        default = source_attr or f"map data of {name}"
        description = f"map tiles of {name}, zoom {zn} resampled"
        model_name = "none (the source's pixels, copied)"
    else:
        default = "Synthetic aerial imagery generated by geo-pix2pix (not a photograph)"
        if source_attr:
            default += f"; map data: {source_attr}"
        description = (f"Synthetic aerial imagery (not a photograph) rendered by geo-pix2pix {__version__} "
                       f"from the map tiles of {name} at zoom {zn}")
        model_name = identity
    extra = {"generator": f"geo-pix2pix {__version__}", "model": model_name}
    return TileSetInfo(opts.name or dest.stem, opts.fmt, plan.area.bounds, plan.zooms.min, plan.zooms.max,
                       opts.attribution or default, description, extra=extra, url_base=opts.url_base,
                       middle=plan.area.centre)
