"""The built-in teacher zoo (fmnist-clip-fare, fmnist-clip-tecoa, fmnist-clip-cnn): each ships as a small saved
student with its training record, loads offline as a licensed teacher with fmnist-clip's text tower, and
classifies Fashion-MNIST as its record says."""

from __future__ import annotations

import json

import pytest
import torch

from robust_student.teachers import create_teacher, describe_teacher
from robust_student.teachers.builtin import WEIGHTS_DIR, ZOO
from robust_student.teachers.zeroshot import zero_shot_accuracy


@pytest.mark.parametrize("name", sorted(ZOO))
def test_ships_small_with_its_training_record(name):
    folder = WEIGHTS_DIR / name
    assert {"config.json", "model.safetensors", "training.json"} <= {p.name for p in folder.iterdir()}
    assert sum(p.stat().st_size for p in folder.iterdir()) < 10_000_000
    record = json.loads((folder / "training.json").read_text())
    assert record["command"].startswith("scripts/train_fmnist_zoo.py") and record["base_teacher"] == "fmnist-clip"
    assert record["config"]["train"]["seed"] == 0 and record["config"]["threat"]["eps"] == 0.1
    zs = record["zero_shot_test"]
    assert zs["clean_n"] == 10000 and zs["pgd20"]["n"] == 1000 and zs["autoattack"]["n"] == 500
    assert 0 <= zs["autoattack"]["robust"] <= zs["pgd20"]["robust"] + 0.05 <= zs["clean_accuracy"] + 0.05


@pytest.mark.parametrize("name", sorted(ZOO))
def test_loads_offline_as_a_licensed_teacher_with_fmnist_clips_text_tower(name):
    from robust_student.data import build_dataset

    teacher = create_teacher(name)
    assert teacher.name == name and teacher.license == "Apache-2.0" and teacher.provenance.commercial_use is True
    assert describe_teacher(name)["license"] == "Apache-2.0"
    assert teacher.input_size == 28 and not any(p.requires_grad for p in teacher.parameters())
    test = build_dataset("fashion-mnist", "test")
    base = create_teacher("fmnist-clip")
    for t in (teacher, base):
        t.set_classes(test.prompts.classnames, test.prompts.templates)
    torch.testing.assert_close(teacher.classifier, base.classifier)  # the same text tower
    recorded = json.loads((WEIGHTS_DIR / name / "training.json").read_text())["zero_shot_test"]["clean_accuracy"]
    accuracy = zero_shot_accuracy(teacher, test.subset(range(1000)), batch_size=500)
    assert abs(accuracy - recorded) < 0.05  # the first 1000 test images vs the recorded 10,000
