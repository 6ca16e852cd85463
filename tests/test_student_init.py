"""``student_init``: a run that starts from a saved student (folder, run folder, zoo entry) instead of random weights."""

from __future__ import annotations

import pytest
import torch

from robust_student import RobustDistiller
from robust_student.students.io import load_student, saved_student_folder
from robust_student.teachers.builtin import WEIGHTS_DIR

from conftest import TinyTeacher


def _run(tmp_path, name, **extra):
    settings = {"epochs": 1, "batch_size": 16, "max_train_examples": 32, "eval_examples": 0,
                "student_args": {"width": 8}, "attack.steps": 1, "train.output_dir": str(tmp_path / name)}
    return RobustDistiller(teacher=TinyTeacher(), method="pgd-at", student="resnet_tiny", dataset="synthetic:3",
                           **{**settings, **extra})


def test_a_run_starts_from_the_saved_students_image_encoder(tmp_path):
    source = _run(tmp_path, "source").fit()
    # lr 0: the second run's weights stay where student_init put them (batch-norm statistics still move)
    started = _run(tmp_path, "warm", student_init=str(tmp_path / "source"), lr=0.0).fit()
    fresh = _run(tmp_path, "cold", lr=0.0, seed=1).fit()
    loaded = dict(source.named_parameters())
    for name, value in started.named_parameters():
        torch.testing.assert_close(value, loaded[name], msg=name)
    assert any(not torch.equal(v, loaded[k]) for k, v in fresh.named_parameters())
    torch.testing.assert_close(started.classifier, source.classifier)  # the run's own text classifier
    assert load_student(tmp_path / "warm" / "student") is not None


@pytest.mark.parametrize("extra, message", [
    ({"student": "vit_tiny"}, "is a resnet_tiny and this run's student is vit_tiny"),
    ({"student_args": {"width": 8}}, "was built with {'width': 16} and student_args ask for {'width': 8}"),
    ({"student_init": "no/such/folder"}, "neither a saved student"),
])
def test_an_init_that_cannot_fit_is_refused_before_any_data_loads(extra, message):
    settings = {"student": "resnet_tiny", "student_init": "fmnist-clip-robust", **extra}
    with pytest.raises((ValueError, FileNotFoundError), match=message.replace("{", r"\{").replace("}", r"\}")
                       .replace("(", r"\(").replace(")", r"\)")):
        RobustDistiller(teacher="fmnist-clip", method="pgd-at", dataset="imagefolder:/no/such/data", **settings)


def test_a_passed_in_student_and_student_init_conflict():
    from robust_student.students import create_student

    with pytest.raises(ValueError, match="a Student was passed in"):
        RobustDistiller(teacher=TinyTeacher(), method="pgd-at", dataset="synthetic:3", student_init="fmnist-clip-robust",
                        student=create_student("resnet_tiny", TinyTeacher(), image_size=16, num_classes=3, width=8))


def test_saved_student_folder_names_zoo_entries_and_run_folders(tmp_path):
    assert saved_student_folder("fmnist-clip-robust") == WEIGHTS_DIR / "fmnist-clip-robust"
    _run(tmp_path, "run").fit()
    assert saved_student_folder(tmp_path / "run") == tmp_path / "run" / "student"
    with pytest.raises(FileNotFoundError, match="fmnist-clip-robust"):  # the error lists what exists
        saved_student_folder(tmp_path / "nothing")
