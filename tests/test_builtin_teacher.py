"""The built-in offline teacher ``fmnist-clip``: ships in the package, loads offline, classifies Fashion-MNIST."""

from __future__ import annotations

import json

import pytest
import torch

from robust_student.teachers import create_teacher
from robust_student.teachers.builtin import FMNIST_CLIP_DIR
from robust_student.data.prompts import FASHION_MNIST
from robust_student.teachers.zeroshot import zero_shot_accuracy


@pytest.fixture(scope="module")
def teacher():
    with pytest.MonkeyPatch.context() as mp:  # no network: the weights ship with the package
        mp.setenv("HF_HUB_OFFLINE", "1")
        return create_teacher("fmnist-clip")


def test_ships_as_a_small_open_clip_local_dir():
    names = {p.name for p in FMNIST_CLIP_DIR.iterdir()}
    assert {"open_clip_config.json", "open_clip_model.safetensors", "training.json"} <= names
    assert sum(p.stat().st_size for p in FMNIST_CLIP_DIR.iterdir()) < 10_000_000
    record = json.loads((FMNIST_CLIP_DIR / "training.json").read_text())
    assert record["data"]["train_split"] == "train" and record["data"]["selection_split"] == "val"
    assert record["settings"]["seed"] == 0 and record["test_accuracy"] >= 0.85


def test_loads_offline_with_licence_and_native_size(teacher):
    assert teacher.name == "fmnist-clip"
    assert teacher.license == "Apache-2.0" and teacher.provenance.commercial_use is True
    assert "MIT" in teacher.provenance.note and teacher.provenance.spec == "fmnist-clip"
    assert teacher.input_size == 28
    assert not any(p.requires_grad for p in teacher.parameters())
    assert all(p.dtype == torch.float32 for p in teacher.parameters())  # fp16 file, upcast on load
    x = torch.rand(2, 3, 28, 28)
    teacher.set_classes(FASHION_MNIST.classnames, FASHION_MNIST.templates)
    assert teacher(x).shape == (2, 10)
    torch.testing.assert_close(teacher.encode_image(x).norm(dim=-1), torch.ones(2))


def test_zero_shot_accuracy_on_the_first_1000_test_images(teacher):
    from robust_student.data import build_dataset

    try:
        dataset = build_dataset("fashion-mnist", "test")
    except FileNotFoundError as error:
        pytest.skip(f"Fashion-MNIST not installed: {error}")
    teacher.set_classes(dataset.prompts.classnames, dataset.prompts.templates)
    accuracy = zero_shot_accuracy(teacher, dataset.subset(range(1000)), batch_size=500)
    assert accuracy >= 0.85
