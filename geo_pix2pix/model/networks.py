"""The pix2pix networks: a U-Net generator and a 70×70 PatchGAN discriminator.

Isola, Zhu, Zhou, Efros, *Image-to-Image Translation with Conditional Adversarial
Networks*, CVPR 2017, section 3.2 and appendix 6.1.2; reference implementation
``junyanz/pytorch-CycleGAN-and-pix2pix`` (``models/networks.py``).

Notation from the paper: ``Ck`` is Convolution-Norm-ReLU with k filters, ``CDk`` the
same with 50 % dropout; all convolutions are 4×4 with stride 2.

- Generator encoder: C64-C128-C256-C512-C512-C512-C512-C512 (no norm on C64,
  LeakyReLU 0.2).
- Generator decoder: CD512-CD512-CD512-C512-C256-C128-C64 (ReLU), each output
  concatenated with the encoder activation of the same size, then a last
  transposed convolution to 3 channels and tanh.
- Discriminator: C64-C128-C256, then a stride-1 C512 and a stride-1 convolution to
  one channel: each output pixel judges a 70×70 patch of the (map, aerial) pair.

Deviations from the paper, each with its reason:

1. The innermost encoder layer (1×1 at 256×256 input) has no normalisation. A 1×1
   map has one value per channel: BatchNorm with batch 1 (what the paper trains
   with) and InstanceNorm both normalise it to zero, so the bottleneck would carry
   no information. The reference implementation drops it for the same reason.
2. The normalisation layer is injectable (``norm="batch" | "instance"``). The paper
   trains with batch 1 and runs BatchNorm at test time on the statistics of the
   test image itself; the paper notes that this *is* instance normalisation. Using
   ``InstanceNorm2d`` makes that behaviour explicit and keeps it when the batch is
   larger than 1, so that a tile's output never depends on the other tiles of its
   batch. See ``docs/model-card.md`` for the inference-mode measurements.
3. Dropout is not applied at inference (``model.eval()``): the paper keeps it as
   the only source of noise, but it makes output non-deterministic and makes
   overlapping tiles disagree, which shows as seams in a mosaic.

Opt-in recipe variants (issue 19). ``GeneratorConfig(upsample="resize")`` makes every
decoder layer a resize-convolution (Odena, Dumoulin, Olah, *Deconvolution and Checkerboard
Artifacts*, Distill 2016): nearest-neighbour upsampling by 2, then a 3 × 3 convolution.
Each input pixel then feeds the same number of output pixels through every weight, so the
decoder cannot paint the checkerboard that a free 4 × 4 transposed convolution learns. It
equals a 4 × 4, stride-2 transposed convolution whose 16 taps are sums of the 9 weights
(:class:`ResizeConv`), so it is computed as one (the paper's cost), and the inference
engines run it as the transposed convolution it is (:func:`as_conv_transpose`). And
``DiscriminatorConfig`` adds pix2pixHD's multi-scale discriminator (Wang,
Liu, Zhu, Tao, Kautz, Catanzaro, *High-Resolution Image Synthesis and Semantic
Manipulation with Conditional GANs*, CVPR 2018, section 3.2; ``NVIDIA/pix2pixHD``,
``models/networks.py``): ``DiscriminatorConfig(scales=S)`` judges the pair at S
resolutions; ``scales=1`` (the default) is the paper's network, weights and all; and
``DiscriminatorConfig(spectral_norm=True)`` normalises every convolution of D spectrally
(Miyato, Kataoka, Koyama, Yoshida, *Spectral Normalization for Generative Adversarial
Networks*, ICLR 2018).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Discriminator",
    "DiscriminatorConfig",
    "Generator",
    "GeneratorConfig",
    "ResizeConv",
    "as_conv_transpose",
    "conv_macs",
    "count_parameters",
    "gflop_per_tile",
    "init_weights",
    "receptive_field",
]


def _instance_norm(channels: int) -> nn.Module:
    # affine=True so that the network can learn the scale and shift that
    # BatchNorm would have; no running statistics: every image uses its own.
    return nn.InstanceNorm2d(channels, affine=True, track_running_stats=False)


#: The one place where a config string becomes a layer class.
NORM_LAYERS = {"batch": nn.BatchNorm2d, "instance": _instance_norm}


class ResizeConv(nn.Module):
    """Nearest-neighbour upsampling by 2, then a 3 × 3 convolution (padding 1), computed as
    the kernel-4, stride-2, padding-1 transposed convolution it equals.

    Output row ``2i`` sees upsampled rows ``2i - 1, 2i, 2i + 1``, which are input rows
    ``i - 1, i, i``; output row ``2i + 1`` sees input rows ``i, i, i + 1``. In the
    transposed convolution, row ``2i`` takes input ``i - 1`` through tap 3 and ``i``
    through tap 1; row ``2i + 1`` takes ``i`` through tap 2 and ``i + 1`` through tap 0.
    So, along each axis, tap 0 is kernel row 2, tap 1 rows 1 + 2, tap 2 rows 0 + 1 and
    tap 3 row 0 (:attr:`TAP_ROWS`); both paddings are zeros. ``weight`` is the 3 × 3
    kernel, laid out as a ``Conv2d``'s (C_out, C_in, 3, 3).
    """

    #: the 3 × 3 kernel rows (or columns) summed into each of the 4 taps
    TAP_ROWS = ((2,), (1, 2), (0, 1), (0,))

    def __init__(self, cin: int, cout: int, bias: bool = True) -> None:
        super().__init__()
        self.in_channels, self.out_channels = cin, cout
        self.weight = nn.Parameter(torch.empty(cout, cin, 3, 3))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)  # Conv2d's default; init_weights replaces it

    def transposed_weight(self) -> torch.Tensor:
        """The equivalent transposed convolution's weight, (C_in, C_out, 4, 4). Sums, not a
        matrix product: under autocast these stay in float32 until the convolution."""
        k = self.weight
        rows = torch.stack([sum(k[:, :, r] for r in taps) for taps in self.TAP_ROWS], dim=2)  # (.., 4, 3)
        taps = torch.stack([sum(rows[..., c] for c in cols) for cols in self.TAP_ROWS], dim=3)  # (.., 4, 4)
        return taps.transpose(0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(x, self.transposed_weight(), self.bias, stride=2, padding=1)

    @torch.no_grad()
    def as_conv_transpose(self) -> nn.ConvTranspose2d:
        """A ``ConvTranspose2d`` computing the same function (a copy)."""
        w = self.weight
        deconv = nn.ConvTranspose2d(self.in_channels, self.out_channels, 4, stride=2, padding=1,
                                    bias=self.bias is not None, device=w.device, dtype=w.dtype)
        deconv.weight.copy_(self.transposed_weight())
        if self.bias is not None:
            deconv.bias.copy_(self.bias)
        return deconv

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, bias={self.bias is not None}"


def as_conv_transpose(layer: nn.Module) -> nn.ConvTranspose2d:
    """A decoder layer (``Up.conv``, the head's first module) as a ``ConvTranspose2d``: what
    the inference engines take, whichever ``upsample`` the generator was built with."""
    return layer.as_conv_transpose() if isinstance(layer, ResizeConv) else layer


def _upsampler(kind: str, cin: int, cout: int, bias: bool) -> nn.Module:
    if kind == "resize":
        return ResizeConv(cin, cout, bias=bias)
    return nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=bias)


#: GeneratorConfig.upsample values: the paper's transposed convolutions, or resize-convolutions
UPSAMPLERS = ("deconv", "resize")


@dataclass(frozen=True)
class GeneratorConfig:
    """Shape of the U-Net generator. The defaults are the paper's network."""

    in_channels: int = 3
    out_channels: int = 3
    base_width: int = 64  # filters of the first encoder layer (C64 in the paper)
    num_downs: int = 8  # 2**8 = 256: a 256×256 tile reaches 1×1 in the bottleneck
    norm: str = "batch"  # "batch" (paper) or "instance" (paper's test-time behaviour)
    dropout: float = 0.5  # on the first three decoder layers, training only
    upsample: str = "deconv"  # decoder layers: "deconv" (paper) or "resize" (ResizeConv)

    def __post_init__(self) -> None:
        if self.norm not in NORM_LAYERS:
            raise ValueError(f"norm={self.norm!r} is not one of {sorted(NORM_LAYERS)}")
        if self.upsample not in UPSAMPLERS:
            raise ValueError(f"upsample={self.upsample!r} is not one of {', '.join(UPSAMPLERS)}")
        if self.num_downs < 5:
            raise ValueError(f"num_downs={self.num_downs} must be at least 5 (C64…C512)")
        if self.base_width < 1:
            raise ValueError(f"base_width={self.base_width} must be positive")

    @property
    def encoder_widths(self) -> list[int]:
        """Output channels of each encoder layer: 64, 128, 256, 512, 512, … ."""
        b = self.base_width
        return [b, 2 * b, 4 * b] + [8 * b] * (self.num_downs - 3)

    @property
    def multiple(self) -> int:
        """Input height and width must be a multiple of this."""
        return 2**self.num_downs

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.upsample == "deconv":
            # Left out at its default, so that such checkpoints stay as they were and older
            # geo-pix2pix versions (whose config has no ``upsample``) still read them.
            del d["upsample"]
        return d


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Shape of the PatchGAN discriminator. The defaults are the paper's 70×70 one."""

    in_channels: int = 6  # map (3) and aerial (3), concatenated
    base_width: int = 64
    norm: str = "batch"
    #: PatchGANs at 1, 1/2, 1/4, … of the resolution (pix2pixHD); 1 is the paper's single one
    scales: int = 1
    #: spectral normalisation of every convolution's weight (Miyato et al., ICLR 2018): D's
    #: slope bounded, so it cannot overpower G with ever larger logits
    spectral_norm: bool = False

    def __post_init__(self) -> None:
        if self.norm not in NORM_LAYERS:
            raise ValueError(f"norm={self.norm!r} is not one of {sorted(NORM_LAYERS)}")
        if not 1 <= self.scales <= 4:
            raise ValueError(f"scales={self.scales} must be from 1 to 4 (1: the paper's PatchGAN, pix2pixHD uses 2)")

    def to_dict(self) -> dict:
        d = asdict(self)
        # Left out at their defaults, so that such checkpoints stay as they were and older
        # geo-pix2pix versions (whose config has neither) still read them.
        for name, default in (("scales", 1), ("spectral_norm", False)):
            if d[name] == default:
                del d[name]
        return d


class Down(nn.Module):
    """Encoder block Ck: Conv(4, stride 2) → Norm → LeakyReLU(0.2)."""

    def __init__(self, cin: int, cout: int, norm_layer=None) -> None:
        super().__init__()
        # A convolution followed by a norm layer needs no bias: the norm removes it.
        self.conv = nn.Conv2d(cin, cout, 4, stride=2, padding=1, bias=norm_layer is None)
        self.norm = norm_layer(cout) if norm_layer is not None else nn.Identity()
        self.act = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class Up(nn.Module):
    """Decoder block Ck / CDk: ConvTranspose(4, stride 2) → Norm → [Dropout] → ReLU
    (``upsample="resize"``: a :class:`ResizeConv` in place of the transposed convolution)."""

    def __init__(self, cin: int, cout: int, norm_layer, dropout: float = 0.0, upsample: str = "deconv") -> None:
        super().__init__()
        self.conv = _upsampler(upsample, cin, cout, bias=False)
        self.norm = norm_layer(cout)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(self.norm(self.conv(x))))


