"""How far from a tile's border does the generator's output stop depending on it?

For map tiles from a folder of pix2pix-style pairs (or any images), a 512×512 map
is rendered once as a reference tile centred on a probe column, then with the tile
shifted so the probe column lies d pixels from the tile's left border. The mean
absolute difference (0–255 grey levels) at the probe column, as a function of d, says
how much overlap hides tile borders. Usage:

    python benchmarks/border_effect.py DATA_DIR [--weights model.pt] [--n 16]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import geo_pix2pix
from geo_pix2pix.model.load import run_batch


def maps_from(folder: Path, n: int, side_by_side: bool) -> list[np.ndarray]:
    files = sorted(folder.glob("*.jpg"))[::7][:n] or sorted(folder.glob("*.png"))[:n]
    out = []
    for f in files:
        im = Image.open(f).convert("RGB")
        if side_by_side:
            w, h = im.size
            im = im.crop((w // 2, 0, w, h))  # the map half of a pix2pix maps pair
        out.append(np.asarray(im.resize((512, 512), Image.BICUBIC)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--weights", default=None)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--plain", action="store_true", help="images are maps, not side-by-side pairs")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    model = geo_pix2pix.load_model(args.weights, "cpu")
    distances = [0, 4, 8, 16, 24, 32, 48, 64, 96, 128]
    diffs = {d: [] for d in distances}
    probe = 256  # column of the 512 map
    for m in maps_from(args.data, args.n, not args.plain):
        chw = m.transpose(2, 0, 1)
        rows = slice(128, 384)
        ref = run_batch(model, chw[None, :, rows, probe - 128 : probe + 128].copy())[0][:, :, 128]
        tiles = np.stack([chw[:, rows, probe - d : probe - d + 256] for d in distances])
        outs = run_batch(model, tiles)
        for d, o in zip(distances, outs, strict=True):
            diffs[d].append(np.abs(o[:, :, d] - ref).mean() * 127.5)
    print("distance from tile border (px) | mean |difference| at that column (grey levels, 0-255)")
    for d in distances:
        print(f"{d:5d} | {np.mean(diffs[d]):6.2f}")


if __name__ == "__main__":
    main()
