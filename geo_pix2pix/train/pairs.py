"""Training pairs from two georeferenced rasters of one area: a map and an aerial image.

The two rasters may differ in CRS, resolution and extent. They are brought onto one
grid, the **map raster's own grid** (its CRS, transform and size), and the aerial
image is read through a rasterio ``WarpedVRT`` onto it:

- the map is the model's input, and its lines and colour fields are what resampling
  damages most (a paletted map cannot be interpolated at all): read as it is, the
  training inputs look exactly like the maps ``render`` will later be given;
- the grid's ground resolution is then the map's, which is stored in the checkpoint
  and is what ``render`` resamples other maps to;
- aerial imagery is usually the finer of the two, and shrinking it with ``average``
  resampling loses nothing the map grid could hold. Where the aerial is more than
  1.5× coarser than the map, a :class:`~geo_pix2pix.errors.ResolutionWarning` says so:
  the targets are then upsampled (cubic) and blurry, and the model learns blur.

Tiles are laid by :class:`geo_pix2pix.tiling.TileGrid`, the grid ``render`` uses,
``tile_size`` 286 with ``overlap`` 0 by default: 286 px is the paper's jitter load size,
so with the trainer's default ``load_size`` (286) tiles are randomly cropped to 256
without being resized (true ground resolution, no interpolation blur); no requested
overlap keeps neighbouring tiles as independent as the grid allows (the grid spreads
tiles evenly, so they still overlap by less than a tile to close the span), which
keeps train/validation leakage small when tiles are split by name. A tile is kept
only when every pixel is valid in both rasters (dataset masks: nodata, alpha, mask
bands, and the aerial's coverage of the map grid); tiles past the raster's edges are
never kept, as their margin would be a reflection.
"""

from __future__ import annotations

import logging
import os
import warnings
from contextlib import ExitStack

import numpy as np
from rasterio.enums import ColorInterp, Resampling
from rasterio.vrt import WarpedVRT

from ..errors import DatasetError, ResolutionWarning
from ..grid.tiling import Chip, TileGrid
from ..io.geodesy import ground_resolution
from ..io.read import MapRaster, open_map_raster
from .data import PairSource

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_OVERLAP", "DEFAULT_TILE_SIZE", "RasterPairs"]

#: Side of the training tiles (the paper's jitter load size).
DEFAULT_TILE_SIZE = 286
#: Overlap asked of the tile grid (see the module docstring).
DEFAULT_OVERLAP = 0
#: The aerial may be this much coarser than the map before a ResolutionWarning.
COARSER_TOLERANCE = 1.5


def _resolution(raster: MapRaster) -> float | None:
    ds = raster.dataset
    return ground_resolution(ds.crs, ds.transform, ds.width, ds.height)


