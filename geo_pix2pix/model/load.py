"""Models for inference: what render, tiles and evaluate need from one, and loading it.

:class:`InferenceModel` declares what a model gives its callers (ground resolution, tile
multiple, identity, precision, provenance). :func:`load_model` loads a checkpoint (``None``:
the default model shipped in the package) as a :class:`Pix2PixModel`, whose calls without
autograd run the inference engine (:mod:`engine`). :func:`as_inference_model` gives any
module those facts: a :class:`~geo_pix2pix.model.networks.Generator` becomes a
:class:`Pix2PixModel` (so it gets the engine too), another module a :class:`PlainModel`.
Callers name a model through :mod:`.spec` (path or module, device, precision).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from importlib import resources
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, DeviceError, OptionError
from .checkpoints import Checkpoint, file_hash, load_checkpoint
from .choices import PRECISIONS
from .devices import autocast, cpu_has_native_bf16, resolve_device
from .engine import COMPUTE_CHUNK, bfloat16_engine, float32_engine
from .networks import Generator

__all__ = ["DEFAULT_MODEL", "PRECISIONS", "InferenceModel", "Pix2PixModel", "PlainModel", "as_inference_model",
           "default_model_path", "load_model", "model_device", "run_batch"]

#: File name of the default model inside the package's ``weights`` folder.
DEFAULT_MODEL = "default.pt"


@runtime_checkable
class InferenceModel(Protocol):
    """What render, tiles and evaluate need from a model, besides mapping a float batch
    (N, 3, H, W) in [-1, 1] to one of the same shape."""

    #: metres per pixel the model was trained at (None: unknown, never resample)
    ground_resolution: float | None
    #: tile height and width must be multiples of this
    tile_multiple: int
    #: a content hash, different for other weights or another precision (caches, output tags)
    identity: str
    #: "fp32", "bf16" or "int8" (see :data:`PRECISIONS`)
    precision: str
    #: where the weights came from (training data, steps, …); may be empty
    provenance: dict

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


def default_model_path() -> Path:
    return Path(str(resources.files("geo_pix2pix") / "weights" / DEFAULT_MODEL))


def _check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise OptionError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    return precision


class Pix2PixModel(nn.Module):
    """A generator with the facts needed to apply it to georeferenced rasters.

    Called without autograd it runs the inference engine of ``precision``, built from the
    generator's weights when first needed and built again after :meth:`load_state_dict`,
    ``train()``, ``to()`` or a call with autograd. After changing ``generator``'s weights
    by other means, call :meth:`refresh`.
    """

    def __init__(self, generator: Generator, checkpoint: Checkpoint | None = None,
                 identity: str = "", precision: str = "fp32") -> None:
        super().__init__()
        self.generator = generator.eval()
        self.checkpoint = checkpoint
        self.precision = _check_precision(precision)
        #: activation ranges for int8 (:func:`accel.int8.calibrate`), from the checkpoint
        self.int8 = checkpoint.int8 if checkpoint else None
        self.ground_resolution = checkpoint.ground_resolution if checkpoint else None
        self.tile_multiple = generator.config.multiple
        self._identity = identity  # the weights file's hash; "" for a generator made in Python
        self.__dict__["_engine"] = None  # not a submodule: no second copy in state_dict
        self.eval()

    @property
    def identity(self) -> str:
        if self._identity:
            base = self._identity
        else:
            from .provenance import model_identity

            base = model_identity(self.generator)
        return base if self.precision == "fp32" else f"{base}-{self.precision}"

    @property
    def provenance(self) -> dict:
        return dict(self.checkpoint.provenance) if self.checkpoint else {}

    def with_precision(self, precision: str) -> Pix2PixModel:
        """The same generator and facts at another precision (its own engine)."""
        other = Pix2PixModel(self.generator, self.checkpoint, self._identity, precision)
        other.int8 = self.int8
        return other

    def refresh(self) -> None:
        """Forget the engine: the next call builds it from the generator's current weights."""
        self.__dict__["_engine"] = None

    def train(self, mode: bool = True) -> Pix2PixModel:
        if mode:
            self.refresh()
        return super().train(mode)

    def _apply(self, fn, recurse=True):
        self.refresh()
        return super()._apply(fn, recurse)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        self.refresh()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or self.training:
            self.refresh()  # the generator may be fine-tuned through this call
            return self.generator(x)
        return self.engine()(x)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_engine"] = None  # rebuilt where it runs (a quantised engine does not pickle)
        if self.checkpoint is not None:
            # The generator's weights travel in the generator; the file's own copy, its
            # discriminator and its optimiser state stay behind.
            state["checkpoint"] = dataclasses.replace(self.checkpoint, generator_state={},
                                                      discriminator_state=None, training=None)
        return state

    def engine(self) -> nn.Module:
        """The inference engine for the generator's weights, device and :attr:`precision`."""
        device = model_device(self.generator)
        key = (device, self.precision, id(self.int8))
        cached = self.__dict__.get("_engine")
        if cached is None or cached[0] != key:
            # Ordinary tensors even when first called under inference_mode, so that
            # the engine can be used afterwards outside it too.
            with torch.inference_mode(False), torch.no_grad():
                engine = self._build_engine(device)
            self.__dict__["_engine"] = cached = (key, engine)
        return cached[1]

    def _build_engine(self, device: torch.device) -> nn.Module:
        gen = self.generator.eval()
        if self.precision == "int8":
            from .accel.int8 import quantize

            if device.type != "cpu":
                raise DeviceError(f"int8 inference runs on the CPU, not {device}: use --device cpu, or "
                                  "--precision fp32 on the GPU (it runs in float16 there automatically)")
            source = self.checkpoint.path if self.checkpoint and self.checkpoint.path else "the model"
            return quantize(gen, self.int8, source=source)
        if self.precision == "bf16":
            if device.type == "cpu" and not cpu_has_native_bf16():
                warnings.warn("--precision bf16: this CPU has no bfloat16 arithmetic (AVX512-BF16 or "
                              "AMX) and emulates it, more slowly than fp32: use --precision int8 or "
                              "fp32 here", stacklevel=3)
            return bfloat16_engine(gen)
        return float32_engine(gen)

    def extra_repr(self) -> str:
        res = f"{self.ground_resolution:.3g} m/px" if self.ground_resolution else "unknown"
        return f"ground_resolution={res}, precision={self.precision}, identity={self._identity[:12]}"


