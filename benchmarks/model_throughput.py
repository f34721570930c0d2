"""Model-only inference throughput: the reference way against geo-pix2pix's engine.

Everything is measured in one process, on the same weights, in interleaved rounds
(the median of the rounds is printed), so the ratios hold even on a shared machine
whose absolute speed moves from minute to minute:

- the machine's fp32 and bf16 matrix-product rates (2048 × 2048 ``torch.mm``), the
  practical limits: fp32 rows are shared against the fp32 rate, bf16 rows against the
  bf16 rate (on AMX several times the fp32 one);
- the *reference*: a plain eager U-Net written here the way the pix2pix reference code
  runs it (fp32, batch 1, norm layers as separate modules), loaded with the same weights;
- the engine (:func:`geo_pix2pix.model.engine.float32_engine`, whose layout follows the CPU) at
  batch 1 and through ``run_batch`` at its fixed compute chunk, inside
  :func:`geo_pix2pix.heap.kept_heap` as ``render`` runs it;
- the bfloat16 engine (``precision="bf16"``, :func:`geo_pix2pix.model.engine.bfloat16_engine`) and
  the int8 path (``precision="int8"``, :mod:`geo_pix2pix.model.accel.int8`) at the chunk;
- the other layout at the chunk, fp32 and bf16: on a CPU with AMX the engines chosen
  elsewhere (:class:`~geo_pix2pix.model.engine.InferenceUNet`), elsewhere the AMX one
  (:class:`~geo_pix2pix.model.engine_amx.ChannelsLastUNet`), so that each machine measures
  the choice it did not make;
- where onnxruntime is installed, the engine exported to ONNX and run by onnxruntime
  (``--weights model.onnx``, :mod:`geo_pix2pix.model.accel.onnx`) at the chunk.

Models: ``default`` (the shipped model, with its stored int8 calibration), a checkpoint
path, and ``paper``
(the paper-width generator, BatchNorm, random weights with randomised BatchNorm
statistics, calibrated here on the tiles of ``sample_tiles/helsinki_map.tif``).
It prints the CPU's model and the flags that decide the engine, then for each model and
way tiles/s, the ratio to the reference, achieved GFLOP/s, its share of the
matrix-product rate of its precision and the largest output difference from the
reference. ``--threads 1`` measures one core (less disturbed by other work on a shared
machine).

    python benchmarks/model_throughput.py [--models default paper] [--seconds 3] [--rounds 3] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn

import geo_pix2pix
from geo_pix2pix.heap import kept_heap
from geo_pix2pix.io.read import map_tiles
from geo_pix2pix.model import devices
from geo_pix2pix.model.accel.int8 import calibrate
from geo_pix2pix.model.engine import COMPUTE_CHUNK, InferenceUNet, bfloat16_engine
from geo_pix2pix.model.engine_amx import ChannelsLastUNet
from geo_pix2pix.model.load import Pix2PixModel, run_batch
from geo_pix2pix.model.networks import Generator, GeneratorConfig, gflop_per_tile

SAMPLE = Path(__file__).resolve().parent.parent / "sample_tiles" / "helsinki_map.tif"


class ReferenceUNet(nn.Module):
    """The paper's U-Net as a plain list of layers, run eagerly (the baseline); with
    ``dropout``, the decoder's dropout layers too (for training)."""

    def __init__(self, gen: Generator, dropout: bool = False) -> None:
        super().__init__()
        self.downs = nn.ModuleList(nn.Sequential(d.conv, d.norm, nn.LeakyReLU(0.2)) for d in gen.downs)
        self.ups = nn.ModuleList(nn.Sequential(u.conv, u.norm, *([u.drop] if dropout else []), nn.ReLU())
                                 for u in gen.ups)
        self.head = gen.head

    def forward(self, x):
        skips = []
        for d in self.downs:
            x = d(x)
            skips.append(x)
        skips.pop()
        for u in self.ups:
            x = torch.cat([u(x), skips.pop()], 1)
        return self.head(x)


def matmul_gflops(seconds: float, dtype: torch.dtype = torch.float32) -> float:
    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    torch.mm(a, b)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.mm(a, b)
        n += 1
    return n * 2 * 2048**3 / (time.perf_counter() - t0) / 1e9


def rate(fn, tiles_per_call: int, seconds: float) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < min(1.0, seconds / 3):  # warm-up: allocator, kernel choice
        fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += tiles_per_call
    return n / (time.perf_counter() - t0)


def paper_model(calibration_tiles: np.ndarray) -> Pix2PixModel:
    torch.manual_seed(0)
    gen = Generator(GeneratorConfig()).eval()  # width 64, BatchNorm (eval)
    with torch.no_grad():  # statistics as a trained network has them, not the identity
        for m in gen.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    model = Pix2PixModel(gen, identity="paper")
    model.int8 = calibrate(gen, [calibration_tiles])
    return model


class Engine(nn.Module):
    """A given engine in ``run_batch``'s hands (``precision`` tells it not to autocast)."""

    def __init__(self, engine: nn.Module, precision: str) -> None:
        super().__init__()
        self.engine, self.precision = engine, precision

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.engine(x)


def other_layouts(gen: Generator) -> dict[str, nn.Module]:
    """The engines this CPU's flags did not choose, fp32 and bf16."""
    if devices.cpu_bf16_kind() == "amx":
        return {"fp32": InferenceUNet(gen), "bf16": bfloat16_engine(gen, cpu="avx512_bf16")}
    return {"fp32": ChannelsLastUNet(gen, dtype=torch.float32), "bf16": ChannelsLastUNet(gen)}


