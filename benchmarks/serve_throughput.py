"""Live tile server throughput: cold and warm latency, tiles/s under 8 and 32 clients,
against the batch ``tiles`` command on the same area, in the same run.

    python benchmarks/serve_throughput.py                    # the default model, 8×16 tiles
    python benchmarks/serve_throughput.py --model tiny       # a small random generator

The area is synthetic map tiles (colour fields, blocks and roads) at the model's zoom in
Helsinki, written to a temporary folder. For each client count a fresh server and cache:

- *cold*: every tile of the area requested once, in a shuffled order shared out among
  the clients (each tile rendered on request, its metatile coalesced);
- *warm*: ``--warm-requests`` requests for random tiles of the area, all in the cache.

The server is ``geo-pix2pix serve`` in a process of its own; clients are asyncio tasks of
one httpx client with keep-alive connections in this one (on a small machine they share
its cores). Besides wall-clock rates, the server's own CPU time per request is measured
(from /proc): it does not depend on what else the machine runs. Prints a Markdown table
and the CPU model (docs/performance.md holds the figures).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import math
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mercantile
import numpy as np
import torch
from PIL import Image

from geo_pix2pix.tiles import make_tiles, native_zoom


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def map_tile(t: mercantile.Tile) -> bytes:
    gx = (t.x * 256 + np.arange(256))[None, :].astype(np.float64)
    gy = (t.y * 256 + np.arange(256))[:, None].astype(np.float64)
    rgb = np.stack([150 + 60 * np.sin(gx / 23) + 0 * gy, 140 + 50 * np.cos(gy / 31) + 0 * gx,
                    120 + 60 * (((gx // 40) + (gy // 40)) % 2)])
    road = ((gx % 97) < 4) | ((gy % 89) < 4)
    rgb[:, road] = np.array([250, 250, 245])[:, None]
    buf = io.BytesIO()
    Image.fromarray(rgb.clip(0, 255).astype(np.uint8).transpose(1, 2, 0)).save(buf, "PNG")
    return buf.getvalue()


def write_source(root: Path, tiles) -> Path:
    for t in tiles:
        p = root / str(t.z) / str(t.x) / f"{t.y}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(map_tile(t))
    return root


async def fetch_all(url: str, paths: list[str], clients: int) -> tuple[list[float], float, dict]:
    """Request ``paths`` with ``clients`` concurrent tasks; (latencies, seconds, status counts)."""
    import httpx

    queue = list(reversed(paths))
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        async def worker():
            while queue:
                path = queue.pop()
                t0 = time.perf_counter()
                r = await client.get(path)
                latencies.append(time.perf_counter() - t0)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return latencies, time.perf_counter() - t0, statuses


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit("the server did not start")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["default", "tiny"], default="default")
    ap.add_argument("--cols", type=int, default=8)
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--warm-requests", type=int, default=5000)
    args = ap.parse_args()

    if args.model == "default":
        from geo_pix2pix import load_model

        model = load_model()
    else:
        from geo_pix2pix.model.networks import Generator

        torch.manual_seed(0)
        model = Generator(base_width=8, norm="instance").eval()
    res = getattr(model, "ground_resolution", None)
    zoom = native_zoom(res, 60.17) if res else 15
    origin = mercantile.tile(24.94, 60.17, zoom)
    x0, y0 = origin.x - origin.x % 8, origin.y - origin.y % 8  # whole metatiles
    area = [mercantile.Tile(x, y, zoom) for y in range(y0, y0 + args.rows) for x in range(x0, x0 + args.cols)]
    paths = [f"/{t.z}/{t.x}/{t.y}.png" for t in area]
    rows = []
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        tmp = Path(tmp)
        src = write_source(tmp / "src", area)
        t0, c0 = time.perf_counter(), time.process_time()
        result = make_tiles(src, tmp / "batch", zooms=str(zoom), model=model, render_zoom=zoom)
        batch_seconds, batch_cpu = time.perf_counter() - t0, time.process_time() - c0
        batch_rate = result.total / batch_seconds
        print(f"batch tiles: {result.total} tiles in {batch_seconds:.1f} s = {batch_rate:.2f} tiles/s", flush=True)
        weights = []
        if args.model == "tiny":
            from geo_pix2pix.model.checkpoints import save_checkpoint

            weights = ["--weights", str(save_checkpoint(tmp / "tiny.pt", model))]
        for clients in (8, 32):
            port = free_port()
            proc = subprocess.Popen([sys.executable, "-m", "geo_pix2pix", "-q", "serve", str(src), "--cache",
                                     str(tmp / f"cache{clients}"), "--port", str(port), "--zoom", str(zoom),
                                     "--render-zoom", str(zoom), "--queue", str(len(area)), *weights])
            url = f"http://127.0.0.1:{port}"
            try:
                wait_up(url, proc)
                order = paths[:]
                random.Random(clients).shuffle(order)
                cpu0 = cpu_seconds(proc.pid)
                lat, secs, st = asyncio.run(fetch_all(url, order, clients))
                cpu = cpu_seconds(proc.pid) - cpu0
                rows.append(("cold", clients, len(lat), secs, len(lat) / secs, pct(lat, 0.5), pct(lat, 0.95), st, cpu))
                print(rows[-1][:-1], flush=True)
                rng = random.Random(1)
                warm = [rng.choice(paths) for _ in range(args.warm_requests)]
                cpu0 = cpu_seconds(proc.pid)
                lat, secs, st = asyncio.run(fetch_all(url, warm, clients))
                cpu = cpu_seconds(proc.pid) - cpu0
                rows.append(("warm", clients, len(lat), secs, len(lat) / secs, pct(lat, 0.5), pct(lat, 0.95), st, cpu))
                print(rows[-1][:-1], flush=True)
            finally:
                proc.terminate()
                proc.wait(120)
    print()
    print(f"CPU: {cpu_model()} ({torch.get_num_threads()} torch threads); model: {args.model}; "
          f"area: {args.cols}×{args.rows} tiles at zoom {zoom}; Python {sys.version.split()[0]}")
    print(f"batch `tiles`: {batch_rate:.2f} tiles/s ({result.total} tiles, {batch_seconds:.1f} s)")
    print()
    print(f"batch `tiles` CPU: {batch_cpu * 1000 / result.total:,.1f} ms per tile")
    print()
    print("| cache | clients | requests | tiles/s | vs batch | p50 latency | p95 latency | server CPU per tile "
          "| statuses |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for kind, clients, n, _secs, rate, p50, p95, st, cpu in rows:
        vs = f"{rate / batch_rate:.0%}" if kind == "cold" else "—"
        per = f"{cpu * 1000 / n:,.1f} ms" if kind == "cold" else f"{cpu * 1e6 / n:,.0f} µs"
        print(f"| {kind} | {clients} | {n} | {rate:,.1f} | {vs} | {p50 * 1000:,.1f} ms | {p95 * 1000:,.1f} ms | "
              f"{per} | {', '.join(f'{k}: {v}' for k, v in sorted(st.items()))} |")


if __name__ == "__main__":
    main()
