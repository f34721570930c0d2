"""The structure score's judge: a small segmentation network trained on real aerials.

pix2pix (Isola et al., "Image-to-Image Translation with Conditional Adversarial
Networks", CVPR 2017, section 4.1) scores labels → photo models with an "FCN-score":
an off-the-shelf semantic segmenter (FCN-8s, trained on real Cityscapes photos)
segments the generated photos, and its per-pixel accuracy, per-class accuracy and
class IoU against the input labels say how recognisable the generated scene is; the
same segmenter on the real photos gives the ceiling. Here the labels are the map's
classes (:data:`regions.CLASSES`: other, road, water, green, read by
:func:`regions.map_classes`), and the structure score is mIoU(generated) / mIoU(real),
1.0 = as much of the map's structure as a real photo shows.

What differs from the paper, and why:

- The segmenter is not off the shelf (there is none for these classes): :class:`JudgeNet`
  is trained here, on the real aerials of the evaluation's *training* split only, so
  it never saw the scored places. It is a small U-Net at output stride 2 (four
  stride-2 stages of 16-32-64-128 channels, 0.44 M parameters, logits upsampled
  bilinearly to 128 × 128) rather than FCN-8s: it has to train in a few minutes on
  a 2-core CPU.
- Images are judged at 128 × 128 (the 256 × 256 evaluation images resized, PIL bicubic
  with antialiasing; labels are the map shrunk by nearest neighbour, then classified).
- Cross-entropy is weighted by 1/sqrt(class frequency): mIoU weighs the four classes
  equally while roads, water and green are 10-18 % of the pixels, and a short run
  without weights learns them last (``docs/model-card.md`` has the comparison).
- mIoU is over the classes present in the scored tiles' maps, from one confusion
  matrix of the whole scored set (the paper's class IoU is also set-wide).

Training is deterministic for a recipe on one machine (fixed seed, own RNG, a fixed
number of steps). Judges are cached in ``$XDG_CACHE_HOME/geo-pix2pix/judges/``
(``~/.cache/...`` by default), keyed by a digest of the exact training images and
labels and of the recipe: every model evaluated on the same data and split is judged
by the same network, so its scores stay comparable.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import OutputPathError
from ..train import regions

__all__ = ["DEFAULT_RECIPE", "Confusion", "JudgeNet", "JudgeRecipe", "JudgeSet", "default_cache_dir", "judge_for",
           "segment", "train_judge"]

log = logging.getLogger(__name__)

NUM_CLASSES = len(regions.CLASSES)
ROAD = regions.CLASSES.index("road")

StepCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class JudgeRecipe:
    """Everything that decides what judge is trained (part of the cache key)."""

    size: int = 128  # judged images are size × size
    widths: tuple[int, ...] = (16, 32, 64, 128)  # channels per stage, first at size / 2
    steps: int = 1000  # optimiser steps
    batch_size: int = 16
    lr: float = 3e-3  # AdamW peak, cosine decay to zero after a short warm-up
    weight_decay: float = 1e-4
    class_weighted: bool = True  # cross-entropy weights 1/sqrt(frequency)
    seed: int = 0
    version: int = 1  # bump when the code changes what a recipe trains


#: The recipe ``geo-pix2pix evaluate`` trains its judges with.
DEFAULT_RECIPE = JudgeRecipe()


def _cbr(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True)]


class JudgeNet(nn.Module):
    """U-Net at output stride 2: (N, 3, S, S) in [-1, 1] → (N, classes, S, S) logits."""

    def __init__(self, widths: tuple[int, ...] = JudgeRecipe.widths, classes: int = NUM_CLASSES) -> None:
        super().__init__()
        ins = (3, *widths[:-1])
        # Each stage halves the size: S/2, S/4, ... (a full-resolution stage costs as
        # much as all the others together and thin roads survive at S/2).
        self.down = nn.ModuleList(nn.Sequential(*_cbr(i, o, 2), *_cbr(o, o)) for i, o in zip(ins, widths, strict=True))
        self.up = nn.ModuleList(nn.Sequential(*_cbr(widths[k + 1] + widths[k], widths[k]))
                                for k in reversed(range(len(widths) - 1)))
        self.head = nn.Conv2d(widths[0], classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        skips = []
        for stage in self.down:
            x = stage(x)  # (N, widths[k], S / 2^(k+1), S / 2^(k+1))
            skips.append(x)
        skips.pop()
        for stage in self.up:
            skip = skips.pop()
            # Nearest, not bilinear: the 3 × 3 convolution after it smooths anyway, and
            # bilinear's backward pass is slow on CPUs.
            x = stage(torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="nearest"), skip], 1))
        return F.interpolate(self.head(x), size=size, mode="bilinear", align_corners=False)  # (N, C, S, S)


def judge_image(aerial: np.ndarray, size: int) -> np.ndarray:
    """An aerial (H, W, 3) uint8 as the judge sees it: size × size, PIL bicubic."""
    from .evaluation import resize  # evaluate imports this module

    return resize(aerial, size)


def judge_labels(map_rgb: np.ndarray, size: int) -> np.ndarray:
    """The map's classes at size × size: nearest-neighbour shrink (palette colours kept)."""
    return regions.map_classes(regions._shrink(np.ascontiguousarray(map_rgb), size))