def _onnx_model(model: Pix2PixModel, folder: str):
    """The model exported to ONNX and loaded by onnxruntime, or None without them."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    from geo_pix2pix.model.accel.onnx import OnnxModel, export_onnx

    return OnnxModel(export_onnx(model, Path(folder) / f"{model.identity[:12]}.onnx"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["default", "paper"])
    ap.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, help="torch threads (default: PyTorch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    sample = np.stack(list(map_tiles(SAMPLE)))
    print(f"CPU: {devices.cpu_description()}; bfloat16: {devices.cpu_bf16_kind() or 'emulated'}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.rounds} rounds × {args.seconds:g} s per figure (median shown)")
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, (COMPUTE_CHUNK, 3, 256, 256), dtype=np.uint8)
    tiles[: min(len(sample), COMPUTE_CHUNK)] = sample[:COMPUTE_CHUNK]  # map tiles where there are some
    tmp = tempfile.mkdtemp(prefix="geo-pix2pix-bench-")
    for name in args.models:
        if name == "paper":
            model = paper_model(sample)
        else:
            model = geo_pix2pix.load_model(None if name == "default" else name, "cpu")
            if model.int8 is None:
                print(f"{name}: no stored int8 calibration: calibrating on the sample tiles")
                model.int8 = calibrate(model.generator, [sample])
        gen = model.generator
        int8 = Pix2PixModel(gen, model.checkpoint, identity=model.identity, precision="int8")
        int8.int8 = model.int8
        bf16 = Pix2PixModel(gen, model.checkpoint, identity=model.identity, precision="bf16")
        ref = ReferenceUNet(gen).eval()
        engine = model.engine()
        chosen = {"fp32": type(engine).__name__, "bf16": type(bf16.engine()).__name__}
        others = {p: Engine(e, p) for p, e in other_layouts(gen).items()}
        x1 = torch.from_numpy(tiles[:1]).float() / 127.5 - 1
        onnx_model = _onnx_model(model, tmp)
        chunk = f"chunk {COMPUTE_CHUNK}"
        ways = {  # label: (call, tiles per call, precision of its matrix products)
            "reference (eager, batch 1)": (lambda ref=ref, x1=x1: ref(x1), 1, "fp32"),
            f"fp32 {chosen['fp32']}, batch 1": (lambda engine=engine, x1=x1: engine(x1), 1, "fp32"),
            f"fp32 {chosen['fp32']}, {chunk}": (lambda m=model: run_batch(m, tiles), COMPUTE_CHUNK, "fp32"),
            f"fp32 {type(others['fp32'].engine).__name__}, {chunk}":
                (lambda m=others["fp32"]: run_batch(m, tiles), COMPUTE_CHUNK, "fp32"),
            f"bf16 {chosen['bf16']}, {chunk}": (lambda m=bf16: run_batch(m, tiles), COMPUTE_CHUNK, "bf16"),
            f"bf16 {type(others['bf16'].engine).__name__}, {chunk}":
                (lambda m=others["bf16"]: run_batch(m, tiles), COMPUTE_CHUNK, "bf16"),
            f"int8, {chunk}": (lambda m=int8: run_batch(m, tiles), COMPUTE_CHUNK, "int8"),
        }
        if onnx_model is not None:
            ways[f"onnxruntime, {chunk}"] = (lambda m=onnx_model: run_batch(m, tiles), COMPUTE_CHUNK, "fp32")
        rates: dict[str, list[float]] = {k: [] for k in ways}
        peaks: dict[str, list[float]] = {"fp32": [], "bf16": []}
        for _ in range(args.rounds):
            for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
                peaks[precision].append(matmul_gflops(args.seconds / 2, dtype))
            for label, (fn, n, _) in ways.items():
                # geo-pix2pix's ways run as render runs them, with freed memory kept
                # (heap.kept_heap); the reference with the process's defaults.
                with nullcontext() if label.startswith("reference") else kept_heap():
                    rates[label].append(rate(fn, n, args.seconds))
        peak = {dtype: statistics.median(p) for dtype, p in peaks.items()}
        want = ref(torch.from_numpy(tiles).float() / 127.5 - 1).numpy()
        diffs = {"fp32": run_batch(model, tiles), "bf16": run_batch(bf16, tiles),
                 f"bf16 {type(others['bf16'].engine).__name__}": run_batch(others["bf16"], tiles),
                 "int8": run_batch(int8, tiles)}
        gflop = gflop_per_tile(gen.config)
        r_ref = statistics.median(rates["reference (eager, batch 1)"])
        print(f"\n{name}: width {gen.config.base_width}, norm {gen.config.norm}, {gflop:.2f} GFLOP/tile; "
              f"2048² matrix product: fp32 {peak['fp32']:.0f}, bf16 {peak['bf16']:.0f} GFLOP/s "
              f"(rounds: {', '.join(f'{x:.0f}' for x in peaks['bf16'])})")
        for label, rs in rates.items():
            r, precision = statistics.median(rs), ways[label][2]
            share = (f"{100 * r * gflop / peak[precision]:5.1f} % of {precision} matmul" if precision in peak
                     else " " * 20)
            print(f"  {label:36s} {r:7.2f} tiles/s  ×{r / r_ref:4.2f}  {r * gflop:6.1f} GFLOP/s ({share})"
                  f"   rounds: {', '.join(f'{x:.2f}' for x in rs)}")
        print("  |way − reference| on [-1, 1]: " + "; ".join(
            f"{k}: largest {np.abs(v - want).max():.2g}, mean {np.abs(v - want).mean():.2g}" for k, v in diffs.items()))

if __name__ == "__main__":
    main()
