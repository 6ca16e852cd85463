"""RobustDistiller (fit / evaluate / config / from_config), recipes, and ``robust-student fit``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from robust_student import RobustDistiller
from robust_student.api import apply_overrides, list_recipes, load_recipe
from robust_student.cli import main
from robust_student.config import DistillConfig
from robust_student.methods.rslad import RSLAD
from robust_student.students.io import load_student
from robust_student.teachers import TEACHERS, register_teacher

from conftest import TinyTeacher

if "tiny-test" not in TEACHERS:
    register_teacher("tiny-test")(lambda arg=None, **kw: TinyTeacher(**kw))


def _small(tmp_path, **extra):
    return {"epochs": 1, "batch_size": 16, "max_train_examples": 64, "eval_examples": 16,
            "student_args": {"width": 8}, "attack.steps": 2, "train.output_dir": str(tmp_path / "run"), **extra}


def test_fit_evaluate_and_the_saved_student(tmp_path):
    distiller = RobustDistiller(teacher=TinyTeacher(), method="rslad", student="resnet_tiny", dataset="synthetic:3",
                                **_small(tmp_path))
    student = distiller.fit()
    assert distiller.config.train.epochs == 1 and distiller.config.teacher == "tiny"
    assert distiller.result.steps == 4 and [r["epoch"] for r in distiller.history] == [0]
    assert student.num_classes == 3 and not student.training

    saved = load_student(tmp_path / "run" / "student")
    x = torch.rand(4, 3, 16, 16)
    torch.testing.assert_close(saved(x), student(x))

    report = distiller.evaluate(["clean", "pgd20"], n_examples=16, checks=False)
    assert report.n_examples == 16 and set(report.robust_accuracy) == {"pgd20"}
    assert 0 <= report.robust_accuracy["pgd20"] <= report.clean_accuracy <= 1


def test_fit_resume_continues_from_the_checkpoint(tmp_path):
    first = RobustDistiller(teacher=TinyTeacher(), method="kd", student="resnet_tiny", dataset="synthetic:3",
                            **_small(tmp_path))
    first.fit()
    longer = RobustDistiller(teacher=TinyTeacher(), config=first.config, epochs=2)
    longer.fit(resume=True)
    assert longer.result.steps == 8 and [r["epoch"] for r in longer.history] == [0, 1]


def test_overrides_find_their_section():
    base = DistillConfig()
    cfg = apply_overrides(base, {"epochs": 3, "max_train_examples": 10, "threat.eps": "4/255", "lr": None,
                                 "attack": {"steps": 3}, "method_args": {"beta": 3.0}})
    assert cfg.train.epochs == 3 and cfg.dataset.max_train_examples == 10 and cfg.train.lr == base.train.lr
    assert cfg.threat.eps == pytest.approx(4 / 255) and cfg.attack.steps == 3  # a section dict merges
    assert cfg.method_args == {"beta": 3.0}
    assert apply_overrides(base, {"batch_size": 7}).train.batch_size == 7  # shared names mean training
    with pytest.raises(ValueError, match="threat.eps"):
        apply_overrides(base, {"eps": 0.1})  # ambiguous: threat.eps or eval.eps
    with pytest.raises(ValueError, match="no config section"):
        apply_overrides(base, {"epoch": 3})


def test_typos_fail_early_and_list_the_valid_names():
    with pytest.raises(ValueError, match="rslad"):
        RobustDistiller(teacher="fmnist-clip", method="rsladd", student="resnet_tiny", dataset="synthetic")
    with pytest.raises(ValueError, match="resnet_tiny"):
        RobustDistiller(teacher="fmnist-clip", method="rslad", student="resnet_tinyy", dataset="synthetic")


def test_a_missing_teacher_role_is_named_at_construction(tmp_path, monkeypatch):
    monkeypatch.setattr(RSLAD, "teacher_roles", ("teacher", "clean"))  # as a two-teacher method declares
    with pytest.raises(ValueError, match="role 'clean'"):
        RobustDistiller(teacher=TinyTeacher(), method="rslad", student="resnet_tiny", dataset="synthetic:3",
                        **_small(tmp_path))
    with pytest.raises(ValueError, match=r"role\(s\) \['adv'\] that method 'kd' does not use"):
        RobustDistiller(teacher={"adv": "fmnist-clip"}, method="kd", dataset="synthetic:3")


def test_evaluate_before_fit_says_what_to_do():
    with pytest.raises(RuntimeError, match="fit"):
        RobustDistiller(teacher="fmnist-clip", method="rslad", dataset="synthetic").evaluate()


@pytest.mark.parametrize("recipe", list_recipes())
def test_every_packaged_recipe_builds_a_distiller(recipe):
    distiller = RobustDistiller.from_config(recipe)
    assert distiller.config == load_recipe(recipe)


def test_baseline_recipes_exist_with_paper_settings():
    assert {"quickstart", "kd_fmnist", "pgd_at_paper", "trades_paper", "ard_paper", "rslad_paper",
            "adaad_paper"} <= set(list_recipes())
    rslad = load_recipe("rslad_paper")
    assert (rslad.train.epochs, rslad.train.milestones, rslad.train.weight_decay) == (300, [215, 260, 285], 2e-4)
    ard = load_recipe("ard_paper")
    assert ard.method_args["temperature"] == 30 and ard.attack.student_mode == "train"
    quick = load_recipe("quickstart")
    assert (quick.teacher, quick.student, quick.method) == ("fmnist-clip-robust", "resnet_tiny", "dghfa")
    assert quick.student_init == "fmnist-clip-robust"  # starts from a shipped robust student
    assert quick.method_args == {"num_intermediate": quick.attack.steps} and "autoattack" in quick.eval.attacks


def test_from_config_with_a_yaml_file_and_overrides(tmp_path):
    path = tmp_path / "recipe.yaml"
    DistillConfig(method="trades", dataset="synthetic:3").to_yaml(path)
    distiller = RobustDistiller.from_config(path, epochs=2)
    assert distiller.config.method == "trades" and distiller.config.train.epochs == 2
    with pytest.raises(ValueError, match="quickstart"):
        load_recipe("no-such-recipe")


def test_cli_fit_with_a_recipe_and_set_overrides(tmp_path, capsys):
    recipe = tmp_path / "tiny.yaml"
    DistillConfig(teacher="tiny-test", student="resnet_tiny", method="pgd-at", dataset="synthetic:3",
                  student_args={"width": 8}).to_yaml(recipe)
    out = tmp_path / "cli_run"
    argv = ["fit", "--recipe", str(recipe), "--set", "train.epochs=1", "train.batch_size=32",
            "dataset.max_train_examples=64", "train.eval_examples=16", "attack.steps=2",
            f"train.output_dir={out}", "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["method"] == "pgd-at" and summary["steps"] == 2 and summary["output_dir"] == str(out)
    assert 0 <= summary["val_robust_acc"] <= summary["val_clean_acc"] <= 1
    assert summary["val_attack"] == "pgd:10 linf eps=8/255"
    assert (out / "student" / "model.safetensors").is_file()
    assert main(["fit", "--recipe", "no-such-recipe"]) == 2
    assert "Unknown recipe" in capsys.readouterr().err


CARD_GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guides" / "hub.md"  # shows the quickstart's card


def _card_fields(text: str) -> tuple[set[str], list[str], set[str]]:
    """A card's front-matter keys, its section headings, and the metric names of its model-index."""
    import yaml

    front = yaml.safe_load(text.split("---\n")[1])
    metrics = {m["name"] for r in front.get("model-index", [{}])[0].get("results", []) for m in r["metrics"]}
    return set(front), [line for line in text.splitlines() if line.startswith("## ")], metrics