class PlainModel(nn.Module):
    """Any other module mapping (N, 3, H, W) to the same shape, as an :class:`InferenceModel`:
    the facts it declares itself, the rest unknown (no resampling, any tile size)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module.eval()
        # The one place a model's facts are read with defaults: a module from outside the package.
        self.ground_resolution = getattr(module, "ground_resolution", None)
        self.tile_multiple = getattr(module, "tile_multiple", 1)
        self.precision = "fp32"
        self.provenance = dict(getattr(module, "provenance", None) or {})

    @property
    def identity(self) -> str:
        from .provenance import model_identity

        return model_identity(self.module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def as_inference_model(module: nn.Module, device: str | torch.device | None = None,
                       precision: str | None = None) -> InferenceModel:
    """``module`` as an :class:`InferenceModel` on ``device``, in eval mode.

    A :class:`Generator` is wrapped in a :class:`Pix2PixModel` (the engine, as a loaded
    checkpoint gets it); ``precision`` (None: the model's own) applies to those.
    """
    if isinstance(module, Generator):
        model = Pix2PixModel(module, precision=_check_precision(precision or "fp32"))
    elif isinstance(module, Pix2PixModel):
        model = module if precision in (None, module.precision) else module.with_precision(_check_precision(precision))
    else:
        model = module if isinstance(module, InferenceModel) and isinstance(module, nn.Module) else PlainModel(module)
        if precision not in (None, model.precision):
            raise OptionError(f"precision {precision!r} applies to geo-pix2pix generators and checkpoints; "
                              f"{type(module).__name__} runs in {model.precision}: drop the precision")
    if device is not None:
        model = model.to(resolve_device(device))
    return model.eval()


def load_model(path: str | os.PathLike | None = None, device: str | torch.device | None = None,
               precision: str = "fp32") -> InferenceModel:
    """Load a checkpoint (``None``: the default model shipped in the package).

    ``precision``: ``"fp32"``, ``"bf16"`` (the bfloat16 engine) or ``"int8"`` (needs the
    calibration ``geo-pix2pix calibrate`` stores; the default model has one). A ``.onnx``
    path (``geo-pix2pix export-onnx``) is run by onnxruntime on the CPU.
    """
    from .accel.onnx import OnnxModel, is_onnx_path

    _check_precision(precision)
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
    model = Pix2PixModel(ckpt.build_generator(), ckpt, identity=file_hash(path), precision=precision)
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
    # Any module runs here (the tile core's test doubles too): only a declared precision counts.
    with autocast(device, amp and getattr(model, "precision", "fp32") == "fp32"):
        y = model(x)
    if tuple(y.shape) != tuple(x.shape):
        raise ValueError(f"the model mapped a batch {tuple(x.shape)} to {tuple(y.shape)}; "
                         "render needs a model that keeps the shape (N, 3, H, W)")
    # ±inf becomes NaN here, so that the one check for broken outputs (grid.core.run_tiles)
    # sees it rather than a clamped, plausible-looking ±1.
    nan = float("nan")
    return y.float().nan_to_num_(nan=nan, posinf=nan, neginf=nan).clamp_(-1, 1).cpu().numpy()
