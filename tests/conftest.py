"""Shared test fixtures: a tiny teacher that honours the Teacher contract, tiny students and batches.

Everything here is random-weight, seeded and small enough to run on two CPU cores in milliseconds.
"""

from __future__ import annotations

import os
import zlib

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
# Tiny tensors run fastest on one thread (OpenMP start-up dominates); subprocesses inherit the setting.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch
from torch import nn

from robust_student.students import create_student

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
from robust_student.teachers.base import Teacher


class TinyTeacher(Teacher):
    """A 2-conv image tower and a hashed character-trigram text tower, random weights, frozen."""

    def __init__(self, embed_dim: int = 16, input_size: int = 16, seed: int = 0) -> None:
        super().__init__(name="tiny", embed_dim=embed_dim, input_size=input_size, mean=(0.5, 0.5, 0.5),
                         std=(0.25, 0.25, 0.25), logit_scale=20.0, license="test-only")
        torch.manual_seed(seed)
        self.image_tower = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, embed_dim),
        )
        self.text_tower = nn.EmbeddingBag(512, embed_dim, mode="mean")
        self.freeze()

    def _encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.image_tower(x)

    def _encode_text(self, texts: list[str]) -> torch.Tensor:
        rows = []
        for text in texts:
            grams = [text[i:i + 3] for i in range(max(1, len(text) - 2))]
            rows.append(torch.tensor([zlib.crc32(g.encode()) % 512 for g in grams]))
        offsets = torch.tensor([0] + [len(r) for r in rows[:-1]]).cumsum(0)
        return self.text_tower(torch.cat(rows), offsets)

    def _intermediates(self, x, indices):
        return {"conv1": self.image_tower[:2](x), "conv2": self.image_tower[:4](x)}

    def _head_prefixes(self) -> list[str]:
        return ["image_tower.6"]  # the projection into the embedding space


CLASSNAMES = ["apple", "boat", "cat"]


@pytest.fixture
def tiny_teacher() -> TinyTeacher:
    teacher = TinyTeacher()
    teacher.set_classes(CLASSNAMES, ["a photo of a {}."])
    return teacher


@pytest.fixture
def tiny_student(tiny_teacher):
    torch.manual_seed(0)
    return create_student("resnet_tiny", tiny_teacher, image_size=16, width=8)


@pytest.fixture
def batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {"image": torch.rand(6, 3, 16, 16, generator=generator), "label": torch.tensor([0, 1, 2, 0, 1, 2])}
