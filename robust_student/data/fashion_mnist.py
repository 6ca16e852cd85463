"""Fashion-MNIST (Xiao et al. 2017, MIT licence) from the Debian package or any folder of the idx files.

``fashion-mnist`` reads ``/usr/share/datasets/fashion-mnist`` (``apt-get install dataset-fashion-mnist``);
``fashion-mnist:/path`` reads another folder holding the four ``*-idx?-ubyte[.gz]`` files. The official
60k/10k split is kept; ``val`` is a seeded 5,000-image slice of the official training set (and ``train`` the
other 55,000) so that model selection never touches the test set.
"""

from __future__ import annotations

import gzip
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from . import register_dataset
from .base import LabeledImages
from .prompts import FASHION_MNIST

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
ROOT_ENV = "ROBUST_STUDENT_FASHION_MNIST"
VAL_SIZE = 5000
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class FashionMNIST(LabeledImages):
    """Fashion-MNIST held in memory as uint8 (47 MB for all splits), 28x28 grayscale -> 3 channels."""

    def __init__(self, images: Tensor, targets: Tensor, *, image_size: int | None = None, prompts=None) -> None:
        super().__init__(FASHION_MNIST.labels, image_size=image_size, prompts=prompts or FASHION_MNIST,
                         name="fashion-mnist")
        self.images = images
        self._targets = targets

    def __len__(self) -> int:
        return int(self._targets.shape[0])

    def _load(self, index: int) -> tuple[Tensor, int]:
        return self.images[index][None].float().div(255.0), int(self._targets[index])

    def targets(self) -> list[int]:
        return self._targets.tolist()


def find_root(root: str | None) -> Path:
    candidates = [Path(root)] if root else [Path(p) for p in (os.environ.get(ROOT_ENV), DEFAULT_ROOT) if p]
    for candidate in candidates:
        if all(_find_file(candidate, stem) for stem in FILES["train"] + FILES["test"]):
            return candidate
    where = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"Fashion-MNIST files not found in {where}. Install them with "
        f"`sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu; files land in {DEFAULT_ROOT}), or download "
        "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
        "t10k-labels-idx1-ubyte.gz from https://github.com/zalandoresearch/fashion-mnist into a folder and use "
        f"dataset 'fashion-mnist:/that/folder' (or set {ROOT_ENV})."
    )


def _find_file(root: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    return None


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (optionally gzipped): big-endian magic with the number of dimensions, then uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an idx file of unsigned bytes")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: expected {int(np.prod(shape))} values, found {array.size}")
    return array.reshape(shape)


@lru_cache(maxsize=4)
def _load_arrays(root: str, official_split: str) -> tuple[Tensor, Tensor]:
    images_stem, labels_stem = FILES[official_split]
    images = read_idx(_find_file(Path(root), images_stem))
    labels = read_idx(_find_file(Path(root), labels_stem))
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{root}: {images.shape[0]} images but {labels.shape[0]} labels in the {official_split} files")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


@register_dataset("fashion-mnist", takes_arg="optional", usage="fashion-mnist[:DIR]")
def fashion_mnist(root: str | None, *, split: str, image_size: int | None = None, seed: int = 0,
                  prompts=None, **_: object) -> FashionMNIST:
    """Fashion-MNIST (10 clothing classes, 28 px grayscale) from the Debian package or DIR; 55k/5k/10k splits."""
    base = find_root(root)
    if split == "test":
        images, targets = _load_arrays(str(base), "test")
    else:
        images, targets = _load_arrays(str(base), "train")
        order = torch.from_numpy(np.random.default_rng(seed).permutation(images.shape[0]))
        keep = order[:VAL_SIZE] if split == "val" else order[VAL_SIZE:]
        keep = keep.sort().values
        images, targets = images[keep], targets[keep]
    return FashionMNIST(images, targets, image_size=image_size, prompts=prompts)
