"""Paired map/aerial training data and the paper's random jitter.

Sources (each yields ``(map, aerial)`` uint8 arrays of shape (H, W, 3)):

- :class:`SideBySideFolder`: pix2pix-style images holding both halves side by side
  (``A`` left, ``B`` right, as in the reference code; ``direction="BtoA"`` makes the
  right half the input, which is map → aerial for the pix2pix *maps* dataset).
- :class:`TwoFolders`: ``map/`` and ``aerial/`` folders of same-named tiles.
- :func:`geo_pix2pix.train.pairs.RasterPairs`: a map raster and an aerial raster of
  one area, aligned by warping and cut into tiles by the tile module.

:class:`JitteredPairs` applies the paper's augmentation (resize, random crop, mirror,
scale to [-1, 1]) with its own ``torch.Generator`` so that training resumes exactly.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DatasetError, OptionError
from ..grid import blend

__all__ = [
    "AUGMENTS",
    "IMAGE_SUFFIXES",
    "JitteredPairs",
    "PairSource",
    "SideBySideFolder",
    "TwoFolders",
    "split_names",
    "to_tensor",
    "to_uint8",
]

#: The training augmentations of :class:`Jitter` beyond resize and crop.
AUGMENTS = ("mirror", "dihedral", "none")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp")


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetError(f"{str(path)!r} is not a readable image ({exc}): remove or replace it") from None


def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image from its header, without decoding it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.height, im.width
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetError(f"{str(path)!r} is not a readable image ({exc}): remove or replace it") from None


def _list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DatasetError(f"dataset folder {str(folder)!r} does not exist or is not a folder: check the path")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        hint = ("it has map/ and aerial/ folders: pass --layout folders"
                if (folder / "map").is_dir() and (folder / "aerial").is_dir()
                else "point DATA at the folder that contains the tiles")
        raise DatasetError(
            f"dataset folder {str(folder)!r} holds no images ({', '.join(IMAGE_SUFFIXES)}): {hint}"
        )
    return files


def split_names(names: Sequence[str], val_fraction: float) -> tuple[list[int], list[int]]:
    """Deterministic train/validation split by a hash of each file name.

    The same file always lands on the same side, whatever the order or the number of
    files, so a validation split stays held out across runs and resumed runs.
    """
    cut = int(round(val_fraction * 10_000))
    train, val = [], []
    for i, name in enumerate(names):
        (val if zlib.crc32(name.encode()) % 10_000 < cut else train).append(i)
    return train, val


class PairSource:
    """A list of named (map, aerial) pairs, decoded lazily and cached in memory."""

    names: list[str]

    def __init__(self) -> None:
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.names)

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError  # implemented by every concrete source

    def size(self, index: int) -> tuple[int, int] | None:
        """(height, width) of pair ``index``'s map where known without decoding it."""
        return None

    def label(self, index: int) -> str:
        """Pair ``index`` as messages name it (its file, where it has one)."""
        return repr(self.names[index])

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if index not in self._cache:
            self._cache[index] = self._load(index)
        return self._cache[index]

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The pair at ``index``, decoded without keeping it in the cache.

        For one pass over a large set (evaluation, fitting baselines), where caching
        every decoded pair would hold the whole dataset in memory.
        """
        cached = self._cache.get(index)
        return cached if cached is not None else self._load(index)


class SideBySideFolder(PairSource):
    """pix2pix-style folder: each image is ``A | B`` side by side, of width 2·H."""

    def __init__(self, folder: str | Path, direction: str = "BtoA") -> None:
        super().__init__()
        if direction not in ("AtoB", "BtoA"):
            raise DatasetError(f"direction={direction!r} must be 'AtoB' or 'BtoA'")
        self.files = _list_images(Path(folder))
        self.names = [p.name for p in self.files]
        self.direction = direction

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        img = _read_rgb(self.files[index])
        self._check_width(index, img.shape[1])
        w = img.shape[1]
        a, b = img[:, : w // 2], img[:, w // 2 :]
        return (b, a) if self.direction == "BtoA" else (a, b)

    def _check_width(self, index: int, w: int) -> None:
        if w % 2:
            raise DatasetError(
                f"{str(self.files[index])!r} is {w} px wide: a side-by-side pair must have an "
                "even width (left half A, right half B)"
            )

    def size(self, index: int) -> tuple[int, int]:
        h, w = _image_size(self.files[index])
        self._check_width(index, w)
        return h, w // 2

    def label(self, index: int) -> str:
        return repr(str(self.files[index]))


class TwoFolders(PairSource):
    """``map/`` and ``aerial/`` folders whose tiles pair up by file name."""

    def __init__(self, map_folder: str | Path, aerial_folder: str | Path) -> None:
        super().__init__()
        maps = {p.stem: p for p in _list_images(Path(map_folder))}
        aerials = {p.stem: p for p in _list_images(Path(aerial_folder))}
        only_map = sorted(set(maps) - set(aerials))
        only_aerial = sorted(set(aerials) - set(maps))
        if only_map or only_aerial:
            raise DatasetError(
                f"unpaired tiles: {len(only_map)} map tile(s) without an aerial "
                f"(e.g. {only_map[:3]}) and {len(only_aerial)} aerial tile(s) without a map "
                f"(e.g. {only_aerial[:3]}): both folders need the same file names"
            )
        self.names = sorted(maps)
        self.pairs = [(maps[n], aerials[n]) for n in self.names]

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        m, a = (_read_rgb(p) for p in self.pairs[index])
        self._check_same(index, m.shape[:2], a.shape[:2])
        return m, a

    def _check_same(self, index: int, m: tuple[int, int], a: tuple[int, int]) -> None:
        if m != a:
            raise DatasetError(
                f"tile {self.names[index]!r}: map is {m[1]}×{m[0]} but aerial is "
                f"{a[1]}×{a[0]}: paired tiles must have the same size"
            )

    def size(self, index: int) -> tuple[int, int]:
        m, a = (_image_size(p) for p in self.pairs[index])
        self._check_same(index, m, a)
        return m

    def label(self, index: int) -> str:
        return repr(str(self.pairs[index][0]))


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) → float (3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (3, H, W) in [-1, 1] → uint8 (H, W, 3), rounded as render rounds (:func:`grid.blend.to_uint8`)."""
    return blend.to_uint8(x.detach().float().cpu().numpy()).transpose(1, 2, 0)