class RasterPairs(PairSource):
    """Aligned (map, aerial) tiles cut from a map raster and an aerial raster.

    ``names`` are tile ids ``r<row>c<col>`` of the tile grid; ``ground_resolution`` is
    the grid's metres per pixel. ``map_bands``/``aerial_bands`` choose bands as
    ``render --bands`` does. The rasters stay open until :meth:`close` (or the end of
    a ``with`` block).
    """

    def __init__(self, map_path: str | os.PathLike, aerial_path: str | os.PathLike, *,
                 tile_size: int = DEFAULT_TILE_SIZE, overlap: int = DEFAULT_OVERLAP,
                 map_bands: str | tuple[int, ...] | None = None,
                 aerial_bands: str | tuple[int, ...] | None = None) -> None:
        super().__init__()
        self._stack = ExitStack()
        try:
            self.map = self._stack.enter_context(open_map_raster(map_path, map_bands))
            aerial = self._stack.enter_context(open_map_raster(aerial_path, aerial_bands))
            for what, r in (("map", self.map), ("aerial", aerial)):
                if not r.georeferenced:
                    raise DatasetError(
                        f"{what} raster {r.path!r} has no CRS or geotransform: both rasters of the "
                        "rasters layout must be georeferenced to be aligned"
                    )
            self.ground_resolution = _resolution(self.map)
            self.aerial = self._on_map_grid(aerial)
            self.grid = TileGrid(self.map.height, self.map.width, tile_size, overlap)
            self.chips = self._valid_chips()
        except BaseException:
            self._stack.close()
            raise
        self.names = [f"r{c.row:04d}c{c.col:04d}" for c in self.chips]
        if not self.chips:
            self.close()
            raise DatasetError(
                f"no {tile_size}×{tile_size} tile of the map {str(map_path)!r} "
                f"({self.map.width}×{self.map.height} px) is valid in both rasters: the aerial "
                f"{str(aerial_path)!r} must cover the map where it has data; use a smaller tile_size "
                "for small rasters"
            )
        log.info("%s + %s: %d of %d tiles valid in both, %.3g m/px", map_path, aerial_path,
                 len(self.chips), len(self.grid), self.ground_resolution or float("nan"))

    def _on_map_grid(self, aerial: MapRaster) -> MapRaster:
        """The aerial read through a WarpedVRT on the map's grid, with a validity alpha."""
        ref = self.map.dataset
        a_res = _resolution(aerial)
        ratio = a_res / self.ground_resolution if a_res and self.ground_resolution else 1.0
        if ratio > COARSER_TOLERANCE:
            warnings.warn(
                f"the aerial {aerial.path!r} ({a_res:.3g} m/px) is {ratio:.1f}× coarser than the "
                f"map ({self.ground_resolution:.3g} m/px): its tiles are upsampled and blurry, and "
                "a model trained on them learns blur; use a finer aerial or a coarser map",
                ResolutionWarning, stacklevel=3,
            )
        if aerial.lut is not None:
            resampling = Resampling.nearest  # palette indices cannot be interpolated
        else:
            resampling = Resampling.average if ratio < 1 else Resampling.cubic
        # One alpha band of the VRT says where the aerial is valid on the map grid: 0
        # outside its footprint and where it is nodata or masked. An aerial with its own
        # alpha band has it warped (rasterio does not pick it up by itself); otherwise
        # the warper adds one from the nodata value or mask band.
        if aerial.alpha_band is not None:
            alpha_opts = {"src_alpha": aerial.alpha_band, "dst_alpha": aerial.alpha_band}
        else:
            alpha_opts = {"add_alpha": True}
        ds = aerial.dataset
        vrt = self._stack.enter_context(WarpedVRT(
            ds, crs=ref.crs, transform=ref.transform, width=ref.width, height=ref.height,
            resampling=resampling, **alpha_opts,
        ))
        alpha = aerial.alpha_band or list(vrt.colorinterp).index(ColorInterp.alpha) + 1
        return MapRaster(vrt, aerial.path, aerial.bands, aerial.lut, alpha, True, True)

    def _valid_chips(self) -> list[Chip]:
        g, t = self.grid, self.grid.tile_size
        x0, x1 = g.col_starts[0], g.col_starts[-1] + t
        keep = []
        for r in range(g.shape[0]):
            chips = g.row(r)
            y = chips[0].row_off
            _, map_ok = self.map.read(y, x0, t, x1 - x0)
            _, aerial_ok = self.aerial.read(y, x0, t, x1 - x0)
            ok = map_ok & aerial_ok
            keep += [c for c in chips if ok[:, c.col_off - x0 : c.col_off - x0 + t].all()]
        return keep

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        c = self.chips[index]
        m, _ = self.map.read(c.row_off, c.col_off, c.size, c.size)
        a, _ = self.aerial.read(c.row_off, c.col_off, c.size, c.size)
        return np.ascontiguousarray(m.transpose(1, 2, 0)), np.ascontiguousarray(a.transpose(1, 2, 0))

    def size(self, index: int) -> tuple[int, int]:
        c = self.chips[index]
        return c.size, c.size

    @property
    def crs(self):
        return self.map.dataset.crs

    def transform(self, index: int):
        """Affine transform of tile ``index`` (its pixel grid on the map's CRS)."""
        c = self.chips[index]
        return self.map.dataset.window_transform(((c.row_off, c.row_off + c.size),
                                                  (c.col_off, c.col_off + c.size)))

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> RasterPairs:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"RasterPairs({self.map.path!r}, {self.aerial.path!r}: {len(self)} tiles of "
                f"{self.grid.tile_size} px at {self.ground_resolution or float('nan'):.3g} m/px)")
