"""Loading models and running them on batches of tiles.

:func:`load_model` returns a :class:`Pix2PixModel`: the generator in inference mode
plus what render needs to use it correctly (the ground resolution it was trained at,
the tile multiple, an identity hash for caches). ``load_model()`` with no path loads
the default model shipped inside the package; nothing is downloaded.

Inference mode (see ``networks`` for the reasons): dropout off, and normalisation as
the checkpoint was trained: ``instance`` models normalise each tile by its own
statistics (the paper's test-time behaviour), ``batch`` models use their running
statistics. Either way a tile's output does not depend on the other tiles of its
batch, and the same tile always gives the same output.
"""

from __future__ import annotations

import hashlib
import os
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoints import Checkpoint, load_checkpoint
from .devices import autocast, resolve_device
from .errors import CheckpointError
from .networks import Generator

__all__ = ["DEFAULT_MODEL", "Pix2PixModel", "default_model_path", "load_model", "run_batch"]

#: File name of the default model inside the package's ``weights`` folder.
DEFAULT_MODEL = "default.pt"


def default_model_path() -> Path:
    return Path(str(resources.files("geo_pix2pix") / "weights" / DEFAULT_MODEL))


class Pix2PixModel(nn.Module):
    """A trained generator with the facts needed to apply it to georeferenced rasters."""

    def __init__(self, generator: Generator, checkpoint: Checkpoint | None = None,
                 identity: str = "") -> None:
        super().__init__()
        self.generator = generator.eval()
        self.checkpoint = checkpoint
        #: metres per pixel the model was trained at (None: unknown, never resample)
        self.ground_resolution = checkpoint.ground_resolution if checkpoint else None
        #: height and width of tiles must be multiples of this
        self.tile_multiple = generator.config.multiple
        #: content hash of the weights: changes whenever the model does
        self.identity = identity

    @property
    def provenance(self) -> dict:
        return dict(self.checkpoint.provenance) if self.checkpoint else {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.generator(x)

    def extra_repr(self) -> str:
        res = f"{self.ground_resolution:.3g} m/px" if self.ground_resolution else "unknown"
        return f"ground_resolution={res}, identity={self.identity[:12]}"


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_model(path: str | os.PathLike | None = None, device: str | torch.device | None = None) -> Pix2PixModel:
    """Load a checkpoint (``None``: the default model shipped in the package)."""
    if path is None:
        path = default_model_path()
        if not path.exists():
            raise CheckpointError(
                f"the default model {str(path)!r} is not installed: reinstall geo-pix2pix "
                "or pass a checkpoint with --weights"
            )
    path = Path(path)
    ckpt = load_checkpoint(path)
    model = Pix2PixModel(ckpt.build_generator(), ckpt, identity=_file_hash(path))
    return model.to(resolve_device(device)).eval()


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


#: Tiles per network evaluation. Convolution libraries (oneDNN, cuDNN) pick different
#: algorithms for different batch sizes, whose float results differ in the last bit
#: (measured: up to 2e-7, enough to flip a few uint8 values per tile). With a fixed
#: chunk, zero-padded when short, a tile's output is bit-identical whatever the
#: batch size asked for, its batch-mates, or its position in the batch.
COMPUTE_CHUNK = 8


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
    with autocast(device, amp):
        y = model(x)
    if tuple(y.shape) != tuple(x.shape):
        raise ValueError(f"the model mapped a batch {tuple(x.shape)} to {tuple(y.shape)}; "
                         "render needs a model that keeps the shape (N, 3, H, W)")
    return y.float().clamp_(-1, 1).cpu().numpy()
