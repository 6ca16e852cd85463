"""Every registered student builds, runs forward and backward at two image sizes, and saves/loads exactly."""

from __future__ import annotations

import pytest
import torch

from robust_student.students import create_student, list_students
from robust_student.students.io import load_student, save_student

# Small variants keep this file fast on CPU; the registered defaults are what users get.
STUDENT_KWARGS = {
    "resnet18": {},
    "resnet18_cifar": {},
    "resnet_tiny": {"width": 8},
    "vit_tiny": {"depth": 2},
    "vit_small": {"depth": 1},
    "clip": {},
}
SPECS = {"clip": "clip:ViT-B-32"}


def test_registry_lists_the_documented_students():
    assert set(list_students()) == set(STUDENT_KWARGS)


@pytest.mark.parametrize("listed", sorted(STUDENT_KWARGS))
@pytest.mark.parametrize("size", [32, 48])
def test_student_forward_backward(listed, size, tiny_teacher):
    name = SPECS.get(listed, listed)
    kwargs = dict(STUDENT_KWARGS[listed])
    if name.startswith("clip:"):
        kwargs = {}
    torch.manual_seed(0)
    student = create_student(name, tiny_teacher, image_size=size, **kwargs)
    x = torch.rand(2, 3, size, size)
    logits = student(x)
    assert logits.shape == (2, tiny_teacher.num_classes)
    emb = student.encode_image(x)
    assert emb.shape == (2, tiny_teacher.embed_dim)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)
    logits.sum().backward()
    trainable = [(n, p) for n, p in student.named_parameters() if p.requires_grad]
    assert trainable
    missing = [n for n, p in trainable if p.grad is None]
    assert not missing, f"no gradient reached {missing[:5]}"
    # The classifier is the teacher's frozen text matrix: a buffer, never a parameter.
    assert "classifier" not in dict(student.named_parameters())
    assert torch.equal(student.classifier, tiny_teacher.classifier)
    feats = student.features(x)
    assert "embedding" in feats and "pooled" in feats


def test_student_uses_teacher_classifier_and_scale(tiny_teacher):
    student = create_student("resnet_tiny", tiny_teacher, image_size=16, width=8)
    assert student.classnames == tiny_teacher.classnames
    assert float(student.logit_scale) == pytest.approx(float(tiny_teacher.logit_scale))
    x = torch.rand(3, 3, 16, 16)
    expected = student.logit_scale * student.encode_image(x) @ tiny_teacher.classifier
    assert torch.allclose(student(x), expected, atol=1e-6)


def test_student_rejects_non_pixel_input(tiny_student):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        tiny_student(torch.rand(2, 1, 16, 16))


def test_unknown_student_lists_valid_names():
    with pytest.raises(ValueError, match="resnet_tiny"):
        create_student("resnet19", embed_dim=8, num_classes=2)


def test_save_load_round_trip(tmp_path, tiny_student):
    tiny_student.eval()
    save_student(tiny_student, tmp_path / "s")
    loaded = load_student(tmp_path / "s")
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(loaded(x), tiny_student(x))
    assert loaded.classnames == tiny_student.classnames


def test_load_student_missing_folder_says_what_is_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_student(tmp_path)