class JudgeSet:
    """The judge's training images and labels, and a digest of both (the cache key)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.images: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self._hash = hashlib.sha256()

    def add(self, map_rgb: np.ndarray, aerial: np.ndarray) -> None:
        image, labels = judge_image(aerial, self.size), judge_labels(map_rgb, self.size)
        self.images.append(image)
        self.labels.append(labels)
        self._hash.update(image.tobytes())
        self._hash.update(labels.tobytes())

    def __len__(self) -> int:
        return len(self.images)

    def key(self, recipe: JudgeRecipe) -> str:
        h = self._hash.copy()
        h.update(json.dumps(asdict(recipe), sort_keys=True).encode())
        return h.hexdigest()


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread, then restore the caller's setting.

    The judge's convolutions are too small to gain much from more threads, one thread
    makes its arithmetic independent of the machine's thread count, and on a busy
    machine OpenMP threads waiting for each other cost far more than they save
    (``docs/model-card.md``).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _to_input(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x.contiguous(memory_format=torch.channels_last)  # as in training


def class_weights(labels: np.ndarray) -> torch.Tensor:
    """1/sqrt(frequency), scaled so that the mean weight per pixel is 1; absent classes 0."""
    freq = np.bincount(labels.ravel(), minlength=NUM_CLASSES).astype(np.float64)
    freq /= max(freq.sum(), 1)
    w = np.where(freq > 0, 1 / np.sqrt(np.maximum(freq, 1e-12)), 0.0)
    return torch.tensor(w / max((w * freq).sum(), 1e-12), dtype=torch.float32)


def _dihedral(x: torch.Tensor, y: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample i turned by k[i] % 4 quarter turns, mirrored when k[i] >= 4."""
    xs, ys = [], []
    for xi, yi, ki in zip(x, y, k.tolist(), strict=True):
        if ki >= 4:
            xi, yi = xi.flip(-1), yi.flip(-1)
        xs.append(torch.rot90(xi, ki % 4, (-2, -1)))
        ys.append(torch.rot90(yi, ki % 4, (-2, -1)))
    return torch.stack(xs), torch.stack(ys)


def train_judge(images: np.ndarray, labels: np.ndarray, recipe: JudgeRecipe = DEFAULT_RECIPE,
                step_callback: StepCallback | None = None) -> JudgeNet:
    """Train a judge on aerials (N, S, S, 3) uint8 and their map classes (N, S, S).

    Deterministic for a recipe on one machine; the global RNG is left as it was.
    """
    if len(images) == 0:
        raise ValueError("no training images for the judge")
    with _one_thread():
        return _train(images, labels, recipe, step_callback)


