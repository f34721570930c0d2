"""Peak memory of `render` for a 2048² and an 8192² input, with a cheap model.

Each size runs in a fresh subprocess; its peak resident memory (ru_maxrss) is read
when it exits. The claim checked: memory does not grow with the raster (the two
peaks differ by less than 15 %). Usage:

    python benchmarks/render_memory.py [--sizes 2048 8192] [--workdir /tmp/gp2p-mem]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys, time, resource
import torch
import geo_pix2pix

class Cheap(torch.nn.Module):
    # A 1×1 convolution: costs almost nothing, so the figure is the pipeline's memory.
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)
    def forward(self, x):
        return torch.tanh(self.conv(x))

src, dst = sys.argv[1], sys.argv[2]
t = time.perf_counter()
r = geo_pix2pix.render(src, dst, model=Cheap().eval(), overwrite=True)
print(json.dumps({"seconds": time.perf_counter() - t, "tiles": r.tiles_total,
                  "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_input(path: Path, size: int) -> None:
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    if path.exists():
        return
    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8",
                   crs="EPSG:3857", transform=from_origin(2_777_000, 8_438_000, 4.2, 4.2),
                   tiled=True, blockxsize=256, blockysize=256, compress="deflate")
    rng = np.random.default_rng(0)
    with rasterio.open(path, "w", **profile) as ds:
        for y in range(0, size, 512):
            h = min(512, size - y)
            blocks = rng.integers(0, 256, (3, h // 16 + 1, size // 16 + 1), dtype=np.uint8)
            strip = np.kron(blocks, np.ones((1, 16, 16), np.uint8))[:, :h, :size]
            ds.write(strip, window=Window(0, y, size, h))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/gp2p-mem"))
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = {}
    for size in args.sizes:
        src = args.workdir / f"in_{size}.tif"
        make_input(src, size)
        out = subprocess.run([sys.executable, "-c", CHILD, str(src), str(args.workdir / f"out_{size}.tif")],
                             check=True, capture_output=True, text=True)
        results[size] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[size]
        print(f"{size}×{size}: peak RSS {r['maxrss_mb']:.0f} MB, {r['tiles']} tiles, "
              f"{r['seconds']:.1f} s, {size * size / 1e6 / r['seconds']:.2f} MP/s", flush=True)
    if len(args.sizes) >= 2:
        lo, hi = results[args.sizes[0]]["maxrss_mb"], results[args.sizes[-1]]["maxrss_mb"]
        growth = hi / lo - 1
        print(f"peak memory growth from {args.sizes[0]}² to {args.sizes[-1]}²: {100 * growth:+.1f} % "
              f"({'within' if abs(growth) < 0.15 else 'OVER'} the 15 % bound)")


if __name__ == "__main__":
    main()
