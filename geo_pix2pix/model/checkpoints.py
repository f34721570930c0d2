"""Self-describing checkpoints.

A checkpoint is a plain dict of tensors, strings and numbers, so that it loads with
``torch.load(path, weights_only=True)`` (no pickled code runs). It stores what is
needed to rebuild the networks and to use them correctly, as nanoGPT stores its
``model_args`` beside the weights:

.. code-block:: text

    format            "geo-pix2pix-checkpoint"
    format_version    1, or 2 when weights are stored as int8 or the generator has
                      resize-convolutions (older readers refuse it)
    library_version   geo_pix2pix.__version__ that wrote it
    generator         {"config": GeneratorConfig fields, "state_dict": {...},
                       "scales": {...} only for int8 storage}
    discriminator     optional, same layout (needed to continue GAN training)
    ground_resolution metres per pixel the model was trained at (None: unknown)
    inference         {"norm_mode": ..., "dropout": false}: how the model is run
    provenance        free-form str/number dict: data, recipe, steps, wall time
    training          optional: step, optimiser states, RNG state (for --resume)
    int8              optional: activation ranges observed on map tiles, for the
                      reduced-precision path (see ``quantize``)

Weights may be stored in float16, or as int8 with one float32 scale per slice of the
first dimension (``storage="int8"``), to keep the shipped default model small; either is
turned back into float32 on load, so everything past loading sees the same networks.
int8 storage moves a generator's output less than bfloat16 inference does (measured in
docs/model-card.md), at half the size of float16.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..io.atomic import replacing
from .memory import meta_module
from .networks import Discriminator, DiscriminatorConfig, Generator, GeneratorConfig

__all__ = ["Checkpoint", "export_checkpoint", "file_hash", "load_checkpoint", "save_checkpoint", "FORMAT", "STORAGES",
           "FORMAT_VERSION"]

FORMAT = "geo-pix2pix-checkpoint"
FORMAT_VERSION = 2
#: How a checkpoint's floating-point weights may be stored (see the module docstring).
STORAGES = ("float32", "float16", "int8")


@dataclass
class Checkpoint:
    """The parsed content of a checkpoint file."""

    generator_config: GeneratorConfig
    generator_state: dict[str, torch.Tensor]
    ground_resolution: float | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    discriminator_config: DiscriminatorConfig | None = None
    discriminator_state: dict[str, torch.Tensor] | None = None
    training: dict[str, Any] | None = None
    int8: dict[str, Any] | None = None
    library_version: str = ""
    path: str | None = None
    #: How the file stored the weights: one of :data:`STORAGES`.
    storage: str = "float32"

    def build_generator(self) -> Generator:
        return _build(Generator, self.generator_config, self.generator_state, self.path, "generator")

    def build_discriminator(self) -> Discriminator | None:
        if self.discriminator_config is None or self.discriminator_state is None:
            return None
        return _build(Discriminator, self.discriminator_config, self.discriminator_state, self.path,
                      "discriminator")


def _build(cls, config, state: dict, path: str | None, what: str):
    """The network ``cls(config)`` with the file's weights, checked against their shapes
    before it is built: a config that does not match its weights (an edited file asking
    for a network of terabytes) is refused without allocating it."""
    name = path or "checkpoint"

    def refuse(detail: str) -> CheckpointError:
        return CheckpointError(
            f"{name}: the {what} weights do not fit the network described in the same file "
            f"({detail}); the file is from another architecture or was edited: use a "
            "checkpoint written by geo-pix2pix train")

    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise refuse("its state_dict is not a mapping of names to tensors")
    levels = getattr(config, "num_downs", 0)
    if levels > len(state):  # every level has weights: do not even lay out a deeper network
        raise refuse(f"num_downs={levels} levels, but the file holds {len(state)} tensors")
    try:
        skeleton = meta_module(lambda: cls(config))
    except (TypeError, ValueError, RuntimeError) as exc:
        raise refuse(f"{config} cannot be built: {_one_line(exc)}") from None
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    wrong = [k for k in expected if k in found and expected[k] != found[k]]
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    if wrong:
        k = wrong[0]
        raise refuse(f"{k} is {list(found[k])} in the file, but {config} needs {list(expected[k])}"
                     + (f"; {len(wrong) - 1} more tensors differ" if len(wrong) > 1 else ""))
    if missing or unexpected:
        parts = [f"{label}: {', '.join(keys[:3])}{f' and {len(keys) - 3} more' if len(keys) > 3 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
        raise refuse("; ".join(parts))
    net = cls(config)  # now known to be exactly as large as the weights in the file
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
    return net


#: Ground resolutions a checkpoint may state, metres per pixel: a millimetre to 100 km.
GROUND_RESOLUTION_RANGE = (1e-3, 1e5)


def _ground_resolution(value: Any, path: Path) -> float | None:
    """The checkpoint's ground resolution, checked: None (unknown) or a plausible number."""
    lo, hi = GROUND_RESOLUTION_RANGE
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and lo <= value <= hi:
        return float(value)
    raise CheckpointError(
        f"{str(path)!r} states a ground_resolution of {value!r}, which is not a number of metres per "
        f"pixel between {lo:g} and {hi:g}; the file was edited or written by other software: set its "
        "'ground_resolution' entry to the training data's metres per pixel, or to None (torch.load, "
        "torch.save)")