@dataclass(frozen=True)
class Jitter:
    """The paper's random jitter: resize to ``load_size``, random crop, mirror.

    ``load_size`` is (low, high): each sample is resized to a size drawn uniformly in
    that range (the paper's fixed 286 is ``(286, 286)``). ``augment`` is one of
    :data:`AUGMENTS`: "mirror" (the paper's left-right mirror), "dihedral" (any of the 8
    mirrors and 90° turns) or "none".
    """

    load_size: tuple[int, int] = (286, 286)
    crop_size: int = 256
    augment: str = "mirror"

    def __post_init__(self) -> None:
        if self.augment not in AUGMENTS:
            raise OptionError(f"--augment {self.augment!r} must be one of {', '.join(AUGMENTS)}")


class JitteredPairs:
    """Random jittered training samples drawn from a :class:`PairSource` subset."""

    def __init__(self, source: PairSource, indices: Sequence[int], jitter: Jitter, seed: int = 0):
        if not indices:
            raise DatasetError("the training split is empty: add tiles or lower --val-fraction")
        self.source = source
        self.indices = list(indices)
        self.jitter = jitter
        self.rng = torch.Generator().manual_seed(seed)
        if jitter.load_size[0] < jitter.crop_size:
            raise OptionError(f"--load-size {jitter.load_size[0]} is smaller than the {jitter.crop_size} px "
                              f"training crop: give at least {jitter.crop_size} (the paper uses 286)")
        self.sized = True  # every tile's size checked here, none left to check in sample()
        for i in self.indices:  # every tile, from its header where the source can: a bad
            size = source.size(i)  # tile is found now, not hours into training
            if size is None:
                self.sized = False
            elif min(size) < jitter.crop_size:
                raise too_small(source, i, size, jitter.crop_size)

    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        maps, aerials = [], []
        for _ in range(batch_size):
            k = int(torch.randint(len(self.indices), (1,), generator=self.rng))
            m, a = self.source[self.indices[k]]
            if not self.sized and min(m.shape[:2]) < self.jitter.crop_size:  # a source that cannot tell sizes early
                raise too_small(self.source, self.indices[k], m.shape[:2], self.jitter.crop_size)
            pair = torch.cat([to_tensor(m), to_tensor(a)], dim=0)  # (6, H, W)
            pair = self._jitter(pair)
            maps.append(pair[:3])
            aerials.append(pair[3:])
        return torch.stack(maps), torch.stack(aerials)

    def _jitter(self, pair: torch.Tensor) -> torch.Tensor:
        j = self.jitter
        lo, hi = j.load_size
        size = lo if hi <= lo else int(torch.randint(lo, hi + 1, (1,), generator=self.rng))
        if pair.shape[-2:] != (size, size):
            pair = F.interpolate(pair[None], size=(size, size), mode="bicubic",
                                 align_corners=False, antialias=True)[0].clamp_(-1, 1)
        if size > j.crop_size:
            y, x = (int(v) for v in torch.randint(size - j.crop_size + 1, (2,), generator=self.rng))
            pair = pair[:, y : y + j.crop_size, x : x + j.crop_size]
        if j.augment != "none" and bool(torch.rand((), generator=self.rng) < 0.5):
            pair = pair.flip(-1)
        if j.augment == "dihedral":  # with the mirror above: all 8 orientations
            pair = pair.rot90(int(torch.randint(4, (1,), generator=self.rng)), dims=(-2, -1))
        return pair


def too_small(source: PairSource, index: int, size: tuple[int, int], crop: int) -> DatasetError:
    h, w = size
    return DatasetError(
        f"tile {source.label(index)} is {w}×{h} px, smaller than the {crop} px training crop: it would "
        f"be upsampled and the model would learn blurred imagery; use tiles of at least {crop} px (cut "
        "them from larger images, or train on rasters with --layout rasters) or remove it"
    )


def fixed_pairs(source: PairSource, indices: Sequence[int], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Validation tensors: each pair resized to size × size (bicubic, antialiased)."""
    maps, aerials = [], []
    for i in indices:
        m, a = source[i]
        pair = torch.cat([to_tensor(m), to_tensor(a)], dim=0)[None]
        pair = F.interpolate(pair, size=(size, size), mode="bicubic", align_corners=False,
                             antialias=True)[0].clamp_(-1, 1)
        maps.append(pair[:3])
        aerials.append(pair[3:])
    return torch.stack(maps), torch.stack(aerials)
