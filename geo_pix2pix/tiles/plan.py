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

A plan is streamed: tiles are counted without being listed (:meth:`.Area.count`) and
metatiles are yielded one at a time, so planning a whole-world area at zoom 15 takes
the memory of a row of metatiles, and the first metatile comes at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import mercantile

from ..errors import OptionError
from .area import Area
from .tilemath import ChipGrid, ZoomRange

__all__ = ["Expiry", "Plan", "MAX_UPSAMPLE_LEVELS"]

#: Zooms above the render zoom that upsampling may reach: 2**5 = 32× magnification
#: already shows 8-px blocks of rendered pixels; deeper zooms need a finer model.
MAX_UPSAMPLE_LEVELS = 5
#: Zooms below the render zoom that overviews may reach when none of the render zoom's
#: levels is requested: each level costs 4× the tiles of the one above.
MAX_HIDDEN_LEVELS = 6
#: Side, in tiles, of the blocks in which overview levels are built (memory: one block).
OVERVIEW_BLOCK = 64


@dataclass(frozen=True)
class Plan:
    """The tiles of ``area`` at ``zooms``, rendered at ``render_zoom``.

    ``render_zoom_given``: the render zoom came from ``--render-zoom`` (messages name it).
    """

    area: Area
    zooms: ZoomRange
    render_zoom: int
    meta_size: int = 8
    render_zoom_given: bool = False
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 1 <= self.meta_size <= 64:
            raise OptionError(f"--meta-size {self.meta_size} must be between 1 and 64 tiles; "
                              "the default is 8 (8×8 tiles per model pass)")
        zn, zr = self.render_zoom, self.zooms
        where = f"--render-zoom {zn}" if self.render_zoom_given else f"the model's zoom {zn}"
        if zr.max - zn > MAX_UPSAMPLE_LEVELS:
            fix = (f"raise --render-zoom to {zr.max - MAX_UPSAMPLE_LEVELS} or more" if self.render_zoom_given
                   else "use a model trained at a finer ground resolution")
            raise OptionError(
                f"--zoom {zr} reaches {zr.max - zn} zooms above {where}; at most "
                f"{MAX_UPSAMPLE_LEVELS} can be upsampled: lower the maximum zoom to "
                f"{zn + MAX_UPSAMPLE_LEVELS} or {fix}")
        if zn - zr.max > MAX_HIDDEN_LEVELS:
            raise OptionError(
                f"--zoom {zr} lies {zn - zr.max} zooms below {where}: that means rendering "
                f"{4 ** (zn - zr.max)}× the tiles asked for; include zooms up to {zn - MAX_HIDDEN_LEVELS} "
                "or more, or pass a lower --render-zoom")

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

    # -- counts (no tile listed) -------------------------------------------------------
    def count(self, z: int) -> int:
        return self.area.count(z)

    @property
    def total(self) -> int:
        """Requested tiles: what the summary counts."""
        return sum(self.count(z) for z in self.zooms)

    def work_levels(self) -> list[int]:
        """Every level the run makes tiles of: stored levels and the render zoom."""
        return sorted(set(self.stored_levels) | {self.render_zoom})

    def at_least(self) -> int:
        """A quick lower bound of the tiles the run makes (all levels), from the area's size."""
        return sum(self.area.at_least(z) for z in self.work_levels())

    def work(self) -> int:
        """Tiles the run makes at every level (hidden ones and the render zoom included)."""
        return sum(self.count(z) for z in self.work_levels())

    def metatile_count(self) -> int:
        """Metatiles holding area tiles (for a box, by arithmetic)."""
        if self.area.geometry is None:
            m = self.meta_size
            return sum((x1 // m - x0 // m + 1) * (y1 // m - y0 // m + 1)
                       for x0, y0, x1, y1 in self.area._box_ranges(self.render_zoom))
        return sum(1 for _ in self.metatiles())

    # -- work, streamed ----------------------------------------------------------------
    def metatiles(self) -> Iterator[tuple[tuple[int, int], list[mercantile.Tile]]]:
        """Render-zoom tiles grouped by metatile, one metatile at a time, in row order."""
        return self.area.blocks(self.render_zoom, self.meta_size)

    def families(self, bases: list[mercantile.Tile]) -> list[tuple[mercantile.Tile, tuple[mercantile.Tile, ...]]]:
        """For each render-zoom tile of one metatile, the tiles made from its rendering:
        itself if it is stored, and its descendants at the upsampled levels that are in
        the area. Bases with nothing to make are left out."""
        if not bases:
            return []
        stored = self.render_zoom in self.stored_levels
        x0, x1 = min(b.x for b in bases), max(b.x for b in bases) + 1
        y0, y1 = min(b.y for b in bases), max(b.y for b in bases) + 1
        inside = {}
        for z in self.upsampled_levels:
            f = 2 ** (z - self.render_zoom)
            inside[z] = self.area.members(z, x0 * f, y0 * f, x1 * f, y1 * f)
        out = []
        for b in bases:
            fam = [b] if stored else []
            for z, members in inside.items():
                f = 2 ** (z - b.z)
                fam.extend(mercantile.Tile(b.x * f + i, b.y * f + j, z)
                           for j in range(f) for i in range(f) if (b.x * f + i, b.y * f + j) in members)
            if fam:
                out.append((b, tuple(fam)))
        return out

    def family(self, base: mercantile.Tile) -> list[mercantile.Tile]:
        """Tiles made from the rendering of ``base`` (see :meth:`families`)."""
        fams = self.families([base])
        return list(fams[0][1]) if fams else []

    def overview_blocks(self, z: int) -> Iterator[tuple[list[mercantile.Tile], set[tuple[int, int]]]]:
        """Overview tiles of zoom ``z`` in blocks, each with the ``(x, y)`` of the area's
        tiles one zoom deeper under it (its tiles' children that exist)."""
        for (bx, by), tiles in self.area.blocks(z, OVERVIEW_BLOCK):
            b = OVERVIEW_BLOCK
            below = self.area.members(z + 1, 2 * bx * b, 2 * by * b, 2 * (bx + 1) * b, 2 * (by + 1) * b)
            yield tiles, below

    # -- small-area helpers (tests, the QGIS preview) ----------------------------------
    def tiles(self, z: int) -> frozenset[mercantile.Tile]:
        return frozenset(self.area.tiles(z))

    def ordered(self, z: int) -> list[mercantile.Tile]:
        return self.area.tiles(z)

    def children(self, tile: mercantile.Tile) -> list[mercantile.Tile | None]:
        """The four children of an overview tile in (top-left, top-right, bottom-left,
        bottom-right) order; None for a child outside the area."""
        x, y, z = 2 * tile.x, 2 * tile.y, tile.z + 1
        members = self.area.members(z, x, y, x + 2, y + 2)
        return children_of(tile, members)


def children_of(tile: mercantile.Tile, members: set[tuple[int, int]]) -> list[mercantile.Tile | None]:
    """``tile``'s four children (TL, TR, BL, BR), None where ``(x, y)`` is not in ``members``."""
    x, y, z = 2 * tile.x, 2 * tile.y, tile.z + 1
    kids = [mercantile.Tile(x, y, z), mercantile.Tile(x + 1, y, z),
            mercantile.Tile(x, y + 1, z), mercantile.Tile(x + 1, y + 1, z)]
    return [k if (k.x, k.y) in members else None for k in kids]


class Expiry:
    """Which render-zoom tiles read a changed source tile (osm2pgsql/render_expired lists).

    Holds the listed tiles only, not what they expand to: a line ``0/0/0`` (the whole
    world changed) stays one entry, and a tile is tested against it when its metatile
    comes up.
    """

    def __init__(self, tiles: Iterable[mercantile.Tile], render_zoom: int, grid: ChipGrid) -> None:
        self.zoom, self.grid = render_zoom, grid
        self.fine: set[tuple[int, int]] = set()  # at the render zoom (deeper tiles: their ancestor)
        self.coarse: dict[int, set[tuple[int, int]]] = {}  # shallower tiles, by zoom
        for t in tiles:
            if t.z >= render_zoom:
                shift = t.z - render_zoom
                self.fine.add((t.x >> shift, t.y >> shift))
            else:
                self.coarse.setdefault(t.z, set()).add((t.x, t.y))

    def __bool__(self) -> bool:
        return bool(self.fine or self.coarse)

    def __call__(self, base: mercantile.Tile) -> bool:
        """Whether ``base``'s rendering reads a listed tile (its chips' source tiles)."""
        for d in self.grid.dependencies(base):
            if (d.x, d.y) in self.fine:
                return True
            for z, tiles in self.coarse.items():
                shift = self.zoom - z
                if (d.x >> shift, d.y >> shift) in tiles:
                    return True
        return False
