"""Map classes read from a map's colours, and a validation split that holds out whole
neighbourhoods.

The pix2pix *maps* tiles come shuffled, without coordinates, and no two of them share an
edge (their border rows and columns match no other tile's), so no split by position can
give "another region". :func:`region_split` approximates one: it clusters the tiles by
what their maps show (land cover fractions and the orientation of the street grid, which
differs from one neighbourhood to the next: Manhattan's grid runs 29° off north) and
holds out whole clusters, the most built-up first,
because the source's own held-out ground is city. A model scored on it meets street
grids and block shapes it never trained on; a hash split (:func:`data.split_names`)
scores it on near-copies of its training tiles. ``docs/model-card.md`` compares the two.
"""

from __future__ import annotations

import numpy as np

from .data import PairSource, split_names

__all__ = ["CLASSES", "SPLITS_BY", "map_classes", "region_features", "region_split", "split_by"]

#: Class indices of :func:`map_classes`, as the structure score names them.
CLASSES = ("other", "road", "water", "green")

# The training source's map palette (Google Maps, 2016): colour and the largest channel
# difference still taken as that colour (JPEG and resampling blur the edges).
_PALETTE = {
    "road": [((250, 250, 250), 8), ((248, 152, 40), 40), ((248, 216, 120), 30)],
    "water": [((184, 216, 248), 20), ((168, 200, 248), 20)],
    "green": [((200, 216, 168), 14), ((200, 232, 168), 14)],
}
_BUILDING = ((232, 232, 232), 6)
_BACKGROUND = ((232, 232, 216), 6)
_FEATURE_SIZE = 128  # maps are classified at this size: enough for fractions and grid angles


def _near(img: np.ndarray, colour: tuple[int, int, int], tol: int) -> np.ndarray:
    return np.abs(img.astype(np.int16) - np.array(colour, np.int16)).max(-1) <= tol


def map_classes(map_rgb: np.ndarray) -> np.ndarray:
    """uint8 (H, W) class index (:data:`CLASSES`) of each pixel of a map (H, W, 3)."""
    out = np.zeros(map_rgb.shape[:2], np.uint8)
    for k, name in enumerate(CLASSES[1:], start=1):
        for colour, tol in _PALETTE[name]:
            out[(out == 0) & _near(map_rgb, colour, tol)] = k
    return out


def _shrink(img: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    # Nearest neighbour keeps the palette's exact colours, which a filter would blend.
    return np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.NEAREST))


def region_features(map_rgb: np.ndarray) -> np.ndarray:
    """Six numbers describing a map tile: water, green, building and road fractions, and
    the street grid's orientation as (cos 2θ, sin 2θ) weighted by how regular it is."""
    m = _shrink(map_rgb, _FEATURE_SIZE)
    cls = map_classes(m)
    road = (cls == 1).astype(np.float32)
    building = _near(m, *_BUILDING) & ~_near(m, *_BACKGROUND)
    # Structure tensor of the (box-blurred) road mask: its dominant direction is the grid's,
    # with θ doubled so that opposite edge normals add up instead of cancelling. A grid of
    # square blocks has none (its two directions cancel); city blocks are mostly oblong.
    k = 5
    padded = np.pad(road, k // 2, mode="edge")
    c = np.cumsum(np.cumsum(np.pad(padded, ((1, 0), (1, 0))), 0), 1)
    blurred = (c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]) / (k * k)
    gy, gx = np.gradient(blurred)
    jxx, jyy, jxy = float((gx * gx).sum()), float((gy * gy).sum()), float((gx * gy).sum())
    trace = jxx + jyy + 1e-9
    return np.array([(cls == 2).mean(), (cls == 3).mean(), building.mean(), road.mean(),
                     (jxx - jyy) / trace, 2 * jxy / trace], np.float64)


def _kmeans(x: np.ndarray, k: int, seed: int, iterations: int = 100) -> np.ndarray:
    """Labels of Lloyd's k-means with k-means++ seeding (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        d2 = np.min([((x - c) ** 2).sum(1) for c in centres], axis=0)
        centres.append(x[rng.choice(len(x), p=d2 / d2.sum())] if d2.sum() > 0 else x[rng.integers(len(x))])
    centres = np.stack(centres)
    labels = np.full(len(x), -1)
    for _ in range(iterations):
        new = ((x[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
        if np.array_equal(new, labels):
            break
        labels = new
        centres = np.stack([x[labels == j].mean(0) if (labels == j).any() else centres[j] for j in range(k)])
    return labels


def region_split(source: PairSource, val_fraction: float, *, clusters: int = 16,
                 seed: int = 0) -> tuple[list[int], list[int]]:
    """(train, val) indices holding out whole clusters of similar neighbourhoods.

    Tiles are clustered on :func:`region_features` (standardised); clusters are held out
    from the most built-up down until at least ``val_fraction`` of the tiles are.
    """
    n = len(source)
    if val_fraction <= 0 or n == 0:
        return list(range(n)), []
    feats = np.stack([region_features(source.read(i)[0]) for i in range(n)])
    std = feats.std(0)
    x = (feats - feats.mean(0)) / np.where(std > 0, std, 1.0)
    k = max(1, min(clusters, n // 4))
    labels = _kmeans(x, k, seed)
    built_up = [feats[labels == j, 2:4].sum(1).mean() if (labels == j).any() else -1.0 for j in range(k)]
    held: set[int] = set()
    for j in np.argsort(built_up, kind="stable")[::-1]:
        if len(held) >= val_fraction * n:
            break
        held |= set(np.flatnonzero(labels == j).tolist())
    if len(held) == n:  # one cluster holds everything: nothing would be left to train on
        return split_names(source.names, val_fraction)
    return [i for i in range(n) if i not in held], sorted(held)


#: How a run's tiles are split into training and validation sets.
SPLITS_BY = ("region", "hash")


def split_by(source: PairSource, by: str, val_fraction: float) -> tuple[list[int], list[int]]:
    """(train, val) indices of ``source`` split ``by`` "region" or "hash" (the file name)."""
    if by == "region":
        return region_split(source, val_fraction)
    if by == "hash":
        return split_names(source.names, val_fraction)
    raise ValueError(f"split by {by!r}: use one of {', '.join(SPLITS_BY)}")
