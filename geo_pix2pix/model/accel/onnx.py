"""Optional: ONNX export and an onnxruntime backend (extra: ``pip install geo-pix2pix[onnx]``).

``geo-pix2pix export-onnx out.onnx [--weights model.pt]`` writes the inference engine
(:class:`engine.InferenceUNet`, float32, NCHW, any batch size) as an ONNX graph, with
what render needs to use it correctly in the file's metadata (ground resolution, tile
multiple, the source checkpoint's identity). ``--weights out.onnx`` then runs it with
onnxruntime's CPU execution provider wherever a checkpoint is accepted (render, tiles,
evaluate, the Python API).

It is not faster than the PyTorch engine through render's path on the CPUs measured
(``docs/performance.md``): an opt-in for machines where it measures faster.
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...errors import CheckpointError, OptionError
from ...io.atomic import replacing
from ..checkpoints import GROUND_RESOLUTION_RANGE, file_hash
from ..engine import InferenceUNet

__all__ = ["OnnxModel", "export_onnx", "is_onnx_path"]

OPSET = 17
_META = "geo_pix2pix."


def is_onnx_path(path: str | os.PathLike | None) -> bool:
    return path is not None and Path(path).suffix.lower() == ".onnx"


def export_onnx(model, dst: str | os.PathLike) -> Path:
    """Write ``model`` (a :class:`~geo_pix2pix.model.load.Pix2PixModel`) as ONNX, atomically."""
    try:
        import onnx
    except ImportError:
        raise OptionError("export-onnx needs the onnx package: pip install 'geo-pix2pix[onnx]'") from None
    dst = Path(dst)
    engine = InferenceUNet(copy.deepcopy(model.generator).cpu().eval(), channels_last=False)
    example = torch.zeros(1, 3, 256, 256)
    with replacing(dst) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript-based exporter announces its successor
            torch.onnx.export(engine, (example,), tmp, dynamo=False, opset_version=OPSET,
                              input_names=["map"], output_names=["aerial"],
                              dynamic_axes={"map": {0: "n", 2: "h", 3: "w"}, "aerial": {0: "n", 2: "h", 3: "w"}})
        graph = onnx.load(tmp)
        meta = {
            "format": "geo-pix2pix-onnx",
            "ground_resolution": "" if model.ground_resolution is None else repr(model.ground_resolution),
            "tile_multiple": str(model.tile_multiple),
            "source_identity": model.identity,
            "generator_config": repr(model.generator.config.to_dict()),
        }
        for key, value in meta.items():
            entry = graph.metadata_props.add()
            entry.key, entry.value = _META + key, value
        onnx.save(graph, tmp)
    return dst


def _session(path: Path):
    """An onnxruntime CPU session for ``path``; one-line errors for missing or foreign files."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise OptionError(f"--weights {str(path)!r} is an ONNX model: running it needs onnxruntime: "
                          "pip install 'geo-pix2pix[onnx]'") from None
    if not path.is_file():
        raise CheckpointError(f"weights file {str(path)!r} does not exist: check the path")
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own many kinds
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise CheckpointError(f"{str(path)!r} is not a readable ONNX model ({reason}): "
                              "write one with 'geo-pix2pix export-onnx'") from None


def _check_signature(session, path: Path) -> None:
    """One float32 input ``map`` and an output, both (N, C, H, W) with 3 channels where the
    file says: what export_onnx writes and what render feeds."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    problem = None
    if [i.name for i in inputs] != ["map"]:
        problem = f"its inputs are {[i.name for i in inputs]}, not the one input 'map'"
    elif inputs[0].type != "tensor(float)" or len(inputs[0].shape) != 4:
        problem = f"its input 'map' is {inputs[0].type} of shape {inputs[0].shape}, not float (N, 3, H, W)"
    elif not outputs or len(outputs[0].shape or ()) not in (0, 4):
        problem = f"its output is of shape {outputs[0].shape if outputs else None}, not (N, 3, H, W)"
    else:
        for tensor in (inputs[0], outputs[0]):
            shape = tensor.shape or []
            if len(shape) == 4 and isinstance(shape[1], int) and shape[1] != 3:
                problem = f"its {tensor.name!r} has {shape[1]} channels, not 3 (RGB)"
    if problem:
        raise CheckpointError(f"{str(path)!r} is an ONNX model but not a geo-pix2pix generator ({problem}): "
                              "write one with 'geo-pix2pix export-onnx'")


def _metadata(meta: dict, path: Path) -> tuple[float | None, int]:
    """The ground resolution and tile multiple from the file's metadata, checked."""
    lo, hi = GROUND_RESOLUTION_RANGE
    text = meta.get("ground_resolution", "")
    try:
        res = float(text) if text else None
        if res is not None and not lo <= res <= hi:
            raise ValueError(text)
        multiple = int(meta.get("tile_multiple", "256"))
        if not 1 <= multiple <= 65536 or multiple & (multiple - 1):
            raise ValueError(multiple)
    except ValueError:
        raise CheckpointError(
            f"{str(path)!r} has malformed geo-pix2pix metadata (ground_resolution {text!r}, tile_multiple "
            f"{meta.get('tile_multiple')!r}; expected metres per pixel from {lo:g} to {hi:g} or nothing, and "
            "a power of two): the file was edited: export it again with 'geo-pix2pix export-onnx'") from None
    return res, multiple


class OnnxModel(nn.Module):
    """An exported generator run by onnxruntime (CPU); used like a Pix2PixModel."""

    precision = "fp32"

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        path = Path(path)
        self.session = _session(path)
        meta = {k[len(_META):]: v for k, v in self.session.get_modelmeta().custom_metadata_map.items()
                if k.startswith(_META)}
        if meta.get("format") != "geo-pix2pix-onnx":
            raise CheckpointError(f"{str(path)!r} is an ONNX model but not one written by 'geo-pix2pix "
                                  "export-onnx' (no ground resolution or tile size in its metadata)")
        _check_signature(self.session, path)
        self.path = path
        self.ground_resolution, self.tile_multiple = _metadata(meta, path)
        self.identity = f"{file_hash(path)}-onnx"
        self.checkpoint = None
        self.eval()

    @property
    def provenance(self) -> dict:
        return {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            y = self.session.run(None, {"map": np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)})[0]
        except Exception as exc:  # onnxruntime's own kinds: a graph that cannot run on this input
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise CheckpointError(f"ONNX model {str(self.path)!r} failed on a batch {tuple(x.shape)} ({reason}): "
                                  "export it again with 'geo-pix2pix export-onnx'") from None
        if tuple(y.shape) != tuple(x.shape):
            raise CheckpointError(f"ONNX model {str(self.path)!r} mapped a batch {tuple(x.shape)} to "
                                  f"{tuple(y.shape)}; a generator keeps the shape (N, 3, H, W): export it again "
                                  "with 'geo-pix2pix export-onnx'")
        return torch.from_numpy(y)

    def __getstate__(self) -> dict:  # for --workers: each process opens its own session
        state = dict(self.__dict__)
        state.pop("session", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__dict__["session"] = _session(self.path)
