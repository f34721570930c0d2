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
was never interrupted.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

import mercantile
from torch import nn

from ..errors import OptionError, OutputExistsError, OutputPathError, TileSourceError
from ..heap import kept_heap
from ..model_spec import ModelSpec
from .area import Area
from .imaging import decode, downsample, encode
from .manifest import DestinationLock, Manifest, model_identity, settings_digest, tile_key, work_dir
from .metatile import NO_TILE, UNREADABLE, MetaJob, RenderSettings
from .options import CopyModel, TileOptions, TilesResult
from .plan import Plan
from .sinks import MBTilesSink, PMTilesSink, TileSetInfo, XYZSink, sink_kind
from .sources import TileSource, open_source
from .tilemath import ChipGrid, native_zoom, parse_expire, parse_zoom_range, resolution_at, tiles_at_zoom
from .workers import run_jobs

log = logging.getLogger(__name__)

__all__ = ["make_tiles"]

ProgressCallback = Callable[[int, int], None]
COMMIT_EVERY = 64  # overview tiles per transaction


class _Run:
    """State of one run: the writer side (main process only)."""

    def __init__(self, plan: Plan, manifest: Manifest, sink, hidden,
                 progress: ProgressCallback | None) -> None:
        self.plan, self.manifest, self.sink, self.hidden = plan, manifest, sink, hidden
        self.progress, self.done = progress, 0
        self.counts = dict(rendered=0, unchanged=0, empty=0, failed=0)
        self.failures: list[tuple[str, str]] = []
        self.old: dict[mercantile.Tile, tuple[str, str]] = {}
        for z in plan.stored_levels:
            present = self.store(z).present(z)
            for (x, y), (key, status) in manifest.level(z).items():
                if status == "empty" or (x, y) in present:
                    self.old[mercantile.Tile(x, y, z)] = (key, status)

    def store(self, z: int):
        return self.sink if self.plan.requested(z) else self.hidden

    def count(self, t: mercantile.Tile, what: str) -> None:
        if self.plan.requested(t.z):
            self.counts[what] += 1
            self.done += 1

    def write(self, t: mercantile.Tile, key: str, data: bytes | None) -> None:
        store = self.store(t.z)
        if data is None:
            store.delete(t)
            self.manifest.record(t, key, "empty")
            self.count(t, "empty")
        else:
            store.put(t, data)
            self.manifest.record(t, key, "ok")
            self.count(t, "rendered")

    def skip(self, t: mercantile.Tile) -> None:
        self.count(t, "empty" if self.old[t][1] == "empty" else "unchanged")

    def fail(self, t: mercantile.Tile, reason: str) -> None:
        self.manifest.forget(t)
        self.count(t, "failed")
        if len(self.failures) < 20:
            self.failures.append((f"{t.z}/{t.x}/{t.y}", reason))

    def commit(self) -> None:
        for s in {id(self.sink): self.sink, id(self.hidden): self.hidden}.values():
            if s is not None:
                s.commit()
        self.manifest.commit()  # after the tiles: a row never describes a tile not written
        if self.progress is not None:
            self.progress(self.done, self.plan.total)


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
    (``fmt``, ``meta_size``, ``buffer``, ``workers``…).
    """
    start = time.monotonic()
    opts = replace(options or TileOptions(), **kwargs)
    zr = parse_zoom_range(zooms)
    kind = sink_kind(dest)
    dest = Path(dest)
    _check_dest(dest, kind)
    if client is not None and not isinstance(source, TileSource) and os.path.exists(source):
        source = os.path.abspath(source)  # Dask workers open it, from their own working folder
    src = source if isinstance(source, TileSource) else open_source(source, opts.bands)
    try:
        if area is None:
            bounds = src.bounds()
            if bounds is None:
                raise OptionError(f"source {src.spec!r} does not tell its extent: "
                                  "pass --bbox W,S,E,N or --aoi")
            area = Area.from_bbox(bounds)
        model, spec = _resolve_model(model, opts.device)
        zn = _render_zoom(opts.render_zoom, model, area, zr)
        have = src.zooms()
        if have is not None and zn not in have:
            levels = f"{min(have)}-{max(have)}" if have else "none"
            raise TileSourceError(f"source {src.spec!r} has no zoom {zn} tiles (it has zooms {levels}), and "
                                  f"the model runs at zoom {zn}: add that zoom to the source or pass "
                                  "--render-zoom")
        src.prepare(zn)
        plan = Plan(area, zr, zn, opts.meta_size)
        log.info("%s: %d tiles at zooms %s; the model runs at zoom %d (%.2f m/px at %.2f°)", area, plan.total,
                 zr, zn, resolution_at(zn, area.centre[1]), area.centre[1])
        grid = ChipGrid(opts.buffer)
        expired = _expired(expire, zn, grid, plan) if expire is not None else None
        settings = RenderSettings(grid, opts.fmt, opts.quality, settings_digest(
            model=model_identity(model), render_zoom=zn, buffer=grid.buffer, margin=grid.margin, fmt=opts.fmt,
            quality=opts.quality if opts.fmt != "png" else None))
        run = _write_cache(src, dest, kind, plan, model, spec, settings, opts, expired, progress, client)
    finally:
        src.close()
    c = run.counts
    return TilesResult(dest, zn, plan.total, c["rendered"], c["unchanged"], c["empty"], c["failed"],
                       run.manifest.existed, tuple(run.failures), time.monotonic() - start)


def _write_cache(src, dest: Path, kind: str, plan: Plan, model, spec, settings: RenderSettings,
                 opts: TileOptions, expired, progress, client=None) -> _Run:
    work = work_dir(dest, kind)
    ours = (work / "manifest.sqlite").exists()
    if dest.exists() and not ours and not (kind == "xyz" and not any(dest.iterdir())):
        if not opts.overwrite:
            raise OutputExistsError(f"DEST {str(dest)!r} exists and was not made by geo-pix2pix tiles: "
                                    "pass --overwrite to write into it, or choose another DEST")
        if kind != "xyz":
            dest.unlink()
    fmt = opts.fmt
    with DestinationLock(work, str(dest)), kept_heap():  # batches reuse memory (heap.py)
        manifest = Manifest(work / "manifest.sqlite")
        sink = hidden = None
        try:
            if manifest.meta("format") not in (None, fmt):
                raise OptionError(f"DEST {str(dest)!r} holds {manifest.meta('format')} tiles: pass --format "
                                  f"{manifest.meta('format')}, or choose another DEST")
            manifest.set_meta(format=fmt)
            sink = (XYZSink(dest, fmt) if kind == "xyz" else MBTilesSink(dest, fmt) if kind == "mbtiles"
                    else PMTilesSink(dest, fmt, work / "staging.mbtiles"))
            if any(not plan.requested(z) for z in plan.stored_levels):
                hidden = MBTilesSink(work / "hidden.mbtiles", fmt)
            run = _Run(plan, manifest, sink, hidden, progress)
            base_keys = _base_pass(run, src, model, settings, spec, opts.workers, opts.force, expired, client)
            _overview_pass(run, base_keys, settings, opts.force)
            changed = run.counts["rendered"] + run.counts["empty"] > 0 or not dest.exists()
            if changed or kind != "pmtiles":
                copy = isinstance(model, CopyModel)
                sink.finish(_info(dest, plan, fmt, src, copy, opts.name, opts.attribution))
            run.commit()
        finally:
            for s in (sink, hidden):
                if s is not None:
                    s.close()
            manifest.close()
    return run


#: Suffixes that say DEST was meant as a single image or another container.
NOT_A_CACHE = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".webp", ".zip", ".gpkg", ".sqlite", ".json")


def _check_dest(dest: Path, kind: str) -> None:
    if kind == "xyz" and dest.suffix.lower() in NOT_A_CACHE:
        raise OutputPathError(f"DEST {str(dest)!r}: tiles go to a folder (XYZ), an .mbtiles file or a "
                              f".pmtiles archive; drop the {dest.suffix} suffix or use one of those")
    if kind == "xyz" and dest.exists() and not dest.is_dir():
        raise OutputPathError(f"DEST {str(dest)!r} is a file: give a folder for XYZ tiles")
    parent = dest.parent if str(dest.parent) else Path(".")
    if not parent.is_dir():
        raise OutputPathError(f"DEST folder {str(parent)!r} does not exist: create it first")


def _resolve_model(model, device) -> tuple[nn.Module, ModelSpec | None]:
    from ..model import load_model

    if model is None or isinstance(model, (str, os.PathLike)):
        path = None if model is None else os.fspath(model)
        loaded = load_model(path, device)
        return loaded, ModelSpec.of_file(path, loaded, device)
    if device is not None:
        from ..devices import resolve_device

        model = model.to(resolve_device(device))
    multiple = getattr(model, "tile_multiple", 1)
    if 256 % multiple:
        raise OptionError(f"the model needs tiles in multiples of {multiple} px; map tiles are 256 px")
    return model.eval(), None


def _render_zoom(render_zoom: int | None, model: nn.Module, area: Area, zr) -> int:
    if render_zoom is not None:
        return parse_zoom_range(render_zoom).min
    res = getattr(model, "ground_resolution", None)
    if res:
        return native_zoom(res, area.centre[1])
    return zr.max


def _expired(expire, zn: int, grid: ChipGrid, plan: Plan) -> frozenset[mercantile.Tile]:
    """Render-zoom tiles whose rendering reads an expired source tile."""
    if isinstance(expire, (str, os.PathLike)):
        label = os.fspath(expire)
        try:
            with open(label, encoding="utf-8") as f:
                tiles = parse_expire(f, label)
        except FileNotFoundError:
            raise OptionError(f"--expire {label!r} does not exist: give a file of z/x/y lines") from None
    else:
        tiles = parse_expire(expire)
    changed = {c for t in tiles for c in tiles_at_zoom(t, zn)}
    base = plan.tiles(zn)
    return frozenset(d for c in changed for d in grid.dependents(c) if d in base)


def _base_pass(run: _Run, src, model, settings, spec, workers, force, expired, client=None) -> dict:
    """Run the metatile jobs; return every render-zoom tile's key (None: failed)."""
    plan, old = run.plan, run.old
    keys: dict = {}
    skipped: list[tuple[mercantile.Tile, tuple]] = []

    def jobs():
        for i, (_, meta) in enumerate(plan.metatiles()):
            pairs = [(b, tuple(plan.family(b))) for b in meta]
            pairs = [(b, fam) for b, fam in pairs if fam]  # a tile with nothing to make is not read
            if not pairs:
                continue
            bases, fams = tuple(b for b, _ in pairs), tuple(fam for _, fam in pairs)
            if expired is not None and not force and not any(b in expired for b in bases) \
                    and all(t in old for fam in fams for t in fam):
                # render_expired: only the tiles reading a listed tile are looked at
                skipped.extend(zip(bases, fams, strict=True))
                continue
            forced = frozenset(bases) if force else frozenset(b for b in bases if expired and b in expired)
            known = {t: old[t][0] for fam in fams for t in fam if t in old}
            yield MetaJob(i, bases, fams, known, forced)

    fams_of: dict = {}
    for result in run_jobs(_remember(jobs(), fams_of), src, model, settings, workers, spec, client):
        made = {t: data for t, _, data in result.outputs}
        failed = dict(result.failed)
        for b, fam in fams_of.pop(result.index):
            keys[b] = result.keys[b]
            for t in fam:
                if b in failed:
                    run.fail(t, failed[b])
                elif t in made:
                    run.write(t, result.keys[b], made[t])
                else:
                    run.skip(t)
        run.commit()
    for b, fam in skipped:
        keys[b] = old[b][0] if b in old else None
        for t in fam:
            run.skip(t)
    run.commit()
    return keys


