"""Loading models and running them on batches of tiles.

:func:`load_model` returns a :class:`Pix2PixModel`: the generator in inference mode
plus what render needs to use it correctly (the ground resolution it was trained at,
the tile multiple, an identity hash for caches). ``load_model()`` with no path loads
the default model shipped inside the package; nothing is downloaded.

Calling a :class:`Pix2PixModel` without autograd (as :func:`run_batch` does) runs the
inference engine (:func:`engine.float32_engine`: BatchNorm folded, channels-last, a
sub-pixel last layer; its layout chosen by the CPU), built from the generator on first use and rebuilt whenever the
generator's weights or device change; with autograd on it runs the generator itself.

Inference mode (see ``networks`` for the reasons): dropout off, and normalisation as
the checkpoint was trained: ``instance`` models normalise each tile by its own
statistics (the paper's test-time behaviour), ``batch`` models use their running
statistics. Either way a tile's output does not depend on the other tiles of its
batch, and the same tile always gives the same output.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import warnings
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoints import Checkpoint, load_checkpoint
from .devices import autocast, cpu_has_native_bf16, resolve_device
from .engine import COMPUTE_CHUNK, bfloat16_engine, float32_engine
from .errors import CheckpointError, DeviceError, OptionError
from .networks import Generator

__all__ = ["DEFAULT_MODEL", "PRECISIONS", "Pix2PixModel", "default_model_path", "load_model", "run_batch"]

#: Precisions :func:`load_model` accepts.
#: Order matters: QGIS Processing stores the index of the choice in saved models and
#: scripts, so new precisions go at the end.
PRECISIONS = ("fp32", "int8", "bf16")

#: File name of the default model inside the package's ``weights`` folder.
DEFAULT_MODEL = "default.pt"


def default_model_path() -> Path:
    return Path(str(resources.files("geo_pix2pix") / "weights" / DEFAULT_MODEL))


class Pix2PixModel(nn.Module):
    """A trained generator with the facts needed to apply it to georeferenced rasters."""

    def __init__(self, generator: Generator, checkpoint: Checkpoint | None = None,
                 identity: str = "", precision: str = "fp32") -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise OptionError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        self.generator = generator.eval()
        self.checkpoint = checkpoint
        #: "fp32"; "bf16" (:func:`engine.bfloat16_engine`: about twice as fast on CPUs with
        #: bfloat16 arithmetic, outputs under a grey level from fp32 on average); or "int8" (CPU only,
        #: :mod:`quantize`; outputs differ by a few grey levels)
        self.precision = precision
        #: activation ranges for int8 (:func:`quantize.calibrate`), from the checkpoint
        self.int8 = checkpoint.int8 if checkpoint else None
        #: metres per pixel the model was trained at (None: unknown, never resample)
        self.ground_resolution = checkpoint.ground_resolution if checkpoint else None
        #: height and width of tiles must be multiples of this
        self.tile_multiple = generator.config.multiple
        #: content hash of the weights: changes whenever the model does (and with
        #: the precision, whose outputs differ)
        self.identity = identity if precision == "fp32" or not identity else f"{identity}-{precision}"
        self.eval()  # an inference wrapper: .train() is for fine-tuning the generator itself

    @property
    def provenance(self) -> dict:
        return dict(self.checkpoint.provenance) if self.checkpoint else {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or self.training:
            return self.generator(x)
        return self.engine()(x)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_engine", None)  # rebuilt where it runs (a quantised engine does not pickle)
        if self.checkpoint is not None:
            # The generator's weights travel in the generator; the file's own copy, its
            # discriminator and its optimiser state stay behind (shipped to every Dask
            # worker, the default model pickled to 48 MB with them, 31 MB of them weights).
            state["checkpoint"] = dataclasses.replace(self.checkpoint, generator_state={},
                                                      discriminator_state=None, training=None)
        return state

    def engine(self) -> nn.Module:
        """The inference engine for the generator's current weights and device."""
        params = list(self.generator.parameters()) + list(self.generator.buffers())
        key = (model_device(self.generator), tuple(p._version for p in params), tuple(id(p) for p in params),
               self.precision, id(self.int8))
        cached = self.__dict__.get("_engine")  # not a submodule: no second copy in state_dict
        if cached is None or cached[0] != key:
            # Ordinary tensors even when first called under inference_mode, so that
            # the engine can be used afterwards outside it too.
            with torch.inference_mode(False), torch.no_grad():
                if self.precision == "int8":
                    from .quantize import quantize

                    if key[0].type != "cpu":
                        raise DeviceError(f"int8 inference runs on the CPU, not {key[0]}: use --device cpu, or "
                                          "--precision fp32 on the GPU (it runs in float16 there automatically)")
                    source = self.checkpoint.path if self.checkpoint and self.checkpoint.path else "the model"
                    engine = quantize(self.generator.eval(), self.int8, source=source)
                elif self.precision == "bf16":
                    if key[0].type == "cpu" and not cpu_has_native_bf16():
                        warnings.warn("--precision bf16: this CPU has no bfloat16 arithmetic (AVX512-BF16 or "
                                      "AMX) and emulates it, more slowly than fp32: use --precision int8 or "
                                      "fp32 here", stacklevel=2)
                    engine = bfloat16_engine(self.generator.eval())
                else:
                    engine = float32_engine(self.generator.eval())
                if key[0].type == "cuda":
                    torch.backends.cudnn.benchmark = True  # fixed chunk shape: tuned once
            self.__dict__["_engine"] = cached = (key, engine)
        return cached[1]

    def extra_repr(self) -> str:
        res = f"{self.ground_resolution:.3g} m/px" if self.ground_resolution else "unknown"
        return f"ground_resolution={res}, identity={self.identity[:12]}"


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_model(path: str | os.PathLike | None = None, device: str | torch.device | None = None,
               precision: str = "fp32") -> nn.Module:
    """Load a checkpoint (``None``: the default model shipped in the package).

    ``precision="bf16"`` runs the engine in bfloat16 (:func:`engine.bfloat16_engine`; about
    twice as fast as fp32 on CPUs with AVX512-BF16 or AMX, outputs under a grey level
    from fp32 on average). ``precision="int8"`` runs the quantised CPU path (:mod:`quantize`); it needs
    the calibration that ``geo-pix2pix calibrate`` stores in the checkpoint (the
    default model has one). A ``.onnx`` path (from ``geo-pix2pix export-onnx``) is run by
    onnxruntime on the CPU (:class:`onnxrt.OnnxModel`).
    """
    from .onnxrt import OnnxModel, is_onnx_path

    if is_onnx_path(path):
        if precision != "fp32":
            raise OptionError(f"--precision {precision} applies to checkpoints; {str(path)!r} is an ONNX model "
                              "(float32): drop --precision or use the .pt checkpoint")
        if resolve_device(device).type != "cpu":
            raise DeviceError(f"ONNX models run on the CPU here (onnxruntime's CPU provider), not "
                              f"{device}: use --device cpu, or the .pt checkpoint on the GPU")
        return OnnxModel(path)
    if path is None:
        path = default_model_path()
        if not path.exists():
            raise CheckpointError(
                f"the default model {str(path)!r} is not installed: reinstall geo-pix2pix "
                "or pass a checkpoint with --weights"
            )
    path = Path(path)
    ckpt = load_checkpoint(path)
    model = Pix2PixModel(ckpt.build_generator(), ckpt, identity=_file_hash(path), precision=precision)
    model = model.to(resolve_device(device)).eval()
    if precision != "fp32":
        model.engine()  # fail now, with the checkpoint's name, not at the first tile
    return model


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.inference_mode()
def run_batch(model: nn.Module, tiles: np.ndarray, device: torch.device | None = None,
              amp: bool = True, chunk: int = COMPUTE_CHUNK) -> np.ndarray:
    """Run ``model`` on uint8 tiles (N, 3, H, W); return float32 (N, 3, H, W) in [-1, 1].

    The network sees chunks of exactly ``chunk`` tiles (see :data:`COMPUTE_CHUNK`).
    """
    n = tiles.shape[0]
    outs = []
    for i in range(0, n, chunk):
        part = tiles[i : i + chunk]
        if part.shape[0] < chunk:
            pad = np.zeros((chunk - part.shape[0],) + part.shape[1:], dtype=part.dtype)
            part = np.concatenate([part, pad])
        outs.append(_run_chunk(model, part, device, amp)[: min(chunk, n - i)])
    return np.concatenate(outs)


def _run_chunk(model: nn.Module, tiles: np.ndarray, device: torch.device | None, amp: bool = True) -> np.ndarray:
    device = device or model_device(model)
    x = torch.from_numpy(tiles)
    if device.type == "cuda":
        x = x.pin_memory().to(device, non_blocking=True)
    else:
        x = x.to(device)
    x = x.float().div_(127.5).sub_(1.0)
    # A bf16 or int8 engine computes in its own precision: CUDA's float16 autocast
    # would recast a bfloat16 engine's inputs and weights to float16 on every call.
    with autocast(device, amp and getattr(model, "precision", "fp32") == "fp32"):
        y = model(x)
    if tuple(y.shape) != tuple(x.shape):
        raise ValueError(f"the model mapped a batch {tuple(x.shape)} to {tuple(y.shape)}; "
                         "render needs a model that keeps the shape (N, 3, H, W)")
    # ±inf becomes NaN here, so that the one check for broken outputs (pipeline.run_tiles)
    # sees it rather than a clamped, plausible-looking ±1.
    nan = float("nan")
    return y.float().nan_to_num_(nan=nan, posinf=nan, neginf=nan).clamp_(-1, 1).cpu().numpy()
