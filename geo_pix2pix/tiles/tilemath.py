"""Tile maths for XYZ caches: zoom ranges, the model's zoom, the chip grid, dependencies.

Pure functions of numbers and :class:`mercantile.Tile` values; nothing here reads a
file or runs a model.

**The chip grid.** The model runs on square chips of 256 px at the render zoom. The
chips lie on one grid for the whole world, anchored at Web Mercator's pixel origin:
chip ``k`` along an axis covers pixels ``[k·stride − buffer, k·stride − buffer + 256)``
with ``stride = 256 − 2·buffer``, so neighbouring chips overlap by ``2·buffer`` pixels
and are blended as render blends its tiles (render's ``--overlap`` is this ``2·buffer``;
:meth:`ChipGrid.tile_grid` makes chips a :class:`geo_pix2pix.grid.tiling.TileGrid`). A
metatile is rendered by running every chip that touches its tiles: each pixel then gets
exactly the chips, and the weights, it would get if the whole world were rendered in one
piece, whatever the metatile size. Metatile borders
fall inside rendered context and leave no seam, and a tile's pixels depend on the
source tiles under those chips only: :meth:`ChipGrid.dependencies`, the tile and its
neighbours, which is what an incremental run regenerates when one source tile changes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import mercantile

from ..errors import OptionError
from ..grid.tiling import TileGrid

__all__ = [
    "MAX_LATITUDE",
    "MAX_ZOOM",
    "TILE_SIZE",
    "ChipGrid",
    "ZoomRange",
    "check_bbox",
    "metatile_of",
    "native_zoom",
    "parse_expire",
    "parse_zoom_range",
    "resolution_at",
    "tiles_at_zoom",
]

TILE_SIZE = 256
#: Deepest zoom accepted: 2**24 tiles per axis is finer than 1 cm at the equator.
MAX_ZOOM = 24
#: Web Mercator's latitude limit (the square world), degrees.
MAX_LATITUDE = 85.0511287798066
#: Ground metres per pixel at zoom 0 on the equator for 256-px tiles (2πR / 256).
EQUATOR_RESOLUTION = 156543.03392804097


class ZoomRange(NamedTuple):
    min: int
    max: int

    def __iter__(self) -> Iterator[int]:  # type: ignore[override]
        return iter(range(self.min, self.max + 1))

    def __contains__(self, z: object) -> bool:  # type: ignore[override]
        return isinstance(z, int) and self.min <= z <= self.max

    def __str__(self) -> str:
        return f"{self.min}" if self.min == self.max else f"{self.min}-{self.max}"


def parse_zoom_range(text: str | int | tuple[int, int]) -> ZoomRange:
    """``"14-17"`` → ZoomRange(14, 17); ``"15"`` or ``15`` → ZoomRange(15, 15)."""
    if isinstance(text, int):
        lo = hi = text
    elif isinstance(text, tuple):
        lo, hi = text
    else:
        lo_s, sep, hi_s = str(text).strip().partition("-")
        try:
            lo = int(lo_s)
            hi = int(hi_s) if sep else lo
        except ValueError:
            raise OptionError(f"--zoom {text!r} must be a zoom or a range MIN-MAX, e.g. 14-17") from None
    if not 0 <= lo <= hi <= MAX_ZOOM:
        raise OptionError(f"--zoom {lo}-{hi}: zooms must satisfy 0 <= MIN <= MAX <= {MAX_ZOOM}, "
                          "e.g. --zoom 14-17")
    return ZoomRange(lo, hi)


def check_bbox(west: float, south: float, east: float, north: float) -> tuple[float, float, float, float]:
    """Validate a lon/lat bounding box (degrees) for Web Mercator and return it; W > E
    stands for a box across the antimeridian when that is the shorter way round."""
    box = f"{west:g},{south:g},{east:g},{north:g}"
    if not all(math.isfinite(v) for v in (west, south, east, north)):
        raise OptionError(f"--bbox {box}: every value must be a finite number of degrees")
    if not (-180 <= west <= 180 and -180 <= east <= 180):
        raise OptionError(f"--bbox {box}: longitudes must lie in [-180, 180]")
    if west == east or (west > east and west - east <= 180):
        # W > E is a box across the antimeridian when that is the shorter way from W to E
        # (170,…,-170,…: 20° wide); otherwise it is W and E swapped.
        raise OptionError(f"--bbox {box}: west must be less than east (W,S,E,N order); an area across "
                          "the antimeridian is given with W > E, e.g. 170,-20,-170,-10")
    if south >= north:
        raise OptionError(f"--bbox {box}: south must be less than north (W,S,E,N order)")
    if south < -MAX_LATITUDE or north > MAX_LATITUDE:
        raise OptionError(f"--bbox {box}: latitudes must lie within ±{MAX_LATITUDE:.4f}°, the "
                          "limit of Web Mercator tiles; clip the box to that range")
    return west, south, east, north


def resolution_at(z: int, lat: float) -> float:
    """Ground metres per pixel of 256-px tiles at zoom ``z`` and latitude ``lat``."""
    return EQUATOR_RESOLUTION * math.cos(math.radians(lat)) / 2**z


def native_zoom(ground_resolution: float, lat: float) -> int:
    """The zoom whose ground resolution at ``lat`` is closest to ``ground_resolution``.

    Closest in scale (log ratio), so that e.g. 1.5× too fine and 1.5× too coarse count
    the same.
    """
    if not ground_resolution > 0:
        raise OptionError(f"ground resolution {ground_resolution!r} m/px must be positive")
    best = min(range(MAX_ZOOM + 1),
               key=lambda z: abs(math.log(resolution_at(z, lat) / ground_resolution)))
    return best


def tiles_at_zoom(tile: mercantile.Tile, z: int) -> list[mercantile.Tile]:
    """The tiles at zoom ``z`` covering ``tile``: its ancestor, itself, or its descendants."""
    if z <= tile.z:
        return [mercantile.parent(tile, zoom=z) if z < tile.z else tile]
    f = 2 ** (z - tile.z)
    return [mercantile.Tile(tile.x * f + i, tile.y * f + j, z) for j in range(f) for i in range(f)]


def parse_expire(lines: Iterable[str], source: str = "expire list") -> list[mercantile.Tile]:
    """Tiles of an osm2pgsql/render_expired list: one ``z/x/y`` per line (``#`` comments)."""
    out = []
    for n, raw in enumerate(lines, 1):
        if "\x00" in raw:
            raise OptionError(f"{source} is not a text file (line {n} holds NUL bytes): give a file of z/x/y "
                              "lines, as osm2pgsql --expire-tiles writes")
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            z, x, y = (int(v) for v in line.split("/"))
        except ValueError:
            raise OptionError(f"{source} line {n}: {raw.strip()!r} is not z/x/y "
                              "(e.g. 15/18654/9478)") from None
        if not (0 <= z <= MAX_ZOOM and 0 <= x < 2**z and 0 <= y < 2**z):
            raise OptionError(f"{source} line {n}: tile {z}/{x}/{y} does not exist: x and y must lie "
                              f"in [0, 2**z) and z in [0, {MAX_ZOOM}]")
        out.append(mercantile.Tile(x, y, z))
    return out


@dataclass(frozen=True)
class ChipGrid:
    """The world-wide grid of model chips at one zoom (see the module docstring).

    ``margin`` extra pixels around each tile are rendered too, so that tiles of deeper
    zooms can be interpolated across tile borders from rendered pixels.
    """

    buffer: int = 32
    size: int = TILE_SIZE
    margin: int = 2

    def __post_init__(self) -> None:
        if not 0 <= self.buffer < self.size // 2:
            raise OptionError(f"--buffer {self.buffer} must be at least 0 and less than "
                              f"{self.size // 2} (half a chip); the default is 32")

    @property
    def stride(self) -> int:
        return self.size - 2 * self.buffer

    @property
    def overlap(self) -> int:
        return 2 * self.buffer

    def chip_start(self, k: int) -> int:
        return k * self.stride - self.buffer

    def chips(self, lo: int, hi: int) -> range:
        """Chip indices along one axis whose pixels intersect ``[lo, hi)``."""
        s, b = self.stride, self.buffer
        kmin = (lo + b - self.size) // s + 1
        kmax = -((-(hi + b)) // s) - 1  # ceil((hi + b) / s) - 1
        return range(kmin, kmax + 1)

    def tile_grid(self, rows: range, cols: range) -> TileGrid:
        """Chips ``rows`` × ``cols`` (indices) as a TileGrid over the canvas they cover, whose
        pixel (0, 0) is world pixel ``(chip_start(cols.start), chip_start(rows.start))``."""
        y0, x0 = self.chip_start(rows.start), self.chip_start(cols.start)
        height = self.chip_start(rows.stop - 1) + self.size - y0
        width = self.chip_start(cols.stop - 1) + self.size - x0
        return TileGrid(height, width, self.size, self.overlap, row_starts=[self.chip_start(k) - y0 for k in rows],
                        col_starts=[self.chip_start(k) - x0 for k in cols])

    def tile_chips(self, t: int) -> range:
        """Chip indices along one axis that touch tile index ``t`` (margin included)."""
        return self.chips(t * TILE_SIZE - self.margin, (t + 1) * TILE_SIZE + self.margin)

    def source_span(self, t: int, z: int) -> range:
        """Tile indices along one axis that the chips of tile ``t`` read (within the world)."""
        ks = self.tile_chips(t)
        first = self.chip_start(ks.start) // TILE_SIZE
        last = (self.chip_start(ks.stop - 1) + self.size - 1) // TILE_SIZE
        return range(max(first, 0), min(last, 2**z - 1) + 1)

    def dependencies(self, tile: mercantile.Tile) -> list[mercantile.Tile]:
        """Source tiles (same zoom) whose pixels can change ``tile``'s rendering."""
        return [mercantile.Tile(x, y, tile.z)
                for y in self.source_span(tile.y, tile.z) for x in self.source_span(tile.x, tile.z)]

    def dependents(self, tile: mercantile.Tile) -> list[mercantile.Tile]:
        """Tiles whose rendering reads ``tile``: it and the neighbours its buffer reaches."""
        z, n = tile.z, 2**tile.z
        reach = 1 + self.size // TILE_SIZE
        out = []
        for y in range(max(tile.y - reach, 0), min(tile.y + reach, n - 1) + 1):
            if tile.y not in self.source_span(y, z):
                continue
            for x in range(max(tile.x - reach, 0), min(tile.x + reach, n - 1) + 1):
                if tile.x in self.source_span(x, z):
                    out.append(mercantile.Tile(x, y, z))
        return out


def metatile_of(tile: mercantile.Tile, meta_size: int) -> tuple[int, int]:
    """The metatile (column, row) holding ``tile``: aligned blocks of meta_size² tiles."""
    return tile.x // meta_size, tile.y // meta_size