def _train(images: np.ndarray, labels: np.ndarray, recipe: JudgeRecipe,
           step_callback: StepCallback | None) -> JudgeNet:
    gen = torch.Generator().manual_seed(recipe.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        net = JudgeNet(recipe.widths)
    weights = class_weights(labels) if recipe.class_weighted else None
    opt = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    warm = max(1, recipe.steps // 20)
    net = net.to(memory_format=torch.channels_last)  # faster convolutions on CPUs
    x_all = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)  # (N, 3, S, S) uint8
    y_all = torch.from_numpy(labels.astype(np.int64))
    order = torch.randperm(len(images), generator=gen)
    at = 0
    net.train()
    for step in range(recipe.steps):
        idx = []
        while len(idx) < recipe.batch_size:  # epochs in a fresh order each, batches cross them
            if at == len(order):
                order, at = torch.randperm(len(images), generator=gen), 0
            take = min(recipe.batch_size - len(idx), len(order) - at)
            idx += order[at : at + take].tolist()
            at += take
        x, y = _dihedral(x_all[idx], y_all[idx], torch.randint(0, 8, (len(idx),), generator=gen))
        x = (x.float() / 127.5 - 1.0).contiguous(memory_format=torch.channels_last)
        for group in opt.param_groups:
            group["lr"] = recipe.lr * min(1.0, (step + 1) / warm) * 0.5 * (1 + math.cos(math.pi * step / recipe.steps))
        loss = F.cross_entropy(net(x), y, weight=weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step_callback is not None:
            step_callback(step + 1, recipe.steps)
    return net.eval()


@torch.no_grad()
def segment(net: JudgeNet, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Class index (N, S, S) uint8 of each pixel of judge-sized aerials (N, S, S, 3) uint8."""
    net.eval()
    with _one_thread():
        out = [net(_to_input(images[i : i + batch_size])).argmax(1).to(torch.uint8).numpy()
               for i in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, *images.shape[1:3]), np.uint8)


class Confusion:
    """Confusion matrix (true class × predicted class) accumulated over a set of tiles."""

    def __init__(self) -> None:
        self.matrix = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)

    def add(self, predicted: np.ndarray, truth: np.ndarray) -> None:
        flat = truth.astype(np.int64).ravel() * NUM_CLASSES + predicted.astype(np.int64).ravel()
        self.matrix += np.bincount(flat, minlength=NUM_CLASSES**2).reshape(NUM_CLASSES, NUM_CLASSES)

    def iou(self) -> np.ndarray:
        """Per-class IoU; NaN for a class that is neither in the truth nor predicted."""
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / union, np.nan)

    def present(self) -> np.ndarray:
        """Classes that occur in the truth."""
        return self.matrix.sum(1) > 0

    def miou(self) -> float:
        """Mean IoU over the classes present in the truth (NaN if there is none)."""
        present = self.present()
        return float(self.iou()[present].mean()) if present.any() else float("nan")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/geo-pix2pix/judges`` (``~/.cache/geo-pix2pix/judges`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "geo-pix2pix" / "judges"


@dataclass(frozen=True)
class JudgeInfo:
    """Where a judge came from: its cache file, whether this call trained it, and how long that took."""

    path: Path
    trained: bool
    train_seconds: float  # when it was trained (now or by the call that cached it): wall clock
    train_cpu_seconds: float  # and CPU time of the process
    train_tiles: int


def _load(path: Path, recipe: JudgeRecipe) -> tuple[JudgeNet, dict] | None:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        net = JudgeNet(tuple(blob["recipe"]["widths"]))
        net.load_state_dict(blob["state_dict"])
    except FileNotFoundError:
        return None
    except Exception as exc:  # a torn or foreign file: train again and replace it
        log.warning("judge cache %s is unreadable (%s): training a new judge", path, exc)
        return None
    return net.eval(), blob["meta"]


def judge_for(train: JudgeSet, recipe: JudgeRecipe = DEFAULT_RECIPE, *, cache_dir: Path | None = None,
              meta: dict | None = None, step_callback: StepCallback | None = None) -> tuple[JudgeNet, JudgeInfo]:
    """The judge trained on ``train`` with ``recipe``: from the cache, or trained and cached.

    ``meta`` (data folder, split…) is stored in the cache file for people reading it.
    """
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = folder / f"judge-{train.key(recipe)[:20]}.pt"
    cached = _load(path, recipe)
    if cached is not None:
        net, stored = cached
        log.info("structure judge from %s", path)
        return net, JudgeInfo(path, False, float(stored.get("train_seconds", "nan")),
                              float(stored.get("train_cpu_seconds", "nan")), len(train))
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"judge cache folder {str(folder)!r} cannot be created ({exc.strerror}): "
                              "set XDG_CACHE_HOME to a writable folder, or pass --no-structure") from None
    log.info("training the structure judge: %d steps on %d tiles (cached as %s)", recipe.steps, len(train), path)
    start, cpu = time.monotonic(), time.process_time()
    net = train_judge(np.stack(train.images), np.stack(train.labels), recipe, step_callback)
    seconds, cpu = time.monotonic() - start, time.process_time() - cpu
    blob = {"recipe": {**asdict(recipe), "widths": list(recipe.widths)},
            "state_dict": net.state_dict(),
            "meta": {**(meta or {}), "train_tiles": len(train), "train_seconds": seconds, "train_cpu_seconds": cpu,
                     "torch": str(torch.__version__)}}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)  # atomic: a concurrent evaluation reads the old file or the new, never half
    return net, JudgeInfo(path, True, seconds, cpu, len(train))
