"""Render a georeferenced map raster into a georeferenced synthetic aerial image.

The pipeline, each step in its own module:

1. :mod:`raster` opens the input and checks it (bands, dtype, georeference);
2. if the model knows its ground resolution and the input's differs (or its pixels
   are not square on the ground), the input is read through a ``WarpedVRT`` on a grid
   at the model's resolution (same CRS; :mod:`model_grid`); what does not fit the
   output's format or disk is refused here, before any work;
3. :mod:`tiling` lays overlapping tiles over that grid; strips of rows are read
   once, tiles cut from them, all-nodata tiles skipped, nodata in the others filled
   (:func:`pipeline.fill_nodata`);
4. :mod:`model` runs batches of tiles (NaN refused, :func:`pipeline.run_tiles`);
   :mod:`mosaic` blends the outputs and hands back finished rows, which are written at
   once (memory bounded by a strip), with the map's attribution and what made the
   image in the tags (:mod:`provenance`);
5. the result is warped back onto the input's grid (unless ``model_grid=True``),
   given overviews, optionally made a COG or a PNG/JPEG, and renamed onto ``dst``.

Everything is written to temporary files beside ``dst``; ``dst`` appears only when
all of it succeeded (:func:`raster.atomic_output`), with its own side files in place of
any old ones. One render at a time writes a given ``dst`` (:mod:`outlock`).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning as RioNotGeoreferencedWarning
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window
from torch import nn

from .errors import OptionError, OutputPathError
from .heap import kept_heap
from .model import load_model, model_device
from .model_grid import RESOLUTION_TOLERANCE, grid_factors, model_grid_shape, on_model_grid
from .outlock import OutputLock
from .pipeline import TilePipeline
from .provenance import output_tags
from .raster import (
    COMPRESSIONS,
    DEFLATE_LEVEL,
    PREDICTOR_CODECS,
    RENDER_COMPRESSION,
    ZSTD_LEVEL,
    MapRaster,
    atomic_output,
    check_output_path,
    compression_level,
    ground_pixel_size,
    open_map_raster,
    open_output,
    output_errors,
    output_profile,
    scratch_path,
    verify_written,
)
from .tiling import DEFAULT_OVERLAP

log = logging.getLogger(__name__)

__all__ = ["RenderResult", "render", "DEFAULT_BATCH_SIZE", "RESOLUTION_TOLERANCE"]

DEFAULT_BATCH_SIZE = 8
#: GDAL's block cache while tiles are read and rows written, in bytes: render reads
#: each input block about once and writes whole block rows, so it needs almost none.
#: (rasterio hands an integer GDAL_CACHEMAX to GDALSetCacheMax64 as bytes; only GDAL's
#: own parsing of the environment variable reads small numbers as MB.)
GDAL_CACHE_BYTES = 1 << 20
#: ... and while overviews are built, when the model's memory is free again: GDAL
#: averages strips of the full-resolution image, and re-reads (and decompresses) the
#: blocks its cache cannot hold. At 4096²: 1 MB 0.46 s, 8 MB 0.26 s, 16 MB 0.20 s;
#: 16 MB raised the 8192² render's peak memory by about 30 MB, 8 MB by about 20.
OVERVIEW_CACHE_BYTES = 8 << 20
PLAIN_IMAGE_DRIVERS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
#: The largest width and height each plain-image format stores (libwebp's and libjpeg's limits).
PLAIN_IMAGE_MAX_SIDE = {"WEBP": 16383, "JPEG": 65500}
GTIFF_SUFFIXES = (".tif", ".tiff", ".gtiff")

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class RenderResult:
    """What :func:`render` did."""

    path: Path
    width: int
    height: int
    tiles_total: int  # tiles in the grid
    tiles_rendered: int  # tiles sent to the model (the rest were all nodata)
    resampled: bool  # the input was resampled to the model's ground resolution
    input_resolution: float | None  # metres per pixel, None if not georeferenced
    model_resolution: float | None


def _check_options(tile_size: int, overlap: int, batch_size: int, model: nn.Module) -> None:
    if batch_size < 1:
        raise OptionError(f"--batch-size {batch_size} must be at least 1")
    from .memory import check_memory, render_batch_bytes

    # The tiles of a batch and their outputs are held at once: refuse what cannot fit now.
    check_memory(render_batch_bytes(batch_size, tile_size), f"--batch-size {batch_size}",
                 "give a smaller --batch-size (the default is 8; 32 keeps a GPU busy)")
    multiple = getattr(model, "tile_multiple", 1)
    if tile_size < 1 or tile_size % multiple:
        raise OptionError(f"--tile-size {tile_size} must be a positive multiple of {multiple} "
                          "(the generator halves the tile 8 times)")
    if not 0 <= overlap < tile_size:
        raise OptionError(f"--overlap {overlap} must be at least 0 and less than the tile size "
                          f"{tile_size}; the default is {DEFAULT_OVERLAP}")


def _output_kind(dst: Path, cog: bool) -> str:
    suffix = dst.suffix.lower()
    if suffix in GTIFF_SUFFIXES:
        return "COG" if cog else "GTiff"
    if suffix in PLAIN_IMAGE_DRIVERS:
        if cog:
            raise OptionError(f"--cog needs a .tif output, not {dst.name!r}")
        return PLAIN_IMAGE_DRIVERS[suffix]
    raise OutputPathError(f"output {str(dst)!r}: unknown format {suffix or '(no extension)'!r}; "
                          "use .tif (GeoTIFF), .png, .jpg or .webp")


def render(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    model: nn.Module | str | os.PathLike | None = None,
    overlap: int | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    tile_size: int = 256,
    bands: str | tuple[int, ...] | None = None,
    model_grid: bool = False,
    cog: bool = False,
    compress: str | None = None,
    overviews: bool = True,
    client=None,
) -> RenderResult:
    """Render the map raster ``src`` into the synthetic aerial image ``dst``.

    ``model`` is a :class:`~geo_pix2pix.model.Pix2PixModel` from :func:`load_model`
    (``None``: the default model) or any ``nn.Module`` mapping (N, 3, H, W) in [-1, 1]
    to the same shape; a plain module has no ground resolution, so nothing is
    resampled for it; a checkpoint path is loaded. ``progress(done, total)`` is called
    after every batch of tiles.

    ``client``: a ``distributed.Client``, a scheduler address (``tcp://HOST:PORT``) or
    ``local:N`` (N local workers): tile rows are rendered on that Dask cluster and
    written here, with the same output (:mod:`geo_pix2pix.render_cluster`). Workers
    load ``model`` from its path (None: the default model) or get a module scattered
    to them; the input's path must be readable on every worker.
    """
    overlap = DEFAULT_OVERLAP if overlap is None else int(overlap)
    batch_size = DEFAULT_BATCH_SIZE if batch_size is None else int(batch_size)
    compress = RENDER_COMPRESSION if compress is None else str(compress).lower()
    if compress not in COMPRESSIONS:
        raise OptionError(f"--compress {compress!r} is not one of {', '.join(COMPRESSIONS)}: "
                          f"choose one (default {RENDER_COMPRESSION})")
    if cog and not overviews:
        raise OptionError("--cog --no-overviews: a Cloud Optimized GeoTIFF is made with its overviews; "
                          "drop --no-overviews (overviews=False), or --cog for a plain GeoTIFF")
    dst = check_output_path(src, dst, overwrite)
    kind = _output_kind(dst, cog)
    with ExitStack() as stack:
        # One writer per DST; the check again under the lock: a render that held it may
        # have just finished DST.
        stack.enter_context(OutputLock(dst))
        check_output_path(src, dst, overwrite)
        remote = None
        if client is not None:
            from .render_cluster import RemoteRender

            remote = stack.enter_context(RemoteRender.open(client, model, device))
            model = remote.model
        elif model is None or isinstance(model, (str, os.PathLike)):
            model = load_model(model, device)
        elif device is not None:
            from .devices import resolve_device

            model = model.to(resolve_device(device))
        model.eval()
        _check_options(tile_size, overlap, batch_size, model)

        gdal_defaults = {
            # GDAL's default block cache is 5 % of RAM; render reads and writes in strips
            # and needs little, so keep memory flat.
            "GDAL_CACHEMAX": GDAL_CACHE_BYTES,
            # Overviews are built after the model has finished, when the cores are
            # free: let GDAL use them all (6.68 → 5.56 s per 4096² render, benchmarks/).
            "GDAL_NUM_THREADS": "ALL_CPUS",
            "ZLEVEL_OVERVIEW": str(DEFLATE_LEVEL),
            "ZSTD_LEVEL_OVERVIEW": str(ZSTD_LEVEL),
        }
        stack.enter_context(_gdal_defaults(**gdal_defaults))
        stack.enter_context(kept_heap())  # batches reuse memory instead of faulting in fresh pages
        raster = stack.enter_context(open_map_raster(src, bands))
        ds = raster.dataset
        pixel = ground_pixel_size(ds.crs, ds.transform, ds.width, ds.height) if raster.georeferenced else None
        in_res = None if pixel is None else (pixel[0] + pixel[1]) / 2
        model_res = getattr(model, "ground_resolution", None)
        factor = grid_factors(os.fspath(src), pixel, model_res)
        resampled = factor is not None
        grid_shape = model_grid_shape(ds.width, ds.height, factor) if resampled else (ds.width, ds.height)
        out_shape = grid_shape if model_grid else (ds.width, ds.height)
        _check_fits(dst, kind, raster, out_shape, grid_shape, factor, in_res, model_res)
        grid_raster = raster
        if resampled:
            grid_raster = stack.enter_context(on_model_grid(raster, factor))
            log.info("resampling %s from %.3g to %.3g m/px for the model", src, in_res, model_res)
        tags = output_tags(ds.tags(), model)

        final_tmp = stack.enter_context(atomic_output(dst))
        stack.enter_context(output_errors(dst))  # disk full, file too large… → one-line error
        gtiff_tmp = stack.enter_context(scratch_path(dst, "grid"))
        pipe = None if remote is None else remote.pipeline(
            src, bands, factor, grid_raster.height, grid_raster.width, tile_size=tile_size, overlap=overlap,
            batch_size=batch_size, progress=progress)
        # The files on the way to the output are compressed losslessly: JPEG on the way
        # and JPEG again in the output would lose twice.
        lossless = RENDER_COMPRESSION if compress == "jpeg" else compress
        warped_back = resampled and not model_grid
        rendered = _render_to_gtiff(grid_raster, gtiff_tmp, model, tile_size, overlap, batch_size, progress,
                                    compress if kind == "GTiff" and not warped_back else lossless, pipe, tags)
        if warped_back:
            back_tmp = stack.enter_context(scratch_path(dst, "back"))
            _warp_back(gtiff_tmp, raster, back_tmp, compress if kind == "GTiff" else lossless, tags)
            result_tmp = back_tmp
        else:
            result_tmp = gtiff_tmp
        if overviews and kind in ("GTiff",):
            with _gdal_defaults(GDAL_CACHEMAX=OVERVIEW_CACHE_BYTES):
                _build_overviews(result_tmp)
        if kind == "GTiff":
            os.replace(result_tmp, final_tmp)
        else:
            _copy_as(result_tmp, final_tmp, kind, compress)
        out_raster = grid_raster if resampled and model_grid else raster
        width, height = out_raster.width, out_raster.height
    grid = rendered[0]
    return RenderResult(dst, width, height, len(grid), rendered[1], resampled, in_res, model_res)


def _check_fits(dst: Path, kind: str, raster: MapRaster, out_shape: tuple[int, int], grid_shape: tuple[int, int],
                factor, in_res: float | None, model_res: float | None) -> None:
    """Refuse, before any work, an output its format cannot hold or its disk cannot."""
    w, h = out_shape
    limit = PLAIN_IMAGE_MAX_SIDE.get(kind)
    if limit is not None and max(w, h) > limit:
        raise OutputPathError(f"output {str(dst)!r}: {kind} images are at most {limit} × {limit} pixels and "
                              f"this one is {w} × {h}: write .tif (GeoTIFF) or .png instead, or a smaller area")
    if kind == "JPEG" and raster.alpha_band is not None:
        raise OutputPathError(f"{dst.name}: JPEG has no alpha; the input has transparency: "
                              "write .png or .tif instead")
    # Every file on the way: the model-grid image, the result on the input's grid, the copy
    # to PNG/JPEG. Aerial imagery compresses to well over half its raw 3 bytes a pixel.
    pixels = grid_shape[0] * grid_shape[1]
    if factor is not None and out_shape != grid_shape:
        pixels += w * h
    if kind != "GTiff":
        pixels += w * h
    need = 3 * pixels // 2
    try:
        free = shutil.disk_usage(dst.parent if str(dst.parent) else ".").free
    except OSError:
        return
    if need <= free:
        return
    gib = f"{need / 2**30:.3g} GiB, more than the {free / 2**30:.3g} GiB free in {str(dst.parent)!r}"
    if factor is not None and max(factor) > 1:
        raise OutputPathError(
            f"the model's ground resolution ({model_res:.3g} m/px) is {max(factor):.3g}× finer than the input's "
            f"({in_res:.3g} m/px), so the input would be resampled to {grid_shape[0]} × {grid_shape[1]} pixels: "
            f"at least {gib}; check the model's ground resolution, or render a smaller area")
    raise OutputPathError(f"output {str(dst)!r} ({w} × {h} pixels) needs at least {gib}: free some space, "
                          "write elsewhere, or render a smaller area")


def _render_to_gtiff(raster: MapRaster, path: Path, model: nn.Module, tile_size: int, overlap: int,
                     batch_size: int, progress: ProgressCallback | None, compress: str, pipe=None,
                     tags: dict | None = None):
    """Render ``raster`` into the GeoTIFF ``path`` on its own grid; ``pipe``: rows from
    elsewhere (a cluster, :class:`render_cluster.ClusterRowPipeline`) instead of a local
    :class:`TilePipeline`."""
    ds = raster.dataset
    profile = output_profile(raster, width=raster.width, height=raster.height,
                             transform=ds.transform, crs=ds.crs, compress=compress)
    if ds.crs is None:
        profile.pop("crs")  # a transform without CRS is kept; a missing one stays missing
    if ds.transform.is_identity:
        profile.pop("transform")
    background = pipe is not None or model_device(model).type != "cpu"
    if pipe is None:
        pipe = TilePipeline(raster, model, tile_size=tile_size, overlap=overlap, batch_size=batch_size,
                            progress=progress)
    gcps, gcp_crs = ds.gcps
    with open_output(path, profile) as out:
        if gcps and ds.transform.is_identity:
            out.gcps = (gcps, gcp_crs)  # the output is on the input's pixel grid: the same GCPs apply
        if tags:
            out.update_tags(**tags)
        writer = _BlockRowWriter(out, raster, background=background)
        try:
            for first, rows in pipe:
                writer.add(first, rows)
            writer.flush()
        finally:
            writer.close()
    return pipe.grid, pipe.rendered


class _BlockRowWriter:
    """Collects finished rows and writes them in whole rows of GeoTIFF blocks,
    optionally in a background thread.

    A compressed tiled GeoTIFF cannot update part of a block in place: GDAL would keep
    the block in its cache (memory growing with the raster's width × rows) or rewrite
    it at the end of the file. Writing whole block rows avoids both.

    With ``background=True`` compressing and writing a block row runs in one writer
    thread while the model works on the next tiles (GDAL releases the GIL), so the
    model does not wait on the disk. At most one block row is in flight besides the one
    being filled: two block rows of memory instead of one. Only the writer thread
    touches ``out``; the input's mask is read in the caller's thread, because a rasterio
    dataset must not be shared between threads. :meth:`close` waits for the last write
    and raises its error, if any.

    Render uses the thread when the model computes elsewhere (a GPU, a Dask cluster).
    When the model runs on the CPU it already keeps every core busy: measured on 2
    cores, the thread only moved the compression time from the writer to the model
    (wall 5.56 vs 5.69 s at 4096², ``benchmarks/render_throughput.py``) and added a
    block row of memory, so there the rows are written in the caller's thread.
    """

    def __init__(self, out, raster: MapRaster, background: bool = False) -> None:
        self.out, self.raster = out, raster
        self.block = out.block_shapes[0][0]
        self.buf = np.empty((3, self.block, raster.width), np.uint8)
        self.first = 0  # raster row of buf[:, 0]
        self.held = 0
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="geo-pix2pix-writer") if background else None
        self.pending: Future | None = None

    def add(self, first: int, rgb: np.ndarray) -> None:
        if first != self.first + self.held:
            raise ValueError(f"rows must come in order: got {first}, expected {self.first + self.held}")
        i = 0
        while i < rgb.shape[1]:
            n = min(self.block - self.held, rgb.shape[1] - i)
            self.buf[:, self.held : self.held + n] = rgb[:, i : i + n]
            self.held += n
            i += n
            if self.held == self.block:
                self.flush()

    def flush(self) -> None:
        if self.held:
            valid = self.raster.valid_rows(self.first, self.held)
            if self.pool is None:
                _write_rows(self.out, self.first, self.buf[:, : self.held], valid)
            else:
                rows = self.buf[:, : self.held].copy()
                self._wait()
                self.pending = self.pool.submit(_write_rows, self.out, self.first, rows, valid)
            self.first += self.held
            self.held = 0

    def _wait(self) -> None:
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.result()  # re-raises the writer's error here

    def close(self) -> None:
        try:
            self._wait()
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True)


def _write_rows(out, first: int, rgb: np.ndarray, valid: np.ndarray | None) -> None:
    """Write uint8 rows (3, n, width) to ``out``, with their validity mask (None: all valid)."""
    n, width = rgb.shape[1:]
    win = Window(0, first, width, n)
    if out.count == 4:
        alpha = np.full((1, n, width), 255, np.uint8) if valid is None else (valid * 255).astype(np.uint8)[None]
        out.write(np.concatenate([rgb, alpha]), window=win)
        return
    if valid is not None:
        rgb = rgb.copy()
        nodata = out.nodata
        if nodata is not None:
            nd = np.uint8(nodata)
            # A real pixel that happens to equal the nodata value in every band would be
            # read back as nodata: move it by one grey level.
            clash = valid & (rgb == nd).all(axis=0)
            if clash.any():
                rgb[:, clash] = nd + 1 if nd < 255 else nd - 1
            rgb[:, ~valid] = nd
        else:
            out.write_mask(valid.astype(np.uint8) * 255, window=win)
    out.write(rgb, window=win)


def _warp_back(model_grid_path: Path, raster: MapRaster, path: Path, compress: str, tags: dict | None = None) -> None:
    """Resample the model-grid result onto the input's own grid, strip by strip."""
    src = raster.dataset
    profile = output_profile(raster, width=src.width, height=src.height, transform=src.transform,
                             crs=src.crs, compress=compress)
    verify_written(model_grid_path)  # a block lost to a full disk would read back as zeros
    with rasterio.open(model_grid_path) as rendered, WarpedVRT(
        rendered, crs=src.crs, transform=src.transform, width=src.width, height=src.height,
        resampling=Resampling.cubic,
    ) as vrt, open_output(path, profile) as out:
        if tags:
            out.update_tags(**tags)
        step = 512
        for y in range(0, src.height, step):
            n = min(step, src.height - y)
            rgb = vrt.read((1, 2, 3), window=Window(0, y, src.width, n))
            _write_rows(out, y, rgb, raster.valid_rows(y, n))


def _gdal_defaults(**options) -> rasterio.Env:
    """GDAL configuration render chooses, except where the user set it in the environment."""
    return rasterio.Env(**{k: v for k, v in options.items() if k not in os.environ})


def overview_factors(width: int, height: int) -> list[int]:
    """The overview levels render builds: 2, 4, … while the longer side stays at least
    256 px (one level for a raster just over 256 px; none for one that fits a tile).
    The shorter side may end at 1 px: a 3 × 2000 raster gets levels of 2 × 1000, 1 × 500."""
    side, factors, f = max(width, height), [], 2
    while f <= 2**16 and (math.ceil(side / f) >= 256 or (not factors and side > 256)):
        factors.append(f)
        f *= 2
    return factors


def _build_overviews(path: Path) -> None:
    with rasterio.open(path, "r+") as ds:
        width, height = ds.width, ds.height
        factors = overview_factors(width, height)
        if factors:
            ds.build_overviews(factors, Resampling.average)
            ds.update_tags(ns="rio_overview", resampling="average")
    if factors:
        # Compared by size: rasterio's overviews() reports a factor from the width only,
        # which is wrong for a raster a few pixels wide.
        want = [(math.ceil(height / f), math.ceil(width / f)) for f in factors]
        with rasterio.open(path) as ds:
            made = []
            for i in range(len(ds.overviews(1))):
                with rasterio.open(path, overview_level=i) as ov:
                    made.append(ov.shape)
        if made != want:  # GDAL logs, but does not raise, a failed write of the overviews
            raise rasterio.errors.RasterioIOError(f"{path.name}: overviews {made} written of {want}")


def _copy_as(src_path: Path, dst_path: Path, driver: str, compress: str) -> None:
    options: dict = {}
    if driver == "COG":
        options = {"compress": compress, "overview_resampling": "average", "blocksize": 512,
                   "BIGTIFF": "IF_SAFER"}
        if compression_level(compress) is not None:
            options["level"] = compression_level(compress)
        if compress in PREDICTOR_CODECS:
            options["predictor"] = "YES"  # as the GeoTIFF output: 58.9 → 53.8 MB at 4096² (deflate)
    elif driver == "JPEG":
        options = {"quality": 90}
    elif driver == "PNG":
        options = {"WRITE_METADATA_AS_TEXT": "YES"}  # attribution and provenance in the PNG itself
    verify_written(src_path)  # a block lost to a full disk would read back as zeros
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RioNotGeoreferencedWarning)
        if driver == "JPEG":
            # JPEG keeps no GDAL metadata, only EXIF, which GDAL writes from EXIF_* items.
            with rasterio.open(src_path, "r+") as ds:
                tags = ds.tags()
                exif = {"EXIF_ImageDescription": tags.get("TIFFTAG_IMAGEDESCRIPTION"),
                        "EXIF_Software": tags.get("TIFFTAG_SOFTWARE"), "EXIF_Copyright": tags.get("ATTRIBUTION")}
                ds.update_tags(**{k: v for k, v in exif.items() if v})
        with rasterio.open(src_path) as ds:
            has_georef = ds.crs is not None or bool(ds.gcps[0]) or not ds.transform.is_identity
        rasterio.shutil.copy(src_path, dst_path, driver=driver, **options)
    if not has_georef:
        aux = Path(str(dst_path) + ".aux.xml")
        aux.unlink(missing_ok=True)

