"""A synthetic dataset for tests and smoke runs: class-dependent colour blobs plus noise, fully seeded."""

from __future__ import annotations

import torch
from torch import Tensor

from . import register_dataset
from .base import LabeledImages

SPLIT_OFFSETS = {"train": 0, "val": 1, "test": 2}


class Synthetic(LabeledImages):
    """``n`` images of ``num_classes`` classes; each class has its own mean colour pattern, so it is learnable."""

    def __init__(self, n: int, num_classes: int, image_size: int, seed: int, pattern_seed: int | None = None) -> None:
        super().__init__([f"class {i}" for i in range(num_classes)], name="synthetic")
        generator = torch.Generator().manual_seed(seed)
        # Splits share the class patterns (pattern_seed) and differ in their samples (seed).
        patterns_from = generator if pattern_seed is None else torch.Generator().manual_seed(pattern_seed)
        patterns = torch.rand(num_classes, 3, image_size, image_size, generator=patterns_from)
        self._targets = torch.randint(0, num_classes, (n,), generator=generator)
        noise = 0.15 * torch.randn(n, 3, image_size, image_size, generator=generator)
        self.images = (0.25 + 0.5 * patterns[self._targets] + noise).clamp(0, 1)

    def __len__(self) -> int:
        return int(self._targets.shape[0])

    def _load(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], int(self._targets[index])

    def targets(self) -> list[int]:
        return self._targets.tolist()


@register_dataset("synthetic", takes_arg="optional", usage="synthetic[:N_CLASSES]")
def synthetic(arg: str | None, *, split: str, image_size: int | None = None, seed: int = 0, n: int | None = None,
              **_: object) -> Synthetic:
    """``synthetic`` (10 classes) or ``synthetic:3``; 256 train / 64 val / 64 test images of 16 px by default."""
    if arg is not None and (not arg.isdigit() or int(arg) < 1):
        raise ValueError(f"synthetic:N_CLASSES needs a positive whole number of classes, got {arg!r}")
    num_classes = int(arg) if arg else 10
    size = n if n is not None else (256 if split == "train" else 64)
    return Synthetic(size, num_classes, image_size or 16, seed * 3 + SPLIT_OFFSETS[split], pattern_seed=seed)
