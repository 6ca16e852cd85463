"""Held-out-class zero-shot evaluation: train on a subset of the classes (``dataset.classes``), then score the
others through the teacher's text encoder (``evaluate(classes=...)``, ``robust-student eval --classes``)."""

from __future__ import annotations

import pytest
import torch

import robust_student as rs
from robust_student.cli import main
from robust_student.config import ConfigError, DataConfig
from robust_student.data import build_dataset
from robust_student.students import create_student, for_classes
from robust_student.teachers import TEACHERS, register_teacher

from conftest import TinyTeacher

if "tiny-heldout" not in TEACHERS:
    register_teacher("tiny-heldout", license="MIT", commercial_use=True)(lambda arg=None, **kw: TinyTeacher(**kw))


def test_a_class_subset_keeps_those_classes_relabelled_with_their_prompts():
    full = build_dataset("fashion-mnist", "test")
    sub = build_dataset(DataConfig(name="fashion-mnist", classes=["Bag", "Pullover", "Sandal"]), "test")
    assert sub.labels == ["Pullover", "Sandal", "Bag"]  # the dataset's class order, whatever the order given
    assert [c[0] for c in sub.prompts.classnames] == ["pullover", "sandal", "bag"]
    assert sub.prompts.templates == full.prompts.templates
    assert len(sub) == 3000 and sorted(set(sub.targets())) == [0, 1, 2]
    full_targets = full.targets()
    first = sub.indices[0]
    assert full.labels[full_targets[first]] == sub.labels[sub[0]["label"]]
    assert torch.equal(sub[0]["image"], full[first]["image"])
    with pytest.raises(ValueError, match="no class 'Hat'.*T-shirt/top"):
        build_dataset(DataConfig(name="fashion-mnist", classes=["Hat"]), "test")
    with pytest.raises(ConfigError, match="classes"):
        DataConfig(classes=[])
    with pytest.raises(ConfigError, match="twice"):
        DataConfig(classes=["Bag", "Bag"])


def test_for_classes_scores_new_classes_through_the_teachers_text_encoder(tiny_teacher):
    torch.manual_seed(0)
    student = create_student("resnet_tiny", tiny_teacher, image_size=16, width=8)
    new = for_classes(student, tiny_teacher, ["dog", "emu"], ["a photo of a {}."])
    x = torch.rand(4, 3, 16, 16)
    expected = student.logit_scale * student.encode_image(x) @ tiny_teacher.classifier  # the new text embeddings
    torch.testing.assert_close(new(x), expected)
    assert new.classnames == ["dog", "emu"] and new.num_classes == 2 and student.num_classes == 3  # a copy
    with pytest.raises(ValueError, match="dimensions"):
        for_classes(student, TinyTeacher(embed_dim=8), ["dog"], ["{}"])


def test_fit_on_some_classes_then_evaluate_zero_shot_on_the_others(tmp_path, capsys):
    train_classes, held_out = ["class 0", "class 1"], ["class 2", "class 3"]
    distiller = rs.RobustDistiller(
        teacher="tiny-heldout", method="rslad", student="resnet_tiny",
        dataset=DataConfig(name="synthetic:4", classes=train_classes), epochs=1, batch_size=16,
        max_train_examples=64, eval_examples=16, student_args={"width": 8}, output_dir=str(tmp_path / "run"),
        **{"attack.steps": 2})
    student = distiller.fit()
    assert student.num_classes == 2 and student.classnames == train_classes
    report = distiller.evaluate(["clean", "pgd20"], n_examples=32, checks=False, classes=held_out)
    assert report.num_classes == 2 and set(report.per_class) == set(held_out)
    assert "class 2, class 3" in report.dataset and "zero-shot" in report.model
    # the same number by hand: the student's embeddings against the teacher's text embeddings of the new classes
    test = build_dataset(DataConfig(name="synthetic:4", classes=held_out), "test")
    teacher = TinyTeacher()
    teacher.set_classes(test.prompts.classnames, test.prompts.templates)
    x, y = rs.evaluation.collect_examples(test, 32, seed=0)[:2]
    with torch.no_grad():
        predicted = (student.encode_image(x) @ teacher.classifier).argmax(1)
    assert report.clean_accuracy == pytest.approx((predicted == y).float().mean().item())

    # the CLI: the saved student records its teacher, whose text encoder scores the held-out classes
    argv = ["eval", "--model", str(tmp_path / "run" / "student"), "--data", "synthetic:4", "--classes", *held_out,
            "--attacks", "clean", "pgd20", "--n-examples", "32", "--no-checks", "--eps", "0.1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"| clean | {100 * report.clean_accuracy:.2f} %" in out
    assert main(["eval", "--model", str(tmp_path / "run" / "student"), "--data", "synthetic:4", "--text-teacher",
                 "tiny-heldout"]) == 2
    assert "--classes" in capsys.readouterr().err