def _remember(jobs, fams_of: dict):
    for job in jobs:
        fams_of[job.index] = list(zip(job.base, job.families, strict=True))
        yield job


def _overview_pass(run: _Run, keys_below: dict, settings: RenderSettings, force: bool) -> None:
    """Build overview zooms from their children, deepest first, where a child changed."""
    plan, n = run.plan, 0
    for z in plan.overview_levels:
        keys: dict = {}
        below = run.store(z + 1)
        for t in plan.ordered(z):
            kids = plan.children(t)
            parts = [f"{t.z}/{t.x}/{t.y}"] + [
                NO_TILE if k is None else (keys_below.get(k) or UNREADABLE) for k in kids]
            key = keys[t] = tile_key(settings.digest, parts)
            if not force and t in run.old and run.old[t][0] == key:
                run.skip(t)
                continue
            pixels = []
            for k in kids:
                data = below.get(k) if k is not None else None
                pixels.append(decode(data, f"tile {k.z}/{k.x}/{k.y}") if data is not None else None)
            rgb, valid = downsample(pixels)
            run.write(t, key, encode(rgb, valid, settings.fmt, settings.quality))
            n += 1
            if n % COMMIT_EVERY == 0:
                run.commit()
        run.commit()
        keys_below = keys


def _info(dest: Path, plan: Plan, fmt: str, src: TileSource, copy: bool, name, attribution) -> TileSetInfo:
    source_attr = src.attribution()
    if copy:
        default = source_attr or f"map data of {os.path.basename(src.spec.rstrip('/')) or src.spec}"
        description = f"map tiles of {src.spec}, zoom {plan.render_zoom} resampled"
    else:
        default = "Synthetic aerial imagery generated by geo-pix2pix (not a photograph)"
        if source_attr:
            default += f"; map data: {source_attr}"
        description = f"pix2pix rendering of {src.spec} at zoom {plan.render_zoom}"
    return TileSetInfo(name or dest.stem, fmt, plan.area.bounds, plan.zooms.min, plan.zooms.max,
                       attribution or default, description)

