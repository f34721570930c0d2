"""Raster I/O: open a map raster as RGB windows with a validity mask, write GeoTIFFs.

This is the only module (with the CLI) that touches raster files. It turns whatever
GDAL can read into what the model needs, (3, H, W) uint8 RGB plus a validity mask,
and says clearly when it cannot:

- 3 or 4 byte bands (RGB, RGBA with an alpha band);
- 1 byte band with a colour table (expanded to RGB through the table);
- 1 byte band of grey (repeated to RGB), or grey + alpha;
- anything else with ``bands=(r, g, b)`` chosen by the user.

Windows that reach past the raster's edges are filled by reflection (tiles near an
edge see a mirror image of the map rather than black), and their mask is False there.
"""

from __future__ import annotations

import errno
import math
import os
import re
import shutil
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import NotGeoreferencedWarning as RioNotGeoreferencedWarning
from rasterio.errors import RasterioError, RasterioIOError
from rasterio.windows import Window

try:  # GDAL's own errors, which rasterio raises as they are from some calls
    from rasterio._err import CPLE_BaseError
except ImportError:  # pragma: no cover - a private module; rasterio 1.3/1.4 have it
    CPLE_BaseError = RasterioError

from .atomic import fsync, sweep_stale, temp_path
from .errors import InputRasterError, NotGeoreferencedWarning, OptionError, OutputExistsError, OutputPathError
from .tiling import clip_window, pad_reflect

__all__ = [
    "MapRaster",
    "atomic_output",
    "ground_pixel_size",
    "ground_resolution",
    "is_gdal_name",
    "open_map_raster",
    "open_output",
    "output_errors",
    "output_profile",
    "parse_bands",
    "scratch_path",
    "sidecars",
    "verify_written",
]

EARTH_RADIUS = 6_371_008.8  # mean radius (IUGG), metres


