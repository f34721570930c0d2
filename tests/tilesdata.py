"""Synthetic map tiles for the tiles tests: made in code, the same pixels at any zoom offset.

``map_pixels(z, x, y)`` paints a tile from a function of global pixel coordinates, so
neighbouring tiles continue each other (roads cross tile borders) as a real map does.
"""

from __future__ import annotations

import io
from pathlib import Path

import mercantile
import numpy as np
import torch
from PIL import Image

#: A z16 tile in central Helsinki; the test areas are built around it.
HELSINKI = mercantile.tile(24.94, 60.17, 16)


def map_pixels(t: mercantile.Tile, variant: int = 0, smooth: bool = False) -> np.ndarray:
    """(3, 256, 256) uint8 map-like pixels of tile ``t``: colour fields, blocks and roads
    (``smooth``: colour fields only, no edges)."""
    gx = (t.x * 256 + np.arange(256))[None, :].astype(np.float64)
    gy = (t.y * 256 + np.arange(256))[:, None].astype(np.float64)
    r = 150 + 60 * np.sin(gx / 23 + variant) + 0 * gy
    g = 140 + 50 * np.cos(gy / 31 - variant) + 0 * gx
    b = 120 + 60 * (((gx // 40) + (gy // 40)) % 2)
    if smooth:
        b = 120 + 60 * np.sin(gx / 41) * np.cos(gy / 37)
    rgb = np.stack([r, g, b])
    if smooth:
        return rgb.clip(0, 255).astype(np.uint8)
    road = ((gx % 97) < 4) | ((gy % 89) < 4)
    rgb[:, road] = np.array([250, 250, 245])[:, None]
    return rgb.clip(0, 255).astype(np.uint8)


def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb.transpose(1, 2, 0))).save(buf, "PNG")
    return buf.getvalue()


def block(z: int, x0: int, y0: int, nx: int, ny: int) -> list[mercantile.Tile]:
    return [mercantile.Tile(x, y, z) for y in range(y0, y0 + ny) for x in range(x0, x0 + nx)]


def write_xyz(root: Path, tiles, variant: int = 0, smooth: bool = False) -> Path:
    for t in tiles:
        p = root / str(t.z) / str(t.x) / f"{t.y}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(png_bytes(map_pixels(t, variant, smooth)))
    return root


def read_tree(root: Path, suffix: str = "png") -> dict[tuple[int, int, int], bytes]:
    """Every ``{z}/{x}/{y}.suffix`` under ``root`` (the work folder ignored)."""
    out = {}
    for p in root.glob(f"*/*/*.{suffix}"):
        z, x = int(p.parent.parent.name), int(p.parent.name)
        out[(z, x, int(p.stem))] = p.read_bytes()
    return out


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGBA"))


def bbox_of(tiles) -> str:
    """W,S,E,N of the union of ``tiles``, shrunk by a hair so no neighbour is pulled in."""
    bs = [mercantile.bounds(t) for t in tiles]
    e = 1e-9
    return (f"{min(b.west for b in bs) + e},{min(b.south for b in bs) + e},"
            f"{max(b.east for b in bs) - e},{max(b.north for b in bs) - e}")


class Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class AtResolution(torch.nn.Module):
    """A module with a ground resolution (m/px), as Pix2PixModel has."""

    def __init__(self, inner: torch.nn.Module, ground_resolution: float) -> None:
        super().__init__()
        self.inner, self.ground_resolution, self.identity = inner, ground_resolution, ""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def source_with_broken_tile(tmp: Path):
    """A 3×3 XYZ source at zoom 16 whose centre tile is not a readable PNG.

    Returns (tiles, source folder, the broken tile).
    """
    tiles = block(16, HELSINKI.x, HELSINKI.y, 3, 3)
    src = write_xyz(tmp / "src", tiles)
    bad = tiles[4]
    (src / f"16/{bad.x}/{bad.y}.png").write_bytes(b"\x89PNG broken")
    return tiles, src, bad
