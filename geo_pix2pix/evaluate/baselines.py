"""Baselines that a map → aerial model has to beat, fitted on the training split.

- :class:`MeanColour`: every output is one flat image of the mean aerial colour. Its
  L1 is what "knowing nothing about the map" scores; its sharpness is 0.
- :class:`PaletteLookup`: each map colour, quantised to ``bits`` per channel, is
  replaced by the mean aerial colour of the training pixels whose map had that
  colour (water → mean water colour, park → mean park colour…). Colours never seen in
  training take the value of the nearest seen colour. It knows what every map colour
  stands for but nothing about texture or context, so a model that does not beat it
  has learned no more than a lookup table.

Both are fitted incrementally (:meth:`update` per pair, then :meth:`finish`) so a
training split never has to be held in memory at once. Arrays are uint8 (H, W, 3) or
(N, H, W, 3).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..errors import DatasetError

__all__ = ["MeanColour", "PaletteLookup"]


def _rgb_pixels(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.shape[-1] != 3:
        raise ValueError(f"expected uint8 RGB images (..., 3), got {img.dtype} {img.shape}")
    return img.reshape(-1, 3)


class MeanColour:
    """Predicts the mean aerial colour of the training pixels everywhere."""

    name = "mean colour"

    def __init__(self) -> None:
        self._sum = np.zeros(3, np.float64)
        self._count = 0
        self.colour: np.ndarray | None = None  # (3,) uint8 once fitted

    def update(self, map_: np.ndarray, aerial: np.ndarray) -> None:
        px = _rgb_pixels(aerial)
        self._sum += px.sum(axis=0, dtype=np.float64)
        self._count += px.shape[0]

    def finish(self) -> MeanColour:
        if self._count == 0:
            raise DatasetError("the mean-colour baseline saw no training pixels: the training split is empty")
        self.colour = np.rint(self._sum / self._count).astype(np.uint8)
        return self

    def fit(self, pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> MeanColour:
        for m, a in pairs:
            self.update(m, a)
        return self.finish()

    def predict(self, map_: np.ndarray) -> np.ndarray:
        if self.colour is None:
            raise RuntimeError("MeanColour.predict before fit/finish")
        return np.broadcast_to(self.colour, np.shape(map_)).copy()


class PaletteLookup:
    """Quantised map colour → mean aerial colour of the training pixels of that colour.

    ``bits`` per channel (5: 32 levels, 32 768 cells) is coarse enough to merge the
    JPEG noise and anti-aliasing shades of one map colour and fine enough to keep the
    map's distinct colours apart.
    """

    name = "palette lookup"

    def __init__(self, bits: int = 5) -> None:
        if not 1 <= bits <= 8:
            raise ValueError(f"bits={bits} must be in 1..8")
        self.bits = bits
        cells = 1 << (3 * bits)
        self._sum = np.zeros((cells, 3), np.float64)
        self._count = np.zeros(cells, np.int64)
        self.table: np.ndarray | None = None  # (cells, 3) uint8 once fitted
        self.seen_cells = 0

    def _cell(self, px: np.ndarray) -> np.ndarray:
        q = (px >> (8 - self.bits)).astype(np.int64)
        return (q[:, 0] << (2 * self.bits)) | (q[:, 1] << self.bits) | q[:, 2]

    def update(self, map_: np.ndarray, aerial: np.ndarray) -> None:
        m, a = _rgb_pixels(map_), _rgb_pixels(aerial)
        if m.shape != a.shape:
            raise ValueError(f"map {np.shape(map_)} and aerial {np.shape(aerial)} differ in shape")
        cell = self._cell(m)
        cells = self._count.shape[0]
        self._count += np.bincount(cell, minlength=cells)
        for c in range(3):
            self._sum[:, c] += np.bincount(cell, weights=a[:, c], minlength=cells)

    def finish(self) -> PaletteLookup:
        from scipy.spatial import cKDTree

        seen = np.flatnonzero(self._count)
        if seen.size == 0:
            raise DatasetError("the palette baseline saw no training pixels: the training split is empty")
        means = self._sum[seen] / self._count[seen, None]
        # Unseen cells take the colour of the nearest seen cell (Euclidean, in levels).
        levels = 1 << self.bits
        idx = np.arange(self._count.shape[0])
        coords = np.stack([idx >> (2 * self.bits), (idx >> self.bits) & (levels - 1), idx & (levels - 1)], 1)
        _, nearest = cKDTree(coords[seen]).query(coords, k=1)
        self.table = np.rint(means[nearest]).clip(0, 255).astype(np.uint8)
        self.seen_cells = int(seen.size)
        return self

    def fit(self, pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> PaletteLookup:
        for m, a in pairs:
            self.update(m, a)
        return self.finish()

    def predict(self, map_: np.ndarray) -> np.ndarray:
        if self.table is None:
            raise RuntimeError("PaletteLookup.predict before fit/finish")
        return self.table[self._cell(_rgb_pixels(map_))].reshape(np.shape(map_))
