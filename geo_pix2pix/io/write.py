"""Writing the rendered image: GeoTIFF profile, rows in whole blocks, overviews, COG or
PNG/JPEG copy, the check that GDAL wrote every block, and one-line write errors.

Everything is written to temporary files beside ``dst``; ``dst`` appears only when all
of it succeeded (:func:`atomic_output`, committed by :func:`atomic.replacing`).
"""

from __future__ import annotations

import errno
import math
import os
import shutil
import warnings
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import NotGeoreferencedWarning as RioNotGeoreferencedWarning
from rasterio.errors import RasterioError, RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

try:  # GDAL's own errors, which rasterio raises as they are from some calls
    from rasterio._err import CPLE_BaseError
except ImportError:  # pragma: no cover - a private module; rasterio 1.3/1.4 have it
    CPLE_BaseError = RasterioError

from ..errors import InputRasterError, OptionError, OutputExistsError, OutputPathError
from .atomic import replacing, scratch_path, sidecars
from .read import MapRaster, gdal_reason

__all__ = ["COMPRESSIONS", "RENDER_COMPRESSION", "atomic_output", "check_fits", "check_output_path", "gdal_config",
           "open_output", "output_errors", "output_kind", "output_profile", "overview_factors", "verify_written",
           "write_failure", "write_output"]


GTIFF_OPTIONS = {"tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate",
                 "predictor": 2, "BIGTIFF": "IF_SAFER"}
#: Level 1 for deflate and Zstandard, rows and overviews alike: higher levels compress
#: synthetic imagery barely better at several times the CPU time (docs/performance.md).
DEFLATE_LEVEL = 1
ZSTD_LEVEL = 1
#: Zstandard: about deflate's size at a third of its CPU time (docs/performance.md); GDAL
#: 2.3 or later reads it, ``compress="deflate"`` writes what older readers expect.
RENDER_COMPRESSION = "zstd"
#: What ``--compress`` accepts for rendered GeoTIFFs.
COMPRESSIONS = ("zstd", "deflate", "lzw", "jpeg", "none")
#: The codecs written with the horizontal predictor (GeoTIFF and COG output alike).
PREDICTOR_CODECS = ("deflate", "lzw", "zstd")


def compression_level(compress: str) -> int | None:
    """The level render writes ``compress`` at, or None for GDAL's own."""
    return {"deflate": DEFLATE_LEVEL, "zstd": ZSTD_LEVEL}.get(compress.lower())


def output_profile(raster: MapRaster, *, width: int, height: int, transform, crs,
                   compress: str = RENDER_COMPRESSION) -> dict:
    """GeoTIFF creation profile for the rendered image of ``raster``."""
    src = raster.dataset
    nodata = src.nodata if raster.alpha_band is None else None
    count = 4 if raster.alpha_band is not None else 3
    profile = dict(driver="GTiff", width=width, height=height, count=count, dtype="uint8",
                   crs=crs, transform=transform, nodata=nodata, photometric="RGB")
    profile.update(GTIFF_OPTIONS)
    profile["compress"] = compress
    level = compression_level(compress)
    if level is not None:
        profile["zlevel" if compress.lower() == "deflate" else "zstd_level"] = level
    if compress.lower() not in PREDICTOR_CODECS:
        profile.pop("predictor")
    if compress.lower() == "jpeg":
        profile["photometric"] = "YCbCr" if count == 3 else "RGB"
    if count == 4:
        profile["alpha"] = "YES"  # GDAL's GTiff name for unassociated (non-premultiplied) alpha
    return profile


