"""Optional: int8 CPU inference, post-training static quantisation (``torch.ao``'s FX API).

``--precision int8`` quantises the engine (:class:`engine.InferenceUNet`, channels-last,
sub-pixel decoder) for the x86 backend: weights int8 per output channel, activations
uint8 per tensor with ranges fixed in advance, so no tile depends on its batch-mates.
:func:`calibrate` observes the ranges on map tiles (``geo-pix2pix calibrate`` stores them
in the checkpoint; the default model has them); :func:`quantize` converts with them.
Speed and quality: ``docs/performance.md``, ``docs/model-card.md``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from ...errors import CheckpointError, DeviceError
from ..engine import ChannelsLast, InferenceUNet, ParityInterleave
from ..networks import Generator

__all__ = ["BACKEND", "calibrate", "quantize"]

log = logging.getLogger(__name__)

#: Quantised kernels used: fbgemm through PyTorch's "x86" engine (AVX2 and up).
BACKEND = "x86"
#: Version of the stored calibration layout (2: channels-last graph, float interleave;
#: 3: an NCHW input to every InstanceNorm, which adds observers).
CALIBRATION_FORMAT = 3
_EXAMPLE_SHAPE = (1, 3, 256, 256)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torch.ao.quantization warns that it is deprecated in favour of torchao, on every
    call; the FX path is what this torch ships, so keep the user's console clean."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.ao\..*")
        yield


@contextlib.contextmanager
def _backend() -> Iterator[None]:
    """PyTorch's quantised engine set to :data:`BACKEND` while weights are packed, and set
    back after: the caller's process keeps its own setting."""
    if BACKEND not in torch.backends.quantized.supported_engines:
        raise DeviceError(
            f"int8 inference needs PyTorch's {BACKEND!r} quantised engine, which this build "
            f"(torch {torch.__version__}) lacks: use --precision fp32"
        )
    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = BACKEND
    try:
        yield
    finally:
        torch.backends.quantized.engine = before


#: Layers kept in float32. The first two encoder layers see the map's flat colour
#: fields, where the difference between two map colours is a few 8-bit steps; each
#: alone, quantised, moved outputs by 0.06 on [-1, 1] (the next layers by 0.01-0.02).
#: They are 5 % of the default model's multiply-adds.
FLOAT_LAYERS = ("downs.0", "downs.1")


