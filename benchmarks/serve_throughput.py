"""Live tile server throughput: cold and warm latency, tiles/s under 8 and 32 clients,
against the batch ``tiles`` command on the same area, in the same run.

    python benchmarks/serve_throughput.py                    # the default model, 8×16 tiles
    python benchmarks/serve_throughput.py --model tiny       # a small random generator

The area is synthetic map tiles (colour fields, blocks and roads) at the model's zoom in
Helsinki, written to a temporary folder. For each client count a fresh server and cache:

- *cold*: every tile of the area requested once, in a shuffled order shared out among
  the clients (each tile rendered on request, its metatile coalesced);
- *warm*: ``--warm-requests`` requests for random tiles of the area, all in the cache.

The server is ``geo-pix2pix serve`` in a process of its own. Cold requests come from
asyncio tasks of one httpx client in this process. Warm requests come from ``wrk`` when it
is on PATH (``--warm-seconds`` per client count, random tile paths from a Lua script), else
from the same httpx client (``--warm-requests``); for the warm phase the server is pinned to
one core and the client to another, where the machine has two, so they do not take each
other's CPU. Besides wall-clock rates, the server's own CPU time per request is measured
(from /proc): it does not depend on what else the machine runs. Prints which client ran,
a Markdown table and the CPU model (docs/performance.md holds the figures).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

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


class Load(NamedTuple):
    """What a client saw: requests answered, seconds, latency percentiles (s), status counts."""

    requests: int
    seconds: float
    p50: float
    p99: float
    statuses: dict


async def fetch_all(url: str, paths: list[str], clients: int) -> Load:
    """Request ``paths`` with ``clients`` concurrent tasks of one httpx client."""
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
        return Load(len(latencies), time.perf_counter() - t0, pct(latencies, 0.5), pct(latencies, 0.99), statuses)


#: wrk's script: a random tile of the area per request; prints one RESULT line at the end.
WRK_LUA = """
math.randomseed(1)
local paths = {%s}
counts = {}
local threads = {}
function setup(thread) table.insert(threads, thread) end
function request() return wrk.format("GET", paths[math.random(#paths)]) end
function response(status) counts[status] = (counts[status] or 0) + 1 end
function done(summary, latency)
  local st = {}
  for _, t in ipairs(threads) do
    for code, n in pairs(t:get("counts")) do st[#st + 1] = code .. ":" .. n end
  end
  io.write(string.format("RESULT %%d %%d %%d %%d %%s\\n", summary.requests, summary.duration,
                         latency:percentile(50), latency:percentile(99), table.concat(st, ",")))
end
"""


def run_wrk(url: str, paths: list[str], clients: int, seconds: int, script: Path, core: int | None) -> Load:
    """``wrk`` with ``clients`` connections for ``seconds`` (one thread, on ``core``)."""
    script.write_text(WRK_LUA % ", ".join(f'"{p}"' for p in paths))
    pin = None if core is None else (lambda: os.sched_setaffinity(0, {core}))
    out = subprocess.run(["wrk", "-t1", f"-c{clients}", f"-d{seconds}s", "--latency", "-s", str(script), url],
                         capture_output=True, text=True, check=True, preexec_fn=pin).stdout
    for ln in out.splitlines():
        if "Socket errors" in ln:  # not answered at all: not in the statuses
            print(f"wrk, {clients} connections: {ln.strip()}", flush=True)
    line = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
    n, micros, p50, p99, st = (line.split() + [""])[1:6]
    statuses = {int(c): int(k) for c, k in (pair.split(":") for pair in st.split(",") if pair)}
    return Load(int(n), int(micros) / 1e6, int(p50) / 1e6, int(p99) / 1e6, statuses)


def run_httpx(url: str, paths: list[str], clients: int, core: int | None) -> Load:
    """The httpx client of :func:`fetch_all`, this thread on ``core`` while it runs."""
    before = os.sched_getaffinity(0)
    if core is not None:
        os.sched_setaffinity(0, {core})
    try:
        return asyncio.run(fetch_all(url, paths, clients))
    finally:
        os.sched_setaffinity(0, before)


def pin_process(pid: int, core: int) -> None:
    """Every thread of process ``pid`` onto ``core`` (a process's affinity is per thread)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), {core})
        except ProcessLookupError:
            pass  # a thread that ended meanwhile


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
    ap.add_argument("--client", choices=["auto", "wrk", "httpx"], default="auto",
                    help="warm-phase client (auto: wrk when on PATH, else httpx)")
    ap.add_argument("--warm-seconds", type=int, default=10, help="wrk's duration per client count")
    ap.add_argument("--warm-requests", type=int, default=5000, help="httpx's requests per client count")
    args = ap.parse_args()
    client = args.client if args.client != "auto" else ("wrk" if shutil.which("wrk") else "httpx")
    cores = sorted(os.sched_getaffinity(0))
    server_core, client_core = (cores[0], cores[1]) if len(cores) >= 2 else (None, None)
    where = (f"server on core {server_core}, client on core {client_core}" if server_core is not None
             else "one core: not pinned")
    print(f"warm client: {client} ({where})", flush=True)

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
                                     "--render-zoom", str(zoom), "--queue", str(len(area)), *weights,
                                     # batch's thread count: serve's default follows the load average,
                                     # which the paused background work or the last round can leave high
                                     "--threads", str(torch.get_num_threads())])
            url = f"http://127.0.0.1:{port}"
            try:
                wait_up(url, proc)
                order = paths[:]
                random.Random(clients).shuffle(order)
                cpu0 = cpu_seconds(proc.pid)
                load = asyncio.run(fetch_all(url, order, clients))
                rows.append(("cold", clients, load, cpu_seconds(proc.pid) - cpu0))
                print(rows[-1], flush=True)
                if server_core is not None:
                    pin_process(proc.pid, server_core)
                cpu0 = cpu_seconds(proc.pid)
                if client == "wrk":
                    load = run_wrk(url, paths, clients, args.warm_seconds, tmp / "warm.lua", client_core)
                else:
                    rng = random.Random(1)
                    load = run_httpx(url, [rng.choice(paths) for _ in range(args.warm_requests)], clients,
                                     client_core)
                rows.append(("warm", clients, load, cpu_seconds(proc.pid) - cpu0))
                print(rows[-1], flush=True)
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
    print(f"cold client: httpx (this process); warm client: {client} ({where})")
    print()
    print("| cache | clients | requests | tiles/s | vs batch | p50 latency | p99 latency | server CPU per tile "
          "| statuses |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for kind, clients, load, cpu in rows:
        rate = load.requests / load.seconds
        vs = f"{rate / batch_rate:.0%}" if kind == "cold" else "—"
        n = max(load.requests, 1)
        per = f"{cpu * 1000 / n:,.1f} ms" if kind == "cold" else f"{cpu * 1e6 / n:,.0f} µs"
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(load.statuses.items()))
        print(f"| {kind} | {clients} | {load.requests} | {rate:,.1f} | {vs} | {load.p50 * 1000:,.1f} ms | "
              f"{load.p99 * 1000:,.1f} ms | {per} | {statuses} |")

if __name__ == "__main__":
    main()
