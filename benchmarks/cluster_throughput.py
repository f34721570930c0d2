"""Throughput per Dask worker: `tiles` and `render` with the default model on a LocalCluster.

The input is the sample map of Helsinki mirrored ``--repeat-map`` times across and down
(3: a 2349 × 1428 px raster at the model's 2.12 m/px). For each worker count, a
LocalCluster of single-threaded worker processes (Dask sets OMP_NUM_THREADS=1 in them:
one core each) runs, after a warm-up that loads the model on every worker:

- ``tiles``: that raster as the source, the model's zoom (15 in Helsinki), every tile
  made again (``force``), metatiles of 2×2;
- ``render``: that raster to a GeoTIFF.

It prints JSON lines: tiles (or 256-px model tiles) per second, in all and per worker,
and the same run in one process with one torch thread for comparison. Usage:

    python benchmarks/cluster_throughput.py [--workers 1 2] [--repeat 2] [--repeat-map 3] [--workdir /tmp/gp2p-cluster]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import rasterio
import torch

import geo_pix2pix
from geo_pix2pix.tiles import make_tiles

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_tiles" / "helsinki_map.tif"
MAP = SAMPLE  # replaced by the mirrored map in main()


def mirrored_map(path: Path, n: int) -> Path:
    """The sample map mirrored n × n times (continuous across the seams), same origin and pixel size."""
    with rasterio.open(SAMPLE) as ds:
        data, profile = ds.read(), ds.profile
    row = np.concatenate([data if i % 2 == 0 else data[:, :, ::-1] for i in range(n)], axis=2)
    big = np.concatenate([row if j % 2 == 0 else row[:, ::-1] for j in range(n)], axis=1)
    profile.update(width=big.shape[2], height=big.shape[1], tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(path, "w", **profile) as out:
        out.write(big)
    return path


def run_tiles(dest: Path, client) -> tuple[int, float]:
    t = time.perf_counter()
    r = make_tiles(MAP, dest, zooms="15", meta_size=2, force=True, client=client)
    return r.rendered, time.perf_counter() - t


def run_render(dest: Path, client) -> tuple[int, float]:
    t = time.perf_counter()
    r = geo_pix2pix.render(MAP, dest, overwrite=True, client=client, device="cpu" if client else None)
    return r.tiles_rendered, time.perf_counter() - t


def best(fn, dest: Path, client, repeat: int) -> tuple[int, float]:
    runs = [fn(dest, client) for _ in range(repeat)]
    return min(runs, key=lambda r: r[1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--repeat-map", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/gp2p-cluster"))
    args = ap.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    torch.set_num_threads(1)
    global MAP
    MAP = mirrored_map(args.workdir / "map.tif", args.repeat_map)

    def report(kind: str, workers: int | str, n: int, seconds: float) -> None:
        per = n / seconds / (workers if isinstance(workers, int) else 1)
        print(json.dumps({"job": kind, "workers": workers, "tiles": n, "seconds": round(seconds, 2),
                          "tiles_per_s": round(n / seconds, 3), "tiles_per_s_per_worker": round(per, 3)}),
              flush=True)

    for kind, fn in (("tiles", run_tiles), ("render", run_render)):
        fn(args.workdir / f"{kind}-warm.out.tif" if kind == "render" else args.workdir / "warm", None)
        n, s = best(fn, args.workdir / (f"{kind}-local.tif" if kind == "render" else "local"), None, args.repeat)
        report(kind, "in-process, 1 thread", n, s)

    from distributed import Client, LocalCluster

    for w in args.workers:
        with LocalCluster(n_workers=w, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address=None) as cluster, Client(cluster) as client:
            for kind, fn in (("tiles", run_tiles), ("render", run_render)):
                dest = args.workdir / (f"{kind}-{w}.tif" if kind == "render" else f"{kind}-{w}")
                fn(dest, client)  # warm-up: every worker loads the model
                n, s = best(fn, dest, client, args.repeat)
                report(kind, w, n, s)


if __name__ == "__main__":
    main()
