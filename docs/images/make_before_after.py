"""Make docs/images/helsinki_before_after.jpg, the README's picture: the sample map (left)
and the default model's rendering of it (right), side by side.

    python docs/images/make_before_after.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image

import geo_pix2pix

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_tiles" / "helsinki_map.tif"
OUT = Path(__file__).resolve().parent / "helsinki_before_after.jpg"
GAP = 8  # white pixels between the two halves


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        aerial_path = Path(tmp) / "aerial.tif"
        geo_pix2pix.render(SAMPLE, aerial_path)
        with rasterio.open(SAMPLE) as ds:
            map_rgb = ds.read((1, 2, 3))
        with rasterio.open(aerial_path) as ds:
            aerial = ds.read((1, 2, 3))
    gap = np.full((3, map_rgb.shape[1], GAP), 255, np.uint8)
    both = np.concatenate([map_rgb, gap, aerial], axis=2).transpose(1, 2, 0)
    Image.fromarray(both).save(OUT, quality=85)
    print(f"wrote {OUT} ({both.shape[1]} × {both.shape[0]})")


if __name__ == "__main__":
    main()
