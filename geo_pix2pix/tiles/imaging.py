"""Tile pixels: decode and encode PNG/JPEG/WebP, upsample deeper zooms, average overviews.

A tile's pixels travel as ``(rgb, valid)``: uint8 (3, 256, 256) and bool (256, 256).
Invalid pixels (no source data) are transparent in PNG and WebP and black in JPEG.
Encoding is deterministic (same pixels, same bytes), which is what makes a resumed run
byte-identical to an uninterrupted one.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from ..errors import TileSourceError
from .tilemath import TILE_SIZE

__all__ = ["FORMATS", "decode", "downsample", "encode", "upsample"]

#: Output formats: name → (PIL format, file extension, MIME type).
FORMATS = {
    "png": ("PNG", "png", "image/png"),
    "jpeg": ("JPEG", "jpg", "image/jpeg"),
    "webp": ("WEBP", "webp", "image/webp"),
}

Pixels = tuple[np.ndarray, np.ndarray]


def decode(data: bytes, what: str = "tile") -> Pixels:
    """Decode an encoded tile into (rgb, valid); alpha 0 and palette transparency are invalid."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.size != (TILE_SIZE, TILE_SIZE):
                raise TileSourceError(f"{what} is {im.size[0]}×{im.size[1]} px: only {TILE_SIZE}-px "
                                      "tiles are supported (not 512-px 'retina' tiles)")
            rgba = np.asarray(im.convert("RGBA"))
    except TileSourceError:
        raise
    except Exception as exc:  # PIL raises many kinds for broken data
        raise TileSourceError(f"{what} is not a readable image ({type(exc).__name__}: {exc})") from None
    rgb = np.ascontiguousarray(rgba[..., :3].transpose(2, 0, 1))
    return rgb, rgba[..., 3] > 0


def encode(rgb: np.ndarray, valid: np.ndarray, fmt: str, quality: int = 85) -> bytes | None:
    """Encode a tile; None when no pixel is valid (nothing to write)."""
    if not valid.any():
        return None
    pil_format = FORMATS[fmt][0]
    hwc = rgb.transpose(1, 2, 0)
    full = bool(valid.all())
    if fmt == "jpeg" or full:
        if not full:
            hwc = np.where(valid[..., None], hwc, 0).astype(np.uint8)
        im = Image.fromarray(np.ascontiguousarray(hwc), "RGB")
    else:
        alpha = valid.astype(np.uint8) * 255
        hwc = np.where(valid[..., None], hwc, 0).astype(np.uint8)
        im = Image.fromarray(np.dstack([hwc, alpha]), "RGBA")
    buf = io.BytesIO()
    if pil_format == "PNG":
        im.save(buf, "PNG", compress_level=6)
    elif pil_format == "JPEG":
        im.save(buf, "JPEG", quality=quality, optimize=False)
    else:
        im.save(buf, "WEBP", quality=quality, method=4, exact=False)
    return buf.getvalue()


def upsample(rgb: np.ndarray, valid: np.ndarray, box: tuple[float, float, float, float]) -> Pixels:
    """A 256-px tile from ``box`` (left, top, right, bottom, pixels) of a larger image.

    Bicubic, reading pixels outside the box where the image has them, so that tiles cut
    side by side from one rendering meet without a seam; the mask is nearest-neighbour.
    """
    size = (TILE_SIZE, TILE_SIZE)
    im = Image.fromarray(np.ascontiguousarray(rgb.transpose(1, 2, 0)), "RGB")
    out = np.asarray(im.resize(size, Image.Resampling.BICUBIC, box=box)).transpose(2, 0, 1)
    mask = Image.fromarray(valid.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST, box=box)
    return np.ascontiguousarray(out), np.asarray(mask) > 0


def downsample(children: list[Pixels | None]) -> Pixels:
    """The overview tile of four children (TL, TR, BL, BR; None where missing).

    Each output pixel averages the valid pixels of its 2×2 block (gdal2tiles'
    ``average``); it is valid when any of them is.
    """
    n = TILE_SIZE
    rgb = np.zeros((3, 2 * n, 2 * n), np.float64)
    valid = np.zeros((2 * n, 2 * n), bool)
    for i, child in enumerate(children):
        if child is None:
            continue
        r, c = divmod(i, 2)
        rgb[:, r * n:(r + 1) * n, c * n:(c + 1) * n] = child[0]
        valid[r * n:(r + 1) * n, c * n:(c + 1) * n] = child[1]
    w = valid.astype(np.float64)
    wsum = w.reshape(n, 2, n, 2).sum(axis=(1, 3))
    acc = (rgb * w).reshape(3, n, 2, n, 2).sum(axis=(2, 4))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(wsum > 0, acc / np.maximum(wsum, 1), 0)
    return np.rint(mean).clip(0, 255).astype(np.uint8), wsum > 0
