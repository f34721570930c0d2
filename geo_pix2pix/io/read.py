"""Reading a map raster: RGB windows with a validity mask, and a clear error when it cannot.

It turns whatever GDAL can read into what the model needs, (3, H, W) uint8 RGB plus a
validity mask:

- 3 or 4 byte bands (RGB, RGBA with an alpha band);
- 1 byte band with a colour table (expanded to RGB through the table);
- 1 byte band of grey (repeated to RGB), or grey + alpha;
- anything else with ``bands=(r, g, b)`` chosen by the user.

Windows that reach past the raster's edges are filled by reflection (tiles near an
edge see a mirror image of the map rather than black), and their mask is False there.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import rasterio
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import NotGeoreferencedWarning as RioNotGeoreferencedWarning
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from ..errors import InputRasterError, NotGeoreferencedWarning, OptionError
from ..grid.tiling import clip_window, pad_reflect

__all__ = ["GDAL_NAME_RE", "MapRaster", "gdal_reason", "is_gdal_name", "map_tiles", "open_map_raster",
           "parse_bands"]


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
        reason = gdal_reason(exc)
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
    from ..grid.tiling import axis_starts

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
            reason = gdal_reason(exc)
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


def gdal_reason(exc: BaseException) -> str:
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
