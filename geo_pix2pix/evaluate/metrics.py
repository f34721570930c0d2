"""Image quality figures for generated aerial imagery.

All functions take images as float arrays in [0, 1], shaped (H, W, 3) or (N, H, W, 3),
or torch tensors (N, 3, H, W) in [-1, 1] (the networks' scale), which are converted.

- :func:`l1`: mean absolute error on the 0–1 scale.
- :func:`psnr` and :func:`ssim`: scikit-image's implementations (SSIM on the
  colour image, ``channel_axis=-1``, ``data_range=1``).
- :func:`histogram_distance`: half the summed absolute difference of normalised
  64-bin histograms, per channel, averaged over the channels: 0 for identical colour
  distributions, 1 for disjoint ones. Judges colour realism that L1 misses.
- :func:`sharpness`: mean absolute difference between horizontally and vertically
  neighbouring pixels of the grey image; the ratio of outputs to real aerials is 1.0
  when they are as sharp as real imagery, and near 0 for blurry output.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "as_unit",
    "colour_histogram",
    "grey",
    "histogram_distance",
    "histogram_distance_from_counts",
    "l1",
    "psnr",
    "sharpness",
    "ssim",
]


def as_unit(x) -> np.ndarray:
    """Any supported image (batch) → float64 array in [0, 1], channels last."""
    try:
        import torch

        if isinstance(x, torch.Tensor):
            x = ((x.detach().float().cpu().clamp(-1, 1) + 1) / 2).numpy()
            return np.moveaxis(x, -3, -1).astype(np.float64)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return x.astype(np.float64) / 255.0
    return x.astype(np.float64)


def grey(x: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of a channels-last RGB array."""
    return x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114


def l1(a, b) -> float:
    return float(np.abs(as_unit(a) - as_unit(b)).mean())


def psnr(a, b) -> float:
    mse = float(((as_unit(a) - as_unit(b)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def ssim(a, b) -> float:
    """Mean SSIM over images (scikit-image, Gaussian-free 7×7 window, colour)."""
    from skimage.metrics import structural_similarity

    a, b = as_unit(a), as_unit(b)
    if a.ndim == 3:
        a, b = a[None], b[None]
    return float(np.mean([structural_similarity(x, y, channel_axis=-1, data_range=1.0)
                          for x, y in zip(a, b, strict=True)]))


def colour_histogram(x, bins: int = 64) -> np.ndarray:
    """Per-channel pixel counts, (3, bins) int64, over [0, 1] in equal bins.

    Counts of several batches add up to the counts of the whole set, so a large set
    can be scored batch by batch (:func:`histogram_distance_from_counts`).
    """
    x = as_unit(x)
    return np.stack([np.histogram(x[..., c], bins=bins, range=(0.0, 1.0))[0] for c in range(3)])


def histogram_distance_from_counts(ha: np.ndarray, hb: np.ndarray) -> float:
    """:func:`histogram_distance` of two sets given their :func:`colour_histogram` counts."""
    ha = ha / np.maximum(ha.sum(axis=-1, keepdims=True), 1)
    hb = hb / np.maximum(hb.sum(axis=-1, keepdims=True), 1)
    return float(np.mean(0.5 * np.abs(ha - hb).sum(axis=-1)))


def histogram_distance(a, b, bins: int = 64) -> float:
    """Colour-histogram distance between two sets of images (see module docstring)."""
    return histogram_distance_from_counts(colour_histogram(a, bins), colour_histogram(b, bins))


def sharpness(x) -> float:
    """Mean absolute neighbour difference of the grey image (both directions)."""
    g = grey(as_unit(x))
    dx = np.abs(np.diff(g, axis=-1)).mean()
    dy = np.abs(np.diff(g, axis=-2)).mean()
    return float((dx + dy) / 2)
