"""End-to-end render throughput of a 4096 × 4096 GeoTIFF against the model alone.

In one process, in interleaved rounds (median printed):

- *model only*: ``run_batch`` on the tiles of the render's grid, already in memory,
  inside :func:`geo_pix2pix.heap.kept_heap` as render runs it (the ceiling for the
  end-to-end figure);
- *render*: :func:`geo_pix2pix.render` from GeoTIFF to GeoTIFF, at overlap 0 (the same
  tiles as the model-only run, with and without overviews) and at the default overlap (64), with the share of the
  wall time spent outside the model (reading, cutting, blending, converting, writing,
  overviews) measured by timing every model call inside the render;
- *reference tile loop*: what a script around the pix2pix reference code does: for
  each 256 × 256 window, read it with rasterio, run the eager reference network at
  batch 1 (``model_throughput.ReferenceUNet``), write the window.

Then peak resident memory of one render at the default overlap, in a fresh process.

The input is the Helsinki sample map mirrored out to 4096 × 4096 on the sample's grid
(EPSG:3857, 2.12 m/px on the ground: the default model's resolution, so nothing is
resampled), deflate-compressed.

    python benchmarks/render_throughput.py [--size 4096] [--rounds 2] [--precision fp32|bf16|int8]
        [--compress deflate|zstd|none|...] [--weights PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.windows import Window

import geo_pix2pix
from geo_pix2pix.grid import core
from geo_pix2pix.grid.tiling import TileGrid
from geo_pix2pix.heap import kept_heap
from geo_pix2pix.io.write import RENDER_COMPRESSION
from geo_pix2pix.model.load import PRECISIONS, run_batch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_throughput import SAMPLE, ReferenceUNet  # noqa: E402


def make_input(path: Path, size: int) -> None:
    with rasterio.open(SAMPLE) as ds:
        rgb, transform, crs = ds.read(), ds.transform, ds.crs
    reps = (size // rgb.shape[1] + 2, size // rgb.shape[2] + 2)
    rows = np.concatenate([rgb, rgb[:, ::-1]] * (reps[0] // 2 + 1), axis=1)
    big = np.concatenate([rows, rows[:, :, ::-1]] * (reps[1] // 2 + 1), axis=2)[:, :size, :size]
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 3, "dtype": "uint8",
               "crs": crs, "transform": transform,  # the sample's grid, extended: its ground resolution
               "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate"}
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(np.ascontiguousarray(big))


class ModelClock:
    """Wraps the tile core's run_batch to add up the time spent in the model."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __enter__(self):
        self.inner = core.run_batch

        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return self.inner(*a, **k)
            finally:
                self.seconds += time.perf_counter() - t0

        core.run_batch = timed
        return self

    def __exit__(self, *exc):
        core.run_batch = self.inner


def reference_loop(src: Path, dst: Path, ref: torch.nn.Module) -> None:
    with rasterio.open(src) as ds:
        profile = ds.profile
        with rasterio.open(dst, "w", **profile) as out:
            for r in range(0, ds.height, 256):
                for c in range(0, ds.width, 256):
                    win = Window(c, r, 256, 256)
                    x = torch.from_numpy(ds.read(window=win)).float()[None] / 127.5 - 1
                    y = ref(x)[0].clamp(-1, 1).add(1).mul(127.5).round().byte().numpy()
                    out.write(y, window=win)


def peak_memory(src: Path, dst: Path, weights: str | None, precision: str) -> float:
    code = (
        "import resource, sys, geo_pix2pix\n"
        f"m = geo_pix2pix.load_model({weights!r}, precision={precision!r})\n"
        f"geo_pix2pix.render({str(src)!r}, {str(dst)!r}, model=m, overwrite=True)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--precision", choices=PRECISIONS, default="fp32")
    ap.add_argument("--weights", default=None, help="checkpoint [default: the shipped model]")
    ap.add_argument("--compress", default=None, help="output compression, as render's --compress [default: render's]")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    model = geo_pix2pix.load_model(args.weights, precision=args.precision)
    ref = ReferenceUNet(model.generator).eval()
    mp = args.size**2 / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "map.tif", Path(tmp) / "out.tif"
        make_input(src, args.size)
        with rasterio.open(src) as ds:
            rgb = ds.read()
        grid = TileGrid(args.size, args.size, 256, 0)
        tiles = np.stack([rgb[:, r : r + 256, c : c + 256] for r in grid.row_starts for c in grid.col_starts])
        times: dict[str, list[float]] = {}
        runs = {"render, overlap 0": (0, True), "render, overlap 0, no overviews": (0, False),
                "render, overlap 64": (64, True)}
        model_share: dict[str, list[float]] = {label: [] for label in runs}

        def clock(label, fn):
            t0 = time.perf_counter()
            fn()
            times.setdefault(label, []).append(time.perf_counter() - t0)

        for _ in range(args.rounds):
            with kept_heap():  # as render runs the model
                clock("model only (overlap-0 tiles)", lambda: [run_batch(model, tiles[i : i + 64])
                                                               for i in range(0, len(tiles), 64)])
            for label, (overlap, overviews) in runs.items():
                with ModelClock() as mc, kept_heap():  # as `geo-pix2pix render` runs it
                    clock(label, lambda o=overlap, v=overviews: geo_pix2pix.render(
                        src, dst, model=model, overlap=o, overviews=v, compress=args.compress, overwrite=True))
                model_share[label].append(mc.seconds)
            clock("reference tile loop", lambda: reference_loop(src, Path(tmp) / "ref.tif", ref))
        peak = peak_memory(src, dst, args.weights, args.precision)

    base = statistics.median(times["model only (overlap-0 tiles)"])
    ref_t = statistics.median(times["reference tile loop"])
    print(f"{args.size}² GeoTIFF ({mp:.1f} MP, {len(tiles)} tiles at overlap 0), default model, "
          f"{args.precision}, compress {args.compress or RENDER_COMPRESSION}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; "
          f"median of {args.rounds} rounds")
    record = {"size": args.size, "precision": args.precision, "peak_rss_mb": peak}
    for label, ts in times.items():
        t = statistics.median(ts)
        extra = ""
        if label in model_share:
            outside = 1 - statistics.median(m / w for m, w in zip(model_share[label], ts, strict=True))
            extra = f"  outside the model: {100 * outside:4.1f} %"
            record[label + " outside_model"] = outside
        print(f"  {label:32s} {t:7.2f} s  {mp / t:6.2f} MP/s  {base / t:5.2f} of model only  "
              f"×{ref_t / t:4.2f} reference loop{extra}")
        record[label] = {"seconds": t, "mp_per_s": mp / t}
    print(f"  peak resident memory of one render (overlap 64, fresh process): {peak:.0f} MB")
    if args.json:
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
