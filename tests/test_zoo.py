"""The built-in teacher zoo (robust_student.teachers.builtin.ZOO): each ships as a small saved student with its
training record, loads offline as a licensed teacher with fmnist-clip's text tower, classifies Fashion-MNIST as its
record says, and reproduces its committed regression guard (clean and PGD-20 on the first test images)."""

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
    from robust_student.api import load_recipe

    seed = load_recipe(record["recipe"]).train.seed if "recipe" in record else 0  # a flagship keeps its recipe's
    assert record["config"]["train"]["seed"] == seed and record["config"]["threat"]["eps"] == 0.1
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


def _zoo_script():
    """scripts/train_fmnist_zoo.py as a module (it is a script, not part of the package)."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "train_fmnist_zoo.py"
    spec = importlib.util.spec_from_file_location("train_fmnist_zoo", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", sorted(ZOO))
def test_reproduces_its_committed_regression_guard(name):
    """Clean and PGD-20 on the first test images, as `train_fmnist_zoo.py --regression` committed them."""
    guard = json.loads((WEIGHTS_DIR / name / "regression.json").read_text())
    assert guard["command"] == f"scripts/train_fmnist_zoo.py --regression {name} --threads 1" and guard["n"] >= 100
    module = _zoo_script()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the guard was written
    try:
        now = module.regression_guard(name, guard["n"], guard["eps"])
    finally:
        torch.set_num_threads(threads)
    one_image = 1 / guard["n"] + 1e-9  # float differences between CPUs may flip one borderline image
    assert abs(now["clean"] - guard["clean"]) <= one_image and abs(now["pgd20"] - guard["pgd20"]) <= one_image


CARDED = sorted(n for n in ZOO if "report" in json.loads((WEIGHTS_DIR / n / "training.json").read_text())
                ["zero_shot_test"].get("autoattack", {}))


def test_the_robust_teacher_ships_with_its_evaluation_report():
    assert "fmnist-clip-robust" in CARDED  # every entry trained since the card existed carries one


@pytest.mark.parametrize("name", CARDED)
def test_card_shows_the_recorded_evaluation_and_licence(name):
    from robust_student.formatting import format_percent

    card = (WEIGHTS_DIR / name / "README.md").read_text()
    report = json.loads((WEIGHTS_DIR / name / "training.json").read_text())["zero_shot_test"]["autoattack"]["report"]
    assert "license: apache-2.0" in card and report["n_examples"] >= 500 and f"{report['n_examples']} test images" in card
    for accuracy in (report["clean_accuracy"], *report["robust_accuracy"].values()):
        assert format_percent(accuracy) in card
    assert report["checks"] and report["checks_passed"] and "**FAILED**" not in card


@pytest.mark.parametrize("name", CARDED)
def test_round_trips_through_onnx(name, tmp_path):
    import numpy as np

    from robust_student import load_student
    from robust_student.export import OnnxStudent, export_onnx

    export_onnx(WEIGHTS_DIR / name, tmp_path / "model.onnx")
    runner = OnnxStudent(tmp_path / "model.onnx")
    student = load_student(WEIGHTS_DIR / name).eval()
    x = torch.rand(8, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = student(x).numpy()
    np.testing.assert_allclose(runner.logits(x.numpy()), expected, atol=1e-4, rtol=1e-4)
    assert runner.metadata["class_names"] == list(student.classnames)


def test_the_demo_opens_on_the_best_shipped_student():
    from robust_student.demo import default_student
    from robust_student.demo.app import report_markdown
    from robust_student.formatting import format_percent
    from robust_student.teachers.builtin import best_shipped, recorded_report

    best = recorded_report(default_student())["robust_accuracy"]["autoattack"]
    assert default_student() == WEIGHTS_DIR / best_shipped()
    for name in CARDED:  # no shipped entry has a higher recorded AutoAttack accuracy
        assert recorded_report(WEIGHTS_DIR / name)["robust_accuracy"]["autoattack"] <= best
    text, _ = report_markdown(default_student())  # its report tab shows the recorded evaluation
    assert format_percent(best) in text and "autoattack" in text


SHIPPED_FROM_RECIPES = sorted(n for n in ZOO if "recipe" in json.loads((WEIGHTS_DIR / n / "training.json").read_text()))


@pytest.mark.parametrize("name", SHIPPED_FROM_RECIPES)
def test_a_shipped_flagship_is_what_its_recipe_trains(name):
    from robust_student.api import load_recipe
    from robust_student.training.run_dir import config_differences

    record = json.loads((WEIGHTS_DIR / name / "training.json").read_text())
    recipe = load_recipe(record["recipe"]).to_dict()
    assert config_differences(recipe, record["config"]) == []
    assert recipe["train"]["epochs"] == record["budget"]["epochs"] == len(
        [r for r in record["history"] if r["kind"] == "eval"])
    assert record["budget"]["cpu_hours"] == round(record["history"][-1]["cpu_seconds"] / 3600, 3)


def test_a_run_trained_on_from_a_zoo_entry_ships_with_that_entrys_compute_counted(tmp_path):
    module = _zoo_script()
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "training.json").write_text(json.dumps({"budget": {"cpu_hours": 1.348}}))
    config = {"train": {"epochs": 2}, "dataset": {"max_train_examples": 60000}, "student_init": "base"}
    last = {"train_seconds": 1800.0, "cpu_seconds": 1980.0}
    budget = module.shipped_budget(config, last, weights=tmp_path)
    assert (budget["cpu_hours"], budget["student_init_cpu_hours"], budget["total_cpu_hours"]) == (0.55, 1.348, 1.898)
    fresh = module.shipped_budget({**config, "student_init": None}, last, weights=tmp_path)
    assert fresh == {"epochs": 2, "train_images": 60000, "wall_hours": 0.5, "cpu_hours": 0.55}