def open_output(path: str | os.PathLike, profile: dict):
    """Create a GeoTIFF for writing; a 4-band output's last band is marked alpha."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RioNotGeoreferencedWarning)
        ds = rasterio.open(path, "w", **profile)
    if profile["count"] == 4:
        ds.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    return ds


def check_output_path(src: str | os.PathLike, dst: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse outputs that would lose data or cannot be written, before any work.

    Any existing path counts as existing: a dangling symbolic link, and a side file of
    DST left by an earlier output (:func:`sidecars`), which the new output replaces.
    """
    dst_p = Path(dst)
    if dst_p.exists() and Path(src).exists() and os.path.samefile(src, dst_p):  # links too
        raise OutputPathError(f"output {str(dst)!r} is the input file: choose another output path")
    if dst_p.is_dir():
        raise OutputPathError(f"output {str(dst)!r} is a directory: give a file name such as out.tif")
    parent = dst_p.parent if str(dst_p.parent) else Path(".")
    if not parent.is_dir():
        raise OutputPathError(f"output folder {str(parent)!r} does not exist: create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"output folder {str(parent)!r} is not writable: choose another output path")
    if not overwrite:
        if os.path.lexists(dst_p):
            raise OutputExistsError(f"output {str(dst)!r} exists: pass --overwrite (overwrite=True in Python) "
                                    "to replace it")
        side = next((p for p in sidecars(dst_p) if os.path.lexists(p)), None)
        if side is not None:
            raise OutputExistsError(f"output {str(dst)!r} has a side file left by an earlier output "
                                    f"({str(side)!r}) that GDAL would read as its georeference: pass "
                                    "--overwrite (overwrite=True in Python) to replace both, or remove it")
    return dst_p


#: errno values of a write that failed for want of room or of permission.
WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def write_failure(dst: str | os.PathLike, reason: str, err: int | None = None) -> OutputPathError:
    """The one-line error for an output that could not be written, with the likely cause."""
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        limited = limit != resource.RLIM_INFINITY
    except ImportError:  # Windows: no file-size limits
        limit, limited = None, False
    dst = Path(dst)
    folder = dst.parent if str(dst.parent) else Path(".")
    if err is None:  # GDAL's messages carry the OS's words, not its errno
        err = next((e for e in sorted(WRITE_ERRNOS) if os.strerror(e) in reason), None)
    try:
        usage = shutil.disk_usage(folder)
    except OSError:
        usage = None
    if err in (errno.EACCES, errno.EPERM, errno.EROFS):
        cause = f"the folder {str(folder)!r} is not writable: choose another output folder"
    elif limited and err in (errno.EFBIG, None):
        cause = (f"the file-size limit (ulimit -f) of {limit} bytes was reached: raise it, or write "
                 "a smaller output (--compress, a smaller area)")
    elif err == errno.EFBIG:
        cause = ("the file is larger than its filesystem allows (FAT32 stops at 4 GiB): write to "
                 "another disk, or a smaller output")
    elif usage is not None and (err in (errno.ENOSPC, errno.EDQUOT)
                                or usage.free < max(100 * 2**20, usage.total // 100)):
        cause = (f"the disk holding {str(folder)!r} is full ({usage.free / 2**20:.0f} MiB free): "
                 "free some space or write elsewhere")
    else:
        cause = "check the disk and the folder, or write elsewhere"
    return OutputPathError(f"could not write {str(dst)!r} ({reason}); {cause}; "
                           f"{str(dst)!r} was left as it was")


@contextmanager
def output_errors(dst: str | os.PathLike):
    """Turn errors raised while writing the output (by GDAL, or the OS: disk full, file
    too large, permission) into :class:`OutputPathError` naming ``dst``.

    Errors of the input are already :class:`InputRasterError` and pass through, as does
    every other geo-pix2pix error; unexpected errors (bugs) keep their traceback.
    """
    try:
        yield
    except (InputRasterError, OutputPathError):
        raise
    except (RasterioError, CPLE_BaseError) as exc:
        raise write_failure(dst, gdal_reason(exc)) from None
    except OSError as exc:
        if exc.errno not in WRITE_ERRNOS:
            raise
        raise write_failure(dst, exc.strerror or gdal_reason(exc), exc.errno) from None


def verify_written(path: str | os.PathLike, dst: str | os.PathLike | None = None) -> None:
    """Check that the raster GDAL wrote at ``path`` is whole: if not, raise
    :func:`write_failure` for ``dst`` (``None``: a ``RasterioIOError`` for an enclosing
    :func:`output_errors` to name the output).

    GDAL logs, but does not raise, some write errors (a disk that fills up while it
    flushes its cache or closes the file): the file is then left without some blocks
    or with a damaged directory. A GeoTIFF is checked block by block, at every
    overview level, in its directory (each block on disk, inside the file: cheap); any
    other format is decoded in full.
    """
    path = Path(path)
    size = path.stat().st_size
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RioNotGeoreferencedWarning)
            with rasterio.open(path) as ds:
                levels = len(ds.overviews(1)) if ds.driver == "GTiff" else 0
                if ds.driver != "GTiff":
                    for y in range(0, ds.height, 256):
                        ds.read(window=Window(0, y, ds.width, min(256, ds.height - y)))
                    return
            for level in [None, *range(levels)]:
                with rasterio.open(path, overview_level=level) as ds:
                    bad = _missing_block(ds, size)
                if bad:
                    where = "" if level is None else f" of overview {level + 1}"
                    raise RasterioIOError(f"{path.name}: block {bad}{where} is missing or cut short")
    except (RasterioError, CPLE_BaseError) as exc:
        if dst is None:
            raise
        raise write_failure(dst, gdal_reason(exc)) from None


def _missing_block(ds, file_size: int) -> str | None:
    """``"x,y"`` of the first block of ``ds`` not wholly inside the file, or None."""
    by, bx = ds.block_shapes[0]
    bands = range(1, ds.count + 1) if ds.interleaving and ds.interleaving.name == "BAND" else (1,)
    for b in bands:
        for y in range(math.ceil(ds.height / by)):
            for x in range(math.ceil(ds.width / bx)):
                off = ds.get_tag_item(f"BLOCK_OFFSET_{x}_{y}", "TIFF", bidx=b)
                n = ds.get_tag_item(f"BLOCK_SIZE_{x}_{y}", "TIFF", bidx=b)
                if not off or not n or int(off) <= 0 or int(n) <= 0 or int(off) + int(n) > file_size:
                    return f"{x},{y}"
    return None


def atomic_output(dst: str | os.PathLike, suffix: str | None = None, check: bool = True):
    """Yield a temporary path beside ``dst``; rename it onto ``dst`` only on success.

    :func:`atomic.replacing` with the raster's side files (:func:`atomic.sidecars`: a
    PNG's ``.aux.xml`` holding its CRS replaces the old one) and, with ``check``, the file
    checked first (:func:`verify_written`: GDAL reports some write errors, such as a full
    disk while closing a file, only in its log), so ``dst`` is never replaced by a damaged file.
    """
    dst = Path(dst)
    return replacing(dst, suffix=dst.suffix if suffix is None else suffix, side_files=True,
                     check=(lambda tmp: verify_written(tmp, dst)) if check else None,
                     flush_failure=lambda exc: write_failure(dst, exc.strerror or str(exc), exc.errno))


#: GDAL's block cache while tiles are read and rows written, in bytes: render reads
#: each input block about once and writes whole block rows, so it needs almost none.
#: (rasterio hands an integer GDAL_CACHEMAX to GDALSetCacheMax64 as bytes; only GDAL's
#: own parsing of the environment variable reads small numbers as MB.)
GDAL_CACHE_BYTES = 1 << 20
#: ... and while overviews are built, when the model's memory is free again: GDAL
#: averages strips of the full-resolution image, and re-reads (and decompresses) the
#: blocks its cache cannot hold; more cache, more peak memory (docs/performance.md).
OVERVIEW_CACHE_BYTES = 8 << 20
PLAIN_IMAGE_DRIVERS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
#: The largest width and height each plain-image format stores (libwebp's and libjpeg's limits).
PLAIN_IMAGE_MAX_SIDE = {"WEBP": 16383, "JPEG": 65500}
GTIFF_SUFFIXES = (".tif", ".tiff", ".gtiff")


def output_kind(dst: Path, cog: bool) -> str:
    suffix = dst.suffix.lower()
    if suffix in GTIFF_SUFFIXES:
        return "COG" if cog else "GTiff"
    if suffix in PLAIN_IMAGE_DRIVERS:
        if cog:
            raise OptionError(f"--cog needs a .tif output, not {dst.name!r}")
        return PLAIN_IMAGE_DRIVERS[suffix]
    raise OutputPathError(f"output {str(dst)!r}: unknown format {suffix or '(no extension)'!r}; "
                          "use .tif (GeoTIFF), .png, .jpg or .webp")


def check_fits(dst: Path, kind: str, raster: MapRaster, out_shape: tuple[int, int], grid_shape: tuple[int, int],
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


def gdal_config() -> rasterio.Env:
    """GDAL's configuration for a render, except where the user set it in the environment."""
    return _gdal_defaults(
        # GDAL's default block cache is 5 % of RAM; render reads and writes in strips.
        GDAL_CACHEMAX=GDAL_CACHE_BYTES,
        # Overviews are built after the model has finished, when the cores are free.
        GDAL_NUM_THREADS="ALL_CPUS",
        ZLEVEL_OVERVIEW=str(DEFLATE_LEVEL),
        ZSTD_LEVEL_OVERVIEW=str(ZSTD_LEVEL),
    )


def write_output(dst: Path, kind: str, raster: MapRaster, grid_raster: MapRaster,
                 rows: Iterable[tuple[int, np.ndarray, np.ndarray]], *, compress: str, overviews: bool,
                 warp_back: bool, tags: dict | None, background: bool) -> None:
    """Write ``rows`` (``(first_row, (3, n, width) uint8, valid (n, width) bool)`` in order, on
    ``grid_raster``'s grid) to ``dst`` as ``kind`` (:func:`output_kind`), atomically.

    ``warp_back``: resample onto ``raster``'s grid; ``background``: write block rows in a
    thread (:class:`_BlockRowWriter`).
    """
    with ExitStack() as stack:
        final_tmp = stack.enter_context(atomic_output(dst))
        stack.enter_context(output_errors(dst))  # disk full, file too large… → one-line error
        gtiff_tmp = stack.enter_context(scratch_path(dst, "grid"))
        # The files on the way to the output are compressed losslessly: JPEG on the way
        # and JPEG again in the output would lose twice.
        lossless = RENDER_COMPRESSION if compress == "jpeg" else compress
        _write_gtiff(grid_raster, gtiff_tmp, rows, compress if kind == "GTiff" and not warp_back else lossless,
                     tags, background)
        result_tmp = gtiff_tmp
        if warp_back:
            result_tmp = stack.enter_context(scratch_path(dst, "back"))
            _warp_back(gtiff_tmp, raster, result_tmp, compress if kind == "GTiff" else lossless, tags)
        if overviews and kind == "GTiff":
            with _gdal_defaults(GDAL_CACHEMAX=OVERVIEW_CACHE_BYTES):
                _build_overviews(result_tmp)
        if kind == "GTiff":
            os.replace(result_tmp, final_tmp)
        else:
            _copy_as(result_tmp, final_tmp, kind, compress)


def _write_gtiff(raster: MapRaster, path: Path, rows: Iterable[tuple[int, np.ndarray, np.ndarray]], compress: str,
                 tags: dict | None, background: bool) -> None:
    """Write ``rows`` to the GeoTIFF ``path`` on ``raster``'s grid, with its georeference."""
    ds = raster.dataset
    profile = output_profile(raster, width=raster.width, height=raster.height,
                             transform=ds.transform, crs=ds.crs, compress=compress)
    if ds.crs is None:
        profile.pop("crs")  # a transform without CRS is kept; a missing one stays missing
    if ds.transform.is_identity:
        profile.pop("transform")
    gcps, gcp_crs = ds.gcps
    with open_output(path, profile) as out:
        if gcps and ds.transform.is_identity:
            out.gcps = (gcps, gcp_crs)  # the output is on the input's pixel grid: the same GCPs apply
        if tags:
            out.update_tags(**tags)
        writer = _BlockRowWriter(out, raster, background=background)
        try:
            for first, rgb, valid in rows:
                writer.add(first, rgb, valid)
            writer.flush()
        finally:
            writer.close()


class _BlockRowWriter:
    """Collects finished rows (with their mask) and writes them in whole rows of GeoTIFF blocks.

    A compressed tiled GeoTIFF cannot update part of a block in place (GDAL would cache
    or rewrite it), so whole block rows are written. With ``background=True`` one writer
    thread compresses and writes while the model works on (used when the model computes
    elsewhere: a GPU, a Dask cluster); at most one block row is in flight. :meth:`close`
    waits for the last write and raises its error, if any.
    """

    def __init__(self, out, raster: MapRaster, background: bool = False) -> None:
        self.out, self.raster = out, raster
        self.block = out.block_shapes[0][0]
        self.buf = np.empty((3, self.block, raster.width), np.uint8)
        self.vbuf = np.empty((self.block, raster.width), bool)
        self.first = 0  # raster row of buf[:, 0]
        self.held = 0
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="geo-pix2pix-writer") if background else None
        self.pending: Future | None = None

    def add(self, first: int, rgb: np.ndarray, valid: np.ndarray) -> None:
        if first != self.first + self.held:
            raise ValueError(f"rows must come in order: got {first}, expected {self.first + self.held}")
        i = 0
        while i < rgb.shape[1]:
            n = min(self.block - self.held, rgb.shape[1] - i)
            self.buf[:, self.held : self.held + n] = rgb[:, i : i + n]
            self.vbuf[self.held : self.held + n] = valid[i : i + n]
            self.held += n
            i += n
            if self.held == self.block:
                self.flush()

    def flush(self) -> None:
        if self.held:
            valid = self.vbuf[: self.held].copy() if self.raster.has_mask else None
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
            options["predictor"] = "YES"  # as the GeoTIFF output: smaller files (docs/performance.md)
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