def parse_bands(value: str | Sequence[int] | None) -> tuple[int, ...] | None:
    """``"3,2,1"`` or ``(3, 2, 1)`` → ``(3, 2, 1)``; 1-based band numbers, as GDAL counts."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            out = tuple(int(v) for v in value.replace(" ", "").split(","))
        except ValueError:
            raise OptionError(f"--bands {value!r} must be band numbers like 1,2,3") from None
    else:
        out = tuple(int(v) for v in value)
    if len(out) not in (1, 3) or any(b < 1 for b in out):
        raise OptionError(f"--bands {value!r} must be 3 band numbers (R,G,B) or 1 (grey), each ≥ 1")
    return out


@dataclass
class MapRaster:
    """An open input raster, read as RGB + validity mask.

    Use :func:`open_map_raster` to make one; it is a context manager.
    """

    dataset: rasterio.io.DatasetReader  # or a WarpedVRT on the model's grid
    path: str
    bands: tuple[int, ...]  # 1-based bands read: (r, g, b), (grey,) or (index,) with a colormap
    lut: np.ndarray | None  # (256, 3) colour table for paletted input
    alpha_band: int | None
    has_mask: bool  # True when some pixels can be invalid (nodata, alpha, mask band)
    georeferenced: bool

    @property
    def height(self) -> int:
        return self.dataset.height

    @property
    def width(self) -> int:
        return self.dataset.width

    def read(self, row_off: int, col_off: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """RGB (3, height, width) uint8 and valid (height, width) bool of a window.

        The window may reach past the raster; those pixels are reflections of the
        raster and are marked invalid.
        """
        (r0, r1, c0, c1), pads = clip_window(row_off, col_off, height, width, self.height, self.width)
        win = Window(c0, r0, c1 - c0, r1 - r0)
        try:
            data = self.dataset.read(self.bands, window=win)
            valid = self._mask(win) if self.has_mask else None
        except RasterioIOError as exc:
            raise self._read_error(r0, r1, exc) from None
        if self.lut is not None:
            rgb = self.lut[data[0]].transpose(2, 0, 1)
        elif data.shape[0] == 1:
            rgb = np.repeat(data, 3, axis=0)
        else:
            rgb = data
        rgb, inside = pad_reflect(np.ascontiguousarray(rgb, dtype=np.uint8), pads)
        if valid is not None:
            inside[pads[0][0] : pads[0][0] + r1 - r0, pads[1][0] : pads[1][0] + c1 - c0] &= valid
        return rgb, inside

    def valid_rows(self, first: int, n: int) -> np.ndarray | None:
        """Validity mask (n, width) of rows ``[first, first + n)``, or None if all valid."""
        if not self.has_mask:
            return None
        try:
            return self._mask(Window(0, first, self.width, n))
        except RasterioIOError as exc:
            raise self._read_error(first, first + n, exc) from None

    def _read_error(self, r0: int, r1: int, exc: BaseException) -> InputRasterError:
        reason = _first_line(exc)
        if _is_missing(reason):  # a VRT's or a virtual path's source went missing after the check
            return InputRasterError(f"input {self.path!r} could not be read at rows {r0}–{r1} ({reason}): a "
                                    "file it reads is missing; restore it or fix the path that names it")
        return InputRasterError(
            f"input {self.path!r} could not be read at rows {r0}–{r1} ({reason}): "
            "the file is truncated or corrupt; re-export or re-download it"
        )

    def _mask(self, win: Window) -> np.ndarray:
        if self.alpha_band is not None:
            return self.dataset.read(self.alpha_band, window=win) > 0
        # GDAL's dataset mask: invalid only where every band is nodata (or masked).
        return self.dataset.dataset_mask(window=win) > 0

    def close(self) -> None:
        self.dataset.close()

    def __enter__(self) -> MapRaster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def map_tiles(path: str | os.PathLike, tile_size: int = 256, bands: str | Sequence[int] | None = None,
              limit: int | None = None):
    """Yield the (3, tile_size, tile_size) uint8 tiles of a map raster, on a grid without
    overlap (reflection-padded at the edges, as render pads), skipping empty tiles.

    ``limit``: read only that many grid positions, spread evenly over the raster (the
    rest are never read, so a county-sized raster costs what ``limit`` tiles cost).
    """
    from .tiling import axis_starts

    with open_map_raster(path, bands) as raster:
        grid = [(r, c) for r in axis_starts(raster.height, tile_size, 0)
                for c in axis_starts(raster.width, tile_size, 0)]
        if limit is not None and limit < len(grid):
            grid = [grid[i] for i in np.linspace(0, len(grid) - 1, limit).round().astype(int)]
        for r, c in grid:
            rgb, valid = raster.read(r, c, tile_size, tile_size)
            if valid.any():
                yield rgb


def _describe(ds) -> str:
    return f"{ds.count} band(s) of {ds.dtypes[0]}"


#: Names GDAL opens that are not paths on the disk: virtual file systems (/vsizip/,
#: /vsicurl/…), URLs rasterio hands to them, and driver-prefixed names (NETCDF:f.nc:var).
GDAL_NAME_RE = re.compile(r"^(/vsi[a-z0-9_]+/|[a-z][a-z0-9+.-]*://|[A-Z][A-Z0-9_]+:)", re.IGNORECASE)


def is_gdal_name(path: str) -> bool:
    """Whether ``path`` names something only GDAL can find (:data:`GDAL_NAME_RE`)."""
    return bool(GDAL_NAME_RE.match(path)) and not os.path.exists(path)


def open_map_raster(path: str | os.PathLike, bands: str | Sequence[int] | None = None) -> MapRaster:
    """Open ``path`` for rendering; raise :class:`InputRasterError` with a fix if unusable.

    ``path`` may be anything GDAL opens: a file, or a GDAL virtual path such as
    ``/vsizip/maps.zip/map.tif`` or ``/vsicurl/https://…/map.tif`` (checked through GDAL).
    """
    path = os.fspath(path)
    virtual = is_gdal_name(path)
    if not virtual:
        if not os.path.exists(path):
            raise InputRasterError(f"input {path!r} does not exist: check the path")
        if os.path.isdir(path):
            raise InputRasterError(f"input {path!r} is a directory: give a raster file (GeoTIFF, PNG, JPEG…)")
        if os.path.getsize(path) == 0:
            raise InputRasterError(f"input {path!r} is an empty file (0 bytes): it is not a raster")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RioNotGeoreferencedWarning)
        try:
            ds = rasterio.open(path)
        except RasterioIOError as exc:
            reason = _first_line(exc)
            if virtual and _is_missing(reason):
                raise InputRasterError(f"input {path!r} does not exist ({reason}): check the path; GDAL "
                                       "virtual paths look like /vsizip/maps.zip/map.tif") from None
            raise InputRasterError(
                f"input {path!r} is not a raster GDAL can read ({reason}): "
                "give a GeoTIFF, PNG or JPEG"
            ) from None
    try:
        return _validate(ds, path, parse_bands(bands), bool(caught))
    except BaseException:
        ds.close()
        raise


#: rasterio's wrappers that only point at the GDAL error below them.
_GENERIC = ("See previous exception", "Read failed", "Write failed")


def _is_missing(reason: str) -> bool:
    return any(w in reason for w in ("No such file or directory", "does not exist", "HTTP response code: 404"))


def _first_line(exc: BaseException) -> str:
    """The most specific line of an error: rasterio chains GDAL's errors as causes
    ("Read failed. See previous exception" ← "IReadBlock failed" ← "TIFFFillTile: Read
    error at row 0, got 843 bytes, expected 4261"); the deepest says what went wrong."""
    lines, seen, e = [], set(), exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = str(e).strip()
        if text and not any(g in text for g in _GENERIC):
            lines.append(text.splitlines()[0])
        e = e.__cause__ or e.__context__
    return lines[-1][:200] if lines else type(exc).__name__


def _validate(ds, path: str, bands: tuple[int, ...] | None, not_georef_warned: bool) -> MapRaster:
    if ds.width < 1 or ds.height < 1:
        raise InputRasterError(f"input {path!r} has size {ds.width}×{ds.height}: nothing to render")
    t = ds.transform
    if t.b != 0 or t.d != 0:
        raise InputRasterError(
            f"input {path!r} has a rotated or sheared geotransform ({t.b:g}, {t.d:g} in the "
            "rotation terms): warp it north-up first, e.g. gdalwarp in.tif north_up.tif"
        )
    _check_sources(ds, path)
    georef = ds.crs is not None and not t.is_identity
    if not georef:
        gcps, gcp_crs = ds.gcps
        if gcps and t.is_identity:
            crs = f"in {gcp_crs.to_string()}" if gcp_crs else "without a CRS"
            message = (f"input {path!r} is georeferenced by {len(gcps)} ground control points {crs}, not a "
                       "geotransform: rendering on its pixel grid, without resampling to the model's ground "
                       "resolution; the output carries the same GCPs (warp the input first, e.g. gdalwarp "
                       "in.tif north_up.tif, to render at the model's resolution)")
        elif t.is_identity:
            message = (f"input {path!r} has no georeference: rendering on its pixel grid, without resampling "
                       "to the model's ground resolution; the output has no georeference either")
        else:
            message = (f"input {path!r} has a transform but no CRS: rendering on its pixel grid, without "
                       "resampling to the model's ground resolution; the output has no CRS either")
        warnings.warn(message, NotGeoreferencedWarning, stacklevel=3)
    if bands is not None:
        bad = [b for b in bands if b > ds.count]
        if bad:
            raise OptionError(f"--bands {','.join(map(str, bands))}: band(s) {bad} do not exist; "
                              f"{path!r} has {ds.count} band(s)")
    interp = list(ds.colorinterp)
    alpha = next((i + 1 for i, c in enumerate(interp) if c == ColorInterp.alpha), None)
    lut = None
    if bands is None:
        if ds.count in (3, 4) and (ds.count == 3 or alpha == 4 or interp[3] == ColorInterp.undefined):
            bands = (1, 2, 3)
            if ds.count == 4 and alpha is None:
                alpha = 4  # RGBA files often leave band 4's interpretation undefined
        elif ds.count == 1 or (ds.count == 2 and alpha == 2):
            bands = (1,)
        else:
            raise InputRasterError(
                f"input {path!r} has {_describe(ds)} ({', '.join(c.name for c in interp)}): "
                "choose the red, green and blue bands with --bands R,G,B (e.g. --bands 1,2,3)"
            )
    if alpha in bands:
        alpha = None  # the user asked to read it as colour
    dtypes = {ds.dtypes[b - 1] for b in bands}
    if dtypes != {"uint8"}:
        raise _not_8bit(ds, path, bands, "/".join(sorted(dtypes)))
    if len(bands) == 1 and ds.colorinterp[bands[0] - 1] == ColorInterp.palette:
        lut = _colormap_lut(ds, bands[0])
    has_mask = alpha is not None or any(
        MaskFlags.all_valid not in ds.mask_flag_enums[b - 1] for b in bands
    )
    return MapRaster(ds, path, bands, lut, alpha, has_mask, georef)


def _check_sources(ds, path: str) -> None:
    """A VRT (or any dataset made of other files) whose source file is missing opens
    fine and fails at the first read: say so before rendering, naming the file."""
    for f in ds.files[1:]:
        if not is_gdal_name(f) and not os.path.exists(f):
            raise InputRasterError(
                f"input {path!r} reads the file {f!r}, which does not exist: restore it, or fix its path in "
                f"{os.path.basename(path)!r} (a path relative to a VRT needs relativeToVRT=\"1\")")


#: Pixels read (at most, decimated) to describe the values of a raster that is refused.
SAMPLE_SIDE = 512


def _not_8bit(ds, path: str, bands: tuple[int, ...], dtype: str) -> InputRasterError:
    """The error for 16-bit, 32-bit and float rasters, with their sampled value range in
    the suggested conversion (and NaN named: it is the usual nodata of float rasters)."""
    rule = "the model takes 8-bit map renderings (RGB, grey or paletted)"
    h, w = min(ds.height, SAMPLE_SIDE), min(ds.width, SAMPLE_SIDE)
    # Decimated over the whole raster while that reads little; else its central window.
    small = ds.height * ds.width <= 16 * SAMPLE_SIDE**2
    win = None if small else Window((ds.width - w) // 2, (ds.height - h) // 2, w, h)
    try:
        sample = ds.read(bands, window=win, out_shape=(len(bands), h, w)).astype(np.float64)
    except RasterioIOError:
        sample = np.full((1, 1), np.nan)
    nan = np.isnan(sample)
    nodata = ds.nodata is not None and not np.isnan(ds.nodata) and bool((sample == ds.nodata).any())
    finite = sample[np.isfinite(sample) & ((sample != ds.nodata) if nodata else True)]
    if not finite.size:
        what = "NaN" if nan.all() else "NaN, infinite or nodata"
        return InputRasterError(
            f"input {path!r} is {dtype} and every sampled pixel is {what}: there is nothing to "
            "render; check how the file was made (an empty or failed export?)"
        )
    lo, hi = f"{finite.min():g}", f"{finite.max():g}"
    if nan.any() or nodata:
        what = "NaN" if nan.any() else f"nodata ({ds.nodata:g})"
        return InputRasterError(
            f"input {path!r} is {dtype} with {what} pixels (other values {lo} to {hi}), but {rule}: "
            f"convert it first, keeping them as nodata, e.g. gdal_translate -ot Byte -scale {lo} {hi} 1 255 "
            "-a_nodata 0 in.tif in8.tif"
        )
    return InputRasterError(
        f"input {path!r} is {dtype} (values {lo} to {hi}), but {rule}: convert it first, e.g. "
        f"gdal_translate -ot Byte -scale {lo} {hi} 0 255 in.tif in8.tif"
    )


def _colormap_lut(ds, band: int) -> np.ndarray:
    lut = np.zeros((256, 3), dtype=np.uint8)
    for index, rgba in ds.colormap(band).items():
        if 0 <= index < 256:
            lut[index] = rgba[:3]
    return lut


def ground_resolution(crs, transform, width: int, height: int) -> float | None:
    """Metres on the ground per pixel at the raster's centre, or None if unknown.

    Measured, not read from the CRS's units: the centre pixel's neighbours are taken to
    longitude/latitude and their great-circle distances averaged over x and y. This is
    right for geographic CRSs (degrees), Web Mercator (whose "metres" stretch by
    1/cos(latitude)) and projected CRSs alike.
    """
    size = ground_pixel_size(crs, transform, width, height)
    return None if size is None else (size[0] + size[1]) / 2


def ground_pixel_size(crs, transform, width: int, height: int) -> tuple[float, float] | None:
    """(x, y) metres on the ground of the raster's centre pixel, or None if unknown: a
    pixel square in degrees is twice as tall as it is wide at 60° N."""
    if crs is None or transform.is_identity:
        return None
    from rasterio.warp import transform as warp_transform

    cx, cy = width / 2, height / 2
    pts = [transform @ (cx, cy), transform @ (cx + 1, cy), transform @ (cx, cy + 1)]
    try:
        lon, lat = warp_transform(crs, "EPSG:4326", [p[0] for p in pts], [p[1] for p in pts])
    except Exception:  # a CRS PROJ cannot take to lon/lat
        return None

    def dist(i: int, j: int) -> float:
        p1, p2 = math.radians(lat[i]), math.radians(lat[j])
        dp, dl = p2 - p1, math.radians(lon[j] - lon[i])
        a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
        return 2 * EARTH_RADIUS * math.asin(min(1.0, math.sqrt(a)))

    gx, gy = dist(0, 1), dist(0, 2)
    return (gx, gy) if gx > 0 and gy > 0 and math.isfinite(gx + gy) else None


GTIFF_OPTIONS = {"tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate",
                 "predictor": 2, "BIGTIFF": "IF_SAFER"}
#: Deflate level 1, not GDAL's 6: synthetic aerial imagery compresses no better at 6
#: (50.3 vs 50.6 MB at 4096², benchmarks/render_throughput.py) and level 6 cost 37 %
#: more write time. Overviews likewise (GDAL's ZLEVEL_OVERVIEW).
DEFLATE_LEVEL = 1
#: Zstandard level 1, not GDAL's 9: 54.4 against 54.1 MB with overviews at 4096², and
#: 2.3× less write time. Overviews likewise (ZSTD_LEVEL_OVERVIEW).
ZSTD_LEVEL = 1
#: Rendered images are written with Zstandard: at 4096², with overviews and predictor 2,
#: 54.4 MB (deflate level 1: 53.8, none: 67.0), written in 0.13 s and its overviews built
#: in 0.16 s (deflate: 0.45 and 0.30 s of CPU the model would otherwise use on a small
#: machine). GDAL 2.3 (2018) or later built with Zstandard reads it (rasterio's wheels,
#: Debian's GDAL and QGIS); ``compress="deflate"`` writes what older GDALs and non-GDAL
#: readers expect.
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


#: GDAL's side files named ``NAME`` + suffix: georeference, nodata and metadata (PAM),
#: external overviews, external mask.
SIDECAR_SUFFIXES = (".aux.xml", ".ovr", ".msk")


def sidecars(path: str | os.PathLike) -> list[Path]:
    """The side files GDAL reads as part of the raster ``path``: :data:`SIDECAR_SUFFIXES`
    and the world files (``NAME.wld``, ``.pgw``/``.pngw`` for ``.png``, ``.tfw``/``.tifw``
    for ``.tif``…), which take precedence over a PNG's or JPEG's ``.aux.xml``."""
    path = Path(path)
    out = [Path(str(path) + s) for s in SIDECAR_SUFFIXES]
    ext = path.suffix[1:]
    if ext:
        stem = path.with_suffix("")
        names = {f"{ext[0]}{ext[-1]}w", f"{ext}w", "wld"}
        out += [Path(f"{stem}.{n}") for n in sorted(names)]
    return out


def _remove_with_side_files(path: Path) -> None:
    for p in (path, *(Path(str(path) + s) for s in SIDECAR_SUFFIXES)):
        if p.exists():
            p.unlink()


def _publish(tmp: Path, dst: Path) -> None:
    """Rename ``tmp`` onto ``dst`` with its side files; ``dst``'s old side files go.

    Two renames cannot be one atomic step; the order makes sure no moment shows an
    image with another image's side files: old side files, then the image, then its own.
    """
    own = [(Path(str(tmp) + s), Path(str(dst) + s)) for s in SIDECAR_SUFFIXES]
    for old in sidecars(dst):
        if os.path.lexists(old):
            old.unlink()
    os.replace(tmp, dst)
    for new, target in own:
        if new.exists():
            os.replace(new, target)


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
        raise write_failure(dst, _first_line(exc)) from None
    except OSError as exc:
        if exc.errno not in WRITE_ERRNOS:
            raise
        raise write_failure(dst, exc.strerror or _first_line(exc), exc.errno) from None


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
        raise write_failure(dst, _first_line(exc)) from None


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


@contextmanager
def scratch_path(dst: str | os.PathLike, tag: str, suffix: str = ".tif"):
    """Yield a hidden temporary path beside ``dst``, always removed on exit."""
    dst = Path(dst)
    tmp = temp_path(dst, tag, suffix)  # named after this process: see atomic.py
    try:
        yield tmp
    finally:
        _remove_with_side_files(tmp)


@contextmanager
def atomic_output(dst: str | os.PathLike, suffix: str | None = None, check: bool = True):
    """Yield a temporary path beside ``dst``; rename it onto ``dst`` only on success.

    On any exception (including KeyboardInterrupt) the temporary file and its GDAL
    side files are removed and ``dst`` is left exactly as it was. Before the rename the
    file is checked (``check``, for rasters: :func:`verify_written`; GDAL reports some
    write errors, such as a full disk while closing a file, only in its log) and flushed
    to disk, so ``dst`` is never replaced by a damaged file, even by a power cut just
    after the rename. ``dst``'s side files go with it: the new file's own (a PNG's or
    JPEG's ``.aux.xml`` holding its CRS and transform) replace them, others are removed
    (:func:`sidecars`).
    """
    dst = Path(dst)
    suffix = suffix if suffix is not None else dst.suffix
    sweep_stale(dst.parent, dst.name)  # temporaries of an earlier run killed with -9 or SIGHUP
    tmp = temp_path(dst, None, suffix)
    try:
        yield tmp
        if check:
            verify_written(tmp, dst)
        try:
            for p in (tmp, *(Path(str(tmp) + s) for s in SIDECAR_SUFFIXES)):
                if p.exists():
                    fsync(p)
        except OSError as exc:  # a network filesystem may report a full disk only now
            raise write_failure(dst, exc.strerror or str(exc), exc.errno) from None
        _publish(tmp, dst)
        fsync(dst.parent, folder=True)
    finally:
        _remove_with_side_files(tmp)