class Generator(nn.Module):
    """U-Net generator mapping a map tile (N, 3, H, W) in [-1, 1] to an aerial tile.

    ``Generator()`` is the paper's network (54.4 M parameters at base width 64).
    H and W must be multiples of ``config.multiple`` (256 for the paper).
    """

    def __init__(self, config: GeneratorConfig | None = None, **overrides) -> None:
        super().__init__()
        if config is None:
            config = GeneratorConfig(**overrides)
        elif overrides:
            raise TypeError("pass either a GeneratorConfig or keyword overrides, not both")
        self.config = config
        norm_layer = NORM_LAYERS[config.norm]
        enc = config.encoder_widths  # e.g. [64, 128, 256, 512, 512, 512, 512, 512]

        downs = [Down(config.in_channels, enc[0], norm_layer=None)]  # C64: no norm
        for i in range(1, len(enc)):
            innermost = i == len(enc) - 1
            # Deviation 1 (module docstring): no norm on the 1×1 bottleneck.
            downs.append(Down(enc[i - 1], enc[i], None if innermost else norm_layer))
        self.downs = nn.ModuleList(downs)

        # Decoder: the i-th block's output is concatenated with encoder output
        # len(enc) - 2 - i, so its input is its own width plus that skip's width.
        ups = []
        cin = enc[-1]
        for i in range(len(enc) - 1):
            cout = enc[-2 - i]
            ups.append(Up(cin, cout, norm_layer, config.dropout if i < 3 else 0.0, config.upsample))
            cin = 2 * cout  # after concatenation with the skip of the same width
        self.ups = nn.ModuleList(ups)
        self.head = nn.Sequential(
            _upsampler(config.upsample, cin, config.out_channels, bias=True),
            nn.Tanh(),
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for down in self.downs:  # (N, 3, 256, 256) → … → (N, 512, 1, 1)
            x = down(x)
            skips.append(x)
        skips.pop()  # the bottleneck is not concatenated with itself
        for up in self.ups:  # (N, 512, 1, 1) → … → (N, 64, 128, 128)
            x = torch.cat([up(x), skips.pop()], dim=1)
        return self.head(x)  # (N, 3, 256, 256) in [-1, 1]


class Discriminator(nn.Module):
    """70×70 PatchGAN on the (map, aerial) pair: (N, 6, 256, 256) → (N, 1, 30, 30) logits.

    With ``config.scales = S > 1``, S − 1 more PatchGANs of the same shape (``coarser``)
    judge the pair average-pooled by 2, 4, … (pix2pixHD's multi-scale discriminator). At
    a coarser scale a 70×70 patch spans 140, 280, … pixels: those judge global structure,
    here whole blocks and the street layout, which the full-resolution one cannot see.
    :meth:`forward` stays the full-resolution logits; :meth:`scale_outputs` gives all scales.
    """

    def __init__(self, config: DiscriminatorConfig | None = None, **overrides) -> None:
        super().__init__()
        if config is None:
            config = DiscriminatorConfig(**overrides)
        elif overrides:
            raise TypeError("pass either a DiscriminatorConfig or keyword overrides, not both")
        self.config = config
        self.net = self._patchgan(config)
        # Empty at scales=1: no new state-dict keys, and the same weights from the same seed.
        self.coarser = nn.ModuleList(self._patchgan(config) for _ in range(config.scales - 1))
        init_weights(self)
        if config.spectral_norm:  # after the initialisation, which it then divides by σ
            for m in list(self.modules()):
                if isinstance(m, nn.Conv2d):
                    nn.utils.parametrizations.spectral_norm(m)

    @staticmethod
    def _patchgan(config: DiscriminatorConfig) -> nn.Sequential:
        norm_layer = NORM_LAYERS[config.norm]
        b = config.base_width
        return nn.Sequential(
            Down(config.in_channels, b, norm_layer=None),  # (N, 64, 128, 128)
            Down(b, 2 * b, norm_layer),  # (N, 128, 64, 64)
            Down(2 * b, 4 * b, norm_layer),  # (N, 256, 32, 32)
            nn.ZeroPad2d(1),
            nn.Conv2d(4 * b, 8 * b, 4, stride=1, bias=False),  # (N, 512, 31, 31)
            norm_layer(8 * b),
            nn.LeakyReLU(0.2, inplace=True),
            nn.ZeroPad2d(1),
            nn.Conv2d(8 * b, 1, 4, stride=1),  # (N, 1, 30, 30) logits
        )

    def forward(self, map_: torch.Tensor, aerial: torch.Tensor, *, scales: bool = False):
        """The full-resolution logits; ``scales=True``: :meth:`scale_outputs` (the trainer
        asks through ``forward`` so that a DistributedDataParallel wrapper syncs gradients)."""
        if scales:
            return self.scale_outputs(map_, aerial)
        return self.net(torch.cat([map_, aerial], dim=1))

    def scale_outputs(self, map_: torch.Tensor, aerial: torch.Tensor) -> list[list[torch.Tensor]]:
        """For each scale, finest first: the activation after each LeakyReLU, then the
        logits last (what pix2pixHD's feature-matching loss and GAN loss take)."""
        x = torch.cat([map_, aerial], dim=1)
        outputs = []
        for i, net in enumerate([self.net, *self.coarser]):
            if i:  # pix2pixHD's downsampling between scales
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            h, layers = x, []
            for layer in net:
                h = layer(h)
                if isinstance(layer, (Down, nn.LeakyReLU)):
                    layers.append(h)
            outputs.append([*layers, h])  # 4 activations, then the logits
        return outputs


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """The paper's initialisation: weights from N(0, 0.02), biases zero.

    Norm layers get scale N(1, 0.02) and shift 0, as the reference code does.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, ResizeConv)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)


def receptive_field(num_downs: int = 8, kernel: int = 4, stride: int = 2) -> int:
    """Receptive field, in input pixels, of one bottleneck unit of the encoder.

    r_l = r_{l-1} + (k - 1) · s^(l-1): for the paper's 8 layers this is 766 px,
    i.e. every output pixel of a 256 tile can see the whole tile. What limits a
    tile is therefore not the field but the border: pixels near a tile edge see
    reflected padding instead of real context, which is why tiles overlap.
    """
    return 1 + sum((kernel - 1) * stride**i for i in range(num_downs))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def conv_macs(gen_config: GeneratorConfig, size: int = 256) -> int:
    """Multiply-accumulates of one forward pass of the generator on a size² tile."""
    enc = gen_config.encoder_widths
    macs = 0
    cin, s = gen_config.in_channels, size
    for w in enc:
        s //= 2
        macs += cin * w * 16 * s * s
        cin = w
    for i in range(len(enc) - 1):
        cout = enc[-2 - i]
        s *= 2
        macs += cin * cout * 16 * (s // 2) ** 2  # transposed conv: per input pixel
        cin = 2 * cout
    macs += cin * gen_config.out_channels * 16 * (size // 2) ** 2
    return macs


def gflop_per_tile(gen_config: GeneratorConfig, size: int = 256) -> float:
    """Floating point operations (2 per multiply-accumulate) of one tile, in GFLOP."""
    return 2 * conv_macs(gen_config, size) / 1e9