def _load_reason(exc: BaseException) -> str:
    """torch.load's reason, whole, on one line; the exception's kind where it gives none."""
    if str(exc).strip():
        return _one_line(exc)
    return "EOFError: the file ended early" if isinstance(exc, EOFError) else type(exc).__name__


def _one_line(exc: BaseException) -> str:
    """An exception's whole message on one line (PyTorch's run over several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _pack_state(state: dict[str, torch.Tensor], storage: str) -> dict[str, Any]:
    """``state`` as the file stores it: ``{"state_dict": ...}``, plus ``"scales"`` for int8.

    int8 keeps matrices and kernels (two or more dimensions) as round(w / s) with one
    scale s = max|w| / 127 per slice of the first dimension (an output channel of a
    convolution, an input channel of a transposed one), the granularity of weight-only
    8-bit formats; vectors (biases, norm affines) stay float16: they are tiny.
    """
    if storage == "float32":
        return {"state_dict": state}
    if storage == "float16":
        return {"state_dict": {k: v.half() if v.is_floating_point() else v for k, v in state.items()}}
    packed, scales = {}, {}
    for k, v in state.items():
        if v.is_floating_point() and v.dim() >= 2 and v.numel():
            w = v.float()
            s = w.flatten(1).abs().amax(1).clamp_min(torch.finfo(torch.float32).tiny) / 127
            packed[k] = torch.round(w / s.view(-1, *[1] * (w.dim() - 1))).clamp(-127, 127).to(torch.int8)
            scales[k] = s
        else:
            packed[k] = v.half() if v.is_floating_point() else v
    return {"state_dict": packed, "scales": scales}


def _unpack_state(entry: dict, path: Path, what: str) -> tuple[dict[str, torch.Tensor], str]:
    """The float32 state dict of a stored ``entry`` and how it was stored."""
    state, scales = entry["state_dict"], entry.get("scales")
    if not isinstance(state, dict) or not isinstance(scales, (dict, type(None))):
        raise TypeError(f"the {what} state_dict or scales are not mappings")
    if scales is None:
        floats = [v.dtype for v in state.values() if isinstance(v, torch.Tensor) and v.is_floating_point()]
        storage = "float16" if floats and all(d == torch.float16 for d in floats) else "float32"
        return state, storage
    out = dict(state)
    for k, s in scales.items():
        q = state.get(k)
        if not (isinstance(q, torch.Tensor) and q.dtype == torch.int8 and isinstance(s, torch.Tensor)
                and s.dim() == 1 and q.dim() >= 2 and s.shape[0] == q.shape[0]):
            raise CheckpointError(
                f"{str(path)!r}: the {what}'s int8 weight {k!r} does not match its scales; the file was "
                "edited or is damaged: re-export it with geo_pix2pix.model.checkpoints.export_checkpoint")
        out[k] = q.float() * s.float().view(-1, *[1] * (q.dim() - 1))
    left = [k for k, v in out.items() if isinstance(v, torch.Tensor) and v.dtype == torch.int8]
    if left:  # an int8 tensor without a scale would be read as whole numbers: refuse it
        raise CheckpointError(
            f"{str(path)!r}: the {what}'s int8 weight {left[0]!r} has no scale; the file was edited or is "
            "damaged: re-export it with geo_pix2pix.model.checkpoints.export_checkpoint")
    return out, "int8"


def save_checkpoint(
    path: str | os.PathLike,
    generator: Generator,
    *,
    ground_resolution: float | None = None,
    provenance: dict[str, Any] | None = None,
    discriminator: Discriminator | None = None,
    training: dict[str, Any] | None = None,
    int8: dict[str, Any] | None = None,
    storage: str = "float32",
) -> Path:
    """Write a checkpoint atomically (temporary file in the same folder, then rename).

    ``storage`` is how the weights are kept in the file, one of :data:`STORAGES`;
    ``int8`` is the activation calibration of the int8 inference path, not a storage.
    """
    from .._version import __version__

    if storage not in STORAGES:
        raise ValueError(f"storage={storage!r}: use one of {', '.join(STORAGES)}")

    def pack(net):
        state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        return {"config": net.config.to_dict(), **_pack_state(state, storage)}

    payload: dict[str, Any] = {
        "format": FORMAT,
        # Version 1 readers would load int8 weights as whole numbers, and cannot build a
        # resize-convolution generator: only such files say 2.
        "format_version": 2 if storage == "int8" or generator.config.upsample != "deconv" else 1,
        "library_version": __version__,
        "generator": pack(generator),
        "ground_resolution": None if ground_resolution is None else float(ground_resolution),
        "inference": {"norm": generator.config.norm, "dropout": False},
        "provenance": dict(provenance or {}),
    }
    if discriminator is not None:
        payload["discriminator"] = pack(discriminator)
    if training is not None:
        payload["training"] = training
    if int8 is not None:
        payload["int8"] = int8
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        torch.save(payload, tmp)
    return path


def file_hash(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes: a model's identity in caches and output tags."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read and validate a checkpoint; every failure is a one-line :class:`CheckpointError`."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"weights file {str(path)!r} does not exist: check the path")
    if path.is_dir():
        raise CheckpointError(f"weights file {str(path)!r} is a directory: give a .pt file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for bad files
        raise CheckpointError(
            f"{str(path)!r} is not a readable geo-pix2pix checkpoint ({_load_reason(exc)}); "
            "the file is corrupt, truncated or not a PyTorch file: train one with "
            "'geo-pix2pix train' or omit the weights to use the default model"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{str(path)!r} is a PyTorch file but not a geo-pix2pix checkpoint (no "
            f"format={FORMAT!r} entry): bare state dicts carry no network config; "
            "use a checkpoint written by geo-pix2pix train"
        )
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{str(path)!r} has checkpoint format version {version!r}; this geo-pix2pix "
            f"reads up to version {FORMAT_VERSION}: upgrade geo-pix2pix"
        )
    ground_resolution = _ground_resolution(payload.get("ground_resolution"), path)
    try:
        gen = payload["generator"]
        gconf = GeneratorConfig(**gen["config"])
        gstate, storage = _unpack_state(gen, path, "generator")
        dconf = dstate = None
        if "discriminator" in payload:
            dconf = DiscriminatorConfig(**payload["discriminator"]["config"])
            dstate, _ = _unpack_state(payload["discriminator"], path, "discriminator")
        ckpt = Checkpoint(
            generator_config=gconf,
            generator_state=gstate,
            ground_resolution=ground_resolution,
            provenance=dict(payload.get("provenance") or {}),
            discriminator_config=dconf,
            discriminator_state=dstate,
            training=payload.get("training"),
            int8=payload.get("int8"),
            library_version=str(payload.get("library_version", "")),
            path=str(path),
            storage=storage,
        )
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{str(path)!r} is a geo-pix2pix checkpoint with a malformed network "
            f"description ({exc}): re-export it with 'geo-pix2pix train'"
        ) from None
    return ckpt


def export_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    storage: str | None = None,
    keep_discriminator: bool = True,
    ground_resolution: float | None = None,
    provenance: dict[str, Any] | None = None,
    int8: dict[str, Any] | None = None,
) -> Path:
    """Write a slim copy of ``src`` for shipping: no optimiser state, compact weights.

    ``storage`` defaults to that of ``src`` when it is compact (a calibrated copy of
    an int8-stored file stays int8) and to float16 otherwise. The discriminator is kept
    by default (it is small) so that training can be continued from the shipped file;
    ``ground_resolution`` and ``provenance`` entries override those of ``src``; so does
    ``int8`` (calibration from :mod:`accel.int8`), which is otherwise carried over.
    """
    ckpt = load_checkpoint(src)
    prov = dict(ckpt.provenance)
    prov.update(provenance or {})
    return save_checkpoint(
        dst,
        ckpt.build_generator(),
        discriminator=ckpt.build_discriminator() if keep_discriminator else None,
        ground_resolution=ground_resolution if ground_resolution is not None else ckpt.ground_resolution,
        provenance=prov,
        int8=int8 if int8 is not None else ckpt.int8,
        storage=storage or (ckpt.storage if ckpt.storage != "float32" else "float16"),
    )
