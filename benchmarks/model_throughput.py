"""Model-only inference throughput: the reference way against geo-pix2pix's engine.

Everything is measured in one process, on the same weights, in interleaved rounds
(the median of the rounds is printed), so the ratios hold even on a shared machine
whose absolute speed moves from minute to minute:

- the machine's fp32 matrix-product rate (2048 × 2048 ``torch.mm``), the practical limit;
- the *reference*: a plain eager U-Net written here the way the pix2pix reference code
  runs it (fp32, batch 1, norm layers as separate modules), loaded with the same weights;
- the engine (:class:`geo_pix2pix.engine.InferenceUNet`) at batch 1 and through
  ``run_batch`` at its fixed compute chunk, inside :func:`geo_pix2pix.heap.kept_heap`
  as ``render`` runs it;
- the bfloat16 engine (``precision="bf16"``, :func:`geo_pix2pix.engine.bfloat16_engine`) and
  the int8 path (``precision="int8"``, :mod:`geo_pix2pix.quantize`) at the chunk;
- where onnxruntime is installed, the engine exported to ONNX and run by onnxruntime
  (``--weights model.onnx``, :mod:`geo_pix2pix.onnxrt`) at the chunk.

Models: ``default`` (the shipped model, with its stored int8 calibration), a checkpoint
path, and ``paper``
(the paper-width generator, BatchNorm, random weights with randomised BatchNorm
statistics, calibrated here on the tiles of ``sample_tiles/helsinki_map.tif``).
For each it prints tiles/s, the ratio to the reference, achieved GFLOP/s, its share of
the matrix-product rate and the largest output difference from the reference.

    python benchmarks/model_throughput.py [--models default paper] [--seconds 3] [--rounds 3]
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
from geo_pix2pix.engine import COMPUTE_CHUNK
from geo_pix2pix.heap import kept_heap
from geo_pix2pix.model import Pix2PixModel, run_batch
from geo_pix2pix.networks import Generator, GeneratorConfig, gflop_per_tile
from geo_pix2pix.quantize import calibrate
from geo_pix2pix.raster import map_tiles

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


def _onnx_model(model: Pix2PixModel, folder: str):
    """The model exported to ONNX and loaded by onnxruntime, or None without them."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    from geo_pix2pix.onnxrt import OnnxModel, export_onnx

    return OnnxModel(export_onnx(model, Path(folder) / f"{model.identity[:12]}.onnx"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["default", "paper"])
    ap.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    sample = np.stack(list(map_tiles(SAMPLE)))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.rounds} rounds × {args.seconds:g} s per figure (median shown)")
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, (COMPUTE_CHUNK, 3, 256, 256), dtype=np.uint8)
    tiles[: min(len(sample), COMPUTE_CHUNK)] = sample[:COMPUTE_CHUNK]  # map tiles where there are some
    peaks = []
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
        x1 = torch.from_numpy(tiles[:1]).float() / 127.5 - 1
        onnx_model = _onnx_model(model, tmp)
        ways = {
            "reference (eager, batch 1)": (lambda ref=ref, x1=x1: ref(x1), 1),
            "engine, batch 1": (lambda engine=engine, x1=x1: engine(x1), 1),
            f"engine, chunk {COMPUTE_CHUNK}": (lambda m=model: run_batch(m, tiles), COMPUTE_CHUNK),
            f"bf16, chunk {COMPUTE_CHUNK}": (lambda m=bf16: run_batch(m, tiles), COMPUTE_CHUNK),
            f"int8, chunk {COMPUTE_CHUNK}": (lambda m=int8: run_batch(m, tiles), COMPUTE_CHUNK),
        }
        if onnx_model is not None:
            ways[f"onnxruntime, chunk {COMPUTE_CHUNK}"] = (lambda m=onnx_model: run_batch(m, tiles), COMPUTE_CHUNK)
        rates: dict[str, list[float]] = {k: [] for k in ways}
        bf16_peaks = []
        for _ in range(args.rounds):
            peaks.append(matmul_gflops(args.seconds / 2))
            bf16_peaks.append(matmul_gflops(args.seconds / 2, torch.bfloat16))
            for label, (fn, n) in ways.items():
                # geo-pix2pix's ways run as render runs them, with freed memory kept
                # (heap.kept_heap); the reference with the process's defaults.
                with nullcontext() if label.startswith("reference") else kept_heap():
                    rates[label].append(rate(fn, n, args.seconds))
        peak = statistics.median(peaks)
        want = ref(torch.from_numpy(tiles).float() / 127.5 - 1).numpy()
        diff32 = np.abs(run_batch(model, tiles) - want)
        diff8 = np.abs(run_batch(int8, tiles) - want)
        diff16 = np.abs(run_batch(bf16, tiles) - want)
        gflop = gflop_per_tile(gen.config)
        r_ref = statistics.median(rates["reference (eager, batch 1)"])
        print(f"\n{name}: width {gen.config.base_width}, norm {gen.config.norm}, {gflop:.2f} GFLOP/tile; "
              f"2048² matrix product: fp32 {peak:.0f}, bf16 {statistics.median(bf16_peaks):.0f} GFLOP/s")
        for label, rs in rates.items():
            r = statistics.median(rs)
            print(f"  {label:28s} {r:7.2f} tiles/s  ×{r / r_ref:4.2f}  {r * gflop:6.1f} GFLOP/s "
                  f"({100 * r * gflop / peak:5.1f} % of matmul)   rounds: {', '.join(f'{x:.2f}' for x in rs)}")
        print(f"  largest |engine − reference| on [-1, 1]: {diff32.max():.2e}; "
              f"bf16: largest {diff16.max():.3f}, mean {diff16.mean():.4f}; "
              f"int8: largest {diff8.max():.3f}, mean {diff8.mean():.4f}")


if __name__ == "__main__":
    main()
