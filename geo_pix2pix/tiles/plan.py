"""Which tiles a run makes, at which zoom the model runs, and how the work is cut.

The model runs at one zoom, the *render zoom* (the zoom matching its ground
resolution, :func:`tilemath.native_zoom`). From there:

- requested zooms above it are upsampled from the rendered pixels (each rendered tile
  gives 4, 16, … tiles one, two, … zooms deeper);
- requested zooms below it are overview tiles, each the 2×2 average of its four
  children, built level by level as gdal2tiles builds its overview tiles;
- if every requested zoom is below the render zoom, the levels in between are made too
  and kept aside (in the cache's work folder, not in the output) to build from.

Work is cut into metatiles, aligned blocks of ``meta_size``² tiles at the render zoom
(MapProxy's ``meta_size``, renderd's METATILE): one job reads the source once for the
block and its surroundings and runs the model once over it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import mercantile

from ..errors import OptionError
from .area import Area
from .tilemath import ZoomRange, metatile_of, tiles_at_zoom

__all__ = ["Plan", "MAX_UPSAMPLE_LEVELS"]

#: Zooms above the render zoom that upsampling may reach: 2**5 = 32× magnification
#: already shows 8-px blocks of rendered pixels; deeper zooms need a finer model.
MAX_UPSAMPLE_LEVELS = 5
#: Zooms below the render zoom that overviews may reach when none of the render zoom's
#: levels is requested: each level costs 4× the tiles of the one above.
MAX_HIDDEN_LEVELS = 6


@dataclass(frozen=True)
class Plan:
    """The tiles of ``area`` at ``zooms``, rendered at ``render_zoom``."""

    area: Area
    zooms: ZoomRange
    render_zoom: int
    meta_size: int = 8
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 1 <= self.meta_size <= 64:
            raise OptionError(f"--meta-size {self.meta_size} must be between 1 and 64 tiles; "
                              "the default is 8 (8×8 tiles per model pass)")
        zn, zr = self.render_zoom, self.zooms
        if zr.max - zn > MAX_UPSAMPLE_LEVELS:
            raise OptionError(
                f"--zoom {zr} reaches {zr.max - zn} zooms above the model's zoom {zn}; at most "
                f"{MAX_UPSAMPLE_LEVELS} can be upsampled: lower the maximum zoom to "
                f"{zn + MAX_UPSAMPLE_LEVELS} "
                "or use a model trained at a finer ground resolution")
        if zn - zr.max > MAX_HIDDEN_LEVELS:
            raise OptionError(
                f"--zoom {zr} lies {zn - zr.max} zooms below the model's zoom {zn}: that means rendering "
                f"{4 ** (zn - zr.max)}× the tiles asked for; include zooms up to {zn - MAX_HIDDEN_LEVELS} "
                "or more, or pass --render-zoom")

    # -- levels ----------------------------------------------------------------------
    def requested(self, z: int) -> bool:
        return z in self.zooms

    @property
    def stored_levels(self) -> list[int]:
        """Levels written somewhere: the requested ones, plus hidden ones down to the render
        zoom when it lies deeper than every requested zoom."""
        top = max(self.zooms.max, self.render_zoom)
        return [z for z in range(self.zooms.min, top + 1)
                if self.requested(z) or self.zooms.max < z <= self.render_zoom]

    @property
    def overview_levels(self) -> list[int]:
        """Levels built from their children, deepest first."""
        return [z for z in reversed(self.stored_levels) if z < self.render_zoom]

    @property
    def upsampled_levels(self) -> list[int]:
        return [z for z in self.zooms if z > self.render_zoom]

    def tiles(self, z: int) -> frozenset[mercantile.Tile]:
        key = ("tiles", z)
        if key not in self._cache:
            self._cache[key] = frozenset(self.area.tiles(z))
        return self._cache[key]

    def ordered(self, z: int) -> list[mercantile.Tile]:
        return sorted(self.tiles(z), key=lambda t: (t.y, t.x))

    @property
    def total(self) -> int:
        """Requested tiles: what the summary counts."""
        return sum(len(self.tiles(z)) for z in self.zooms)

    # -- work ------------------------------------------------------------------------
    def family(self, base: mercantile.Tile) -> list[mercantile.Tile]:
        """Tiles made from the rendering of ``base`` (a render-zoom tile): itself if it is
        stored, and its descendants at the upsampled levels that are in the area."""
        out = [base] if base.z in self.stored_levels else []
        for z in self.upsampled_levels:
            tiles = self.tiles(z)
            out.extend(t for t in tiles_at_zoom(base, z) if t in tiles)
        return out

    def metatiles(self) -> list[tuple[tuple[int, int], list[mercantile.Tile]]]:
        """Render-zoom tiles grouped by metatile, in row order."""
        groups: dict[tuple[int, int], list[mercantile.Tile]] = defaultdict(list)
        for t in self.ordered(self.render_zoom):
            groups[metatile_of(t, self.meta_size)].append(t)
        return sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0]))

    def children(self, tile: mercantile.Tile) -> list[mercantile.Tile | None]:
        """The four children of an overview tile in (top-left, top-right, bottom-left,
        bottom-right) order; None for a child outside the area."""
        below = self.tiles(tile.z + 1)
        x, y, z = 2 * tile.x, 2 * tile.y, tile.z + 1
        kids = [mercantile.Tile(x, y, z), mercantile.Tile(x + 1, y, z),
                mercantile.Tile(x, y + 1, z), mercantile.Tile(x + 1, y + 1, z)]
        return [k if k in below else None for k in kids]