def _check_the_readme_excerpt_has_the_fields_of(card: Path) -> None:
    """The quickstart's card shown in the Hub guide (an excerpt) has the fields the quickstart writes today."""
    readme = CARD_GUIDE.read_text(encoding="utf-8")
    block = readme.split("<!-- model-card-excerpt:start -->")[1].split("<!-- model-card-excerpt:end -->")[0]
    excerpt = re.search(r"````markdown\n(.*?)````", block, re.S).group(1)
    keys, headings, metrics = _card_fields(excerpt)
    card_keys, card_headings, card_metrics = _card_fields(card.read_text(encoding="utf-8"))
    # the quickstart here runs on synthetic data with a test teacher: no Hub dataset id, a licence named "other"
    assert keys - {"datasets"} == card_keys - {"license_name"} and headings == card_headings
    assert {m.split(",")[0] for m in metrics} == {m.split(",")[0] for m in card_metrics}  # same attacks


def test_quickstart_distils_evaluates_exports_and_writes_the_card(tmp_path):
    from robust_student.quickstart import run_quickstart

    summary = run_quickstart(teacher="tiny-test", data="synthetic:3", output_dir=tmp_path / "qs",
                             overrides=_small(tmp_path, **{"train.output_dir": str(tmp_path / "qs" / "run"),
                                                           "eval.n_examples": 32, "student_init": None,
                                                           "method_args": {"num_intermediate": 2}}),
                             export_options={"n_examples": 16, "square_queries": 20, "attacks": ["pgd20"],
                                             "calibration_images": 32},
                             check_examples=16, check_square_queries=20, curve_examples=16)
    assert summary.method == "dghfa" and summary.train_steps == 4 and summary.n_eval == 32
    robust = summary.student_robust_accuracy  # every attack of the recipe, AutoAttack included
    assert list(robust) == ["fgsm", "pgd20", "cw20", "autoattack"]
    assert 0 <= robust["autoattack"] <= robust["pgd20"] <= robust["fgsm"] <= summary.student_clean_accuracy <= 1
    text = summary.to_text()
    assert "test accuracy on 32 test images (linf eps 0.1): clean" in text and "AutoAttack" in text
    assert "distilled with dghfa from random weights (4 steps" in text
    assert f"demo: robust-student demo --student {tmp_path / 'qs' / 'hub'}" in text
    assert (tmp_path / "qs" / "run" / "student" / "model.safetensors").is_file()
    hub = tmp_path / "qs" / "hub"  # the Hub-ready folder with its model card
    assert summary.hub_folder == str(hub) and {"README.md", "config.json", "model.safetensors", "robustness.json",
                                               "eps_curve.png"} <= {p.name for p in hub.iterdir()}
    assert f"model card {hub}/README.md" in summary.to_text()
    _check_the_readme_excerpt_has_the_fields_of(hub / "README.md")
    saved = json.loads((tmp_path / "qs" / "summary.json").read_text())
    assert saved["student_pgd20_accuracy"] is not None
    # Exported and validated under attack: FP32 and INT8, each written only if its validation passed.
    assert [a["report"]["precision"] for a in saved["onnx"]] == ["fp32", "int8"]
    for artifact in saved["onnx"]:
        assert (tmp_path / "qs" / artifact["path"].rsplit("/", 1)[-1]).is_file() == artifact["written"]
        assert artifact["written"] == artifact["report"]["passed"] and artifact["report"]["n_examples"] == 16
        assert artifact["report_text"].splitlines()[0] in summary.to_text()
    assert "square:20 on the ONNX session" in summary.to_text()