class _Contiguous(nn.Module):
    """``x.contiguous()``: an NCHW copy of a channels-last tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous()


def _qconfig_mapping():
    from torch.ao.quantization import HistogramObserver, PerChannelMinMaxObserver, QConfig, QConfigMapping

    # Full 8-bit activations (not the x86 default's 7 bits): half the output error on
    # the validation split. Weights int8 per output channel (hence SubPixelDeconv: a
    # transposed convolution can only be quantised per tensor, which lost the picture).
    qconfig = QConfig(
        activation=HistogramObserver.with_args(reduce_range=False),
        weight=PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric),
    )
    mapping = QConfigMapping().set_global(qconfig)
    for name in FLOAT_LAYERS:
        mapping = mapping.set_module_name(name, None)
    # Float, too: the conversion of the input to channels-last (quantised, it would
    # quantise the map itself before the float layers), and the interleave after each
    # sub-pixel convolution: dequantise once, two float stacks, quantise once. Quantised,
    # each stack requantises through a quantised concatenation, and the four parities
    # got four scales: 30 % of the default model's int8 time, measured.
    return mapping.set_object_type(ChannelsLast, None).set_object_type(ParityInterleave, None)


def _prepared(gen: Generator) -> nn.Module:
    """The float engine with observers inserted (FX graph mode)."""
    from torch.ao.quantization.quantize_fx import prepare_fx

    # Channels-last throughout: fbgemm's convolutions take NHWC (an NCHW input is copied
    # to NHWC first) and a quantised concatenation of NHWC tensors is much faster than of
    # NCHW ones (docs/performance.md, "Session 3: a channels-last int8 graph"). Every
    # transposed convolution as a SubPixelDeconv, an ordinary convolution.
    engine = InferenceUNet(copy.deepcopy(gen).cpu().float().eval(), channels_last=True, subpixel_decoder=True)
    for m in engine.modules():
        if isinstance(m, (nn.ReLU, nn.LeakyReLU)):
            m.inplace = False  # quantised activations cannot work in place
    # PyTorch's quantised InstanceNorm is exact only on an NCHW input (torch 2.13,
    # fbgemm). On a channels-last batch of 2 or more tiles it rounds a few outputs one
    # step off, so a tile's int8 output depended on its batch-mates; at 2 × 2 and 4 × 4 px
    # it also read memory it never wrote, changing from run to run. Every quantised
    # InstanceNorm gets an NCHW copy of its input (figures and cost: docs/performance.md,
    # "Session 12: every quantised InstanceNorm gets an NCHW input").
    for stack in ("downs", "ups"):
        for i, block in enumerate(getattr(engine, stack)):
            if f"{stack}.{i}" not in FLOAT_LAYERS and isinstance(block.norm, nn.InstanceNorm2d):
                block.norm = nn.Sequential(_Contiguous(), block.norm)
    return prepare_fx(engine, _qconfig_mapping(), example_inputs=(torch.zeros(_EXAMPLE_SHAPE),))


def _observer_state(prepared: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in prepared.state_dict().items() if "activation_post_process" in k}


@torch.no_grad()
def calibrate(gen: Generator, batches: Iterable[np.ndarray]) -> dict[str, Any]:
    """Observe activation ranges on map tiles: ``batches`` of uint8 (N, 3, 256, 256).

    Returns the checkpoint's ``int8`` entry. Use tiles that look like what the model
    will render (the same kind of map). For the default model, the 982 tiles of its
    training split kept the validation SSIM within 0.0026 of fp32 (256 tiles: 0.0054, before the
    2 × 2 InstanceNorm fix).
    """
    with _quiet(), _backend():
        prepared = _prepared(gen)
        tiles = 0
        for batch in batches:
            x = torch.from_numpy(np.ascontiguousarray(batch)).float().div_(127.5).sub_(1.0)
            prepared(x)
            tiles += x.shape[0]
    if tiles == 0:
        raise ValueError("calibration needs at least one map tile")
    return {"format": CALIBRATION_FORMAT, "backend": BACKEND, "tiles": tiles,
            "observers": _observer_state(prepared)}


@torch.no_grad()
def quantize(gen: Generator, calibration: dict[str, Any] | None, source: str = "checkpoint") -> nn.Module:
    """The int8 engine for ``gen``, from a stored calibration (see :func:`calibrate`)."""
    if not calibration:
        raise CheckpointError(
            f"{source} holds no int8 calibration: run 'geo-pix2pix calibrate MAP.tif -w {source} "
            "-o CALIBRATED.pt' on maps like those you render, or use --precision fp32"
        )
    again = (f"run 'geo-pix2pix calibrate MAP.tif -w {source} -o CALIBRATED.pt' again on maps like those "
             "you render, or use --precision fp32")
    if calibration.get("format") != CALIBRATION_FORMAT or calibration.get("backend") != BACKEND:
        raise CheckpointError(
            f"{source}: its int8 calibration (format {calibration.get('format')!r}, backend "
            f"{calibration.get('backend')!r}) is not one this geo-pix2pix reads (format {CALIBRATION_FORMAT}, "
            f"backend {BACKEND!r}): {again}"
        )
    from torch.ao.quantization.quantize_fx import convert_fx

    with _quiet(), _backend():
        prepared = _prepared(gen)
        stored = calibration["observers"]
        expected = set(_observer_state(prepared))
        if set(stored) != expected:
            raise CheckpointError(
                f"{source}: its int8 calibration was made for another network "
                f"({len(stored)} observers, this one has {len(expected)}): {again}"
            )
        prepared.load_state_dict(stored, strict=False)
        qmodel = convert_fx(prepared)
    return qmodel.eval()
