"""evaluate_robustness, RobustnessReport, the gradient-masking checks, eps_curve and the ``eval`` CLI.

A linear classifier trained in a second on 4x4-pixel synthetic images is the "normal" model; the same classifier
behind a non-differentiable 8-level quantisation (zero input gradient) is the gradient-masked one. Tiny images
keep the query-based Square attack effective with a few hundred queries.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robust_student import RobustnessReport, evaluate_robustness
from robust_student.attacks import LinfBall
from robust_student.attacks.checks import (check_accuracy_decreases, check_black_box, check_large_eps,
                                           check_stronger, tolerance)
from robust_student.data.synthetic import Synthetic
from robust_student.evaluation import collect_examples, eps_curve

CHECK_NAMES = {"accuracy_decreases_with_eps", "pgd_not_weaker_than_fgsm", "autoattack_not_weaker_than_pgd",
               "large_eps_breaks_model", "black_box_not_stronger"}
FAST = dict(n_examples=48, batch_size=24, check_square_queries=300, progress=False)


class Quantized(nn.Module):
    """Rounds pixels to 8 levels before the classifier: the input gradient is zero almost everywhere."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.round(x * 7) / 7)


SIZE = 4


@pytest.fixture(scope="module")
def test_set():
    return Synthetic(64, 3, SIZE, seed=2, pattern_seed=0)


@pytest.fixture(scope="module")
def trained():
    train = Synthetic(256, 3, SIZE, seed=0, pattern_seed=0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        loss = F.cross_entropy(model(train.images), train._targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


def test_report_fields_and_accuracies(trained, test_set):
    report = evaluate_robustness(trained, test_set, ["clean", "fgsm", "pgd20"], LinfBall(8 / 255), seed=3,
                                 model_name="linear", **FAST)
    x, y, selection = collect_examples(test_set, 48, seed=3)
    with torch.no_grad():
        clean = (trained(x).argmax(1) == y).float().mean().item()
    assert report.clean_accuracy == pytest.approx(clean) and clean > 0.8
    assert set(report.robust_accuracy) == {"fgsm", "pgd20"}
    assert all(0 <= acc <= report.clean_accuracy for acc in report.robust_accuracy.values())
    assert report.worst_case_accuracy <= min(report.robust_accuracy.values())
    assert (report.dataset, report.model, report.threat, report.eps_text) == ("synthetic", "linear", "linf", "8/255")
    assert report.n_examples == 48 and report.num_classes == 3 and report.seed == 3 and report.selection == selection
    assert sum(row["n"] for row in report.per_class.values()) == 48
    weighted = sum(row["n"] * row["pgd20"] for row in report.per_class.values()) / 48
    assert weighted == pytest.approx(report.robust_accuracy["pgd20"])
    assert report.attack_settings["pgd20"]["step_size"] == "2/255" and report.attack_settings["pgd20"]["steps"] == 20
    assert {"torch", "python", "robust_student"} <= set(report.versions)
    assert {c["name"] for c in report.checks} == CHECK_NAMES
    data = json.loads(json.dumps(report.to_dict()))
    assert RobustnessReport.from_dict(data) == report


def test_normal_model_passes_the_checks(trained, test_set):
    report = evaluate_robustness(trained, test_set, ["clean", "fgsm", "pgd20", "cw20"], LinfBall(32 / 255), **FAST)
    assert report.robust_accuracy["pgd20"] < report.clean_accuracy  # the attacks do bite at this eps
    assert report.checks_passed, report.to_markdown()
    ran = {c["name"] for c in report.checks if c["passed"] is not None}
    assert ran == CHECK_NAMES - {"autoattack_not_weaker_than_pgd"}
    assert "WARNING" not in report.to_markdown()
    assert report.sanity_sweep["accuracy"][-1] <= 0.05  # at eps 0.5 nothing survives


def test_gradient_masked_model_makes_the_checks_fire(trained, test_set):
    report = evaluate_robustness(Quantized(trained), test_set, ["clean", "fgsm", "pgd20"], LinfBall(32 / 255),
                                 **FAST)
    failed = {c["name"] for c in report.failed_checks}
    assert {"large_eps_breaks_model", "black_box_not_stronger"} <= failed
    markdown = report.to_markdown()
    assert "WARNING" in markdown.splitlines()[2] and "**FAIL**" in markdown
    assert not report.checks_passed and report.to_dict()["checks_passed"] is False


def test_large_eps_check_escalates_to_apgd_ce_before_failing(trained, test_set, monkeypatch):
    """PGD-20 that stalls at the large eps (here: replaced by no attack) no longer fails a model whose gradients
    work, because APGD-CE breaks what it left; a masked gradient misleads APGD-CE too, so that model still fails."""
    from robust_student.attacks import checks

    real = checks.get_attack
    monkeypatch.setattr(checks, "get_attack", lambda name, **kw: real("clean" if name == "pgd20" else name, **kw))
    x, y, _ = collect_examples(test_set, 48, seed=0)
    threat = LinfBall(32 / 255)
    normal = {c.name: c for c in checks.gradient_masking_checks(trained, x, y, threat, {}, square_queries=50).checks}
    run = checks.gradient_masking_checks(Quantized(trained), x, y, threat, {}, square_queries=50)
    masked = {c.name: c for c in run.checks}
    assert normal["large_eps_breaks_model"].passed, normal["large_eps_breaks_model"].detail
    assert "(pgd20)" in normal["large_eps_breaks_model"].detail and "apgd-ce" in normal["large_eps_breaks_model"].detail
    assert masked["large_eps_breaks_model"].passed is False and run.sweep["large_eps_apgd_ce"] > 0.05
    assert check_large_eps(0.5, 0.09, stronger=("apgd-ce", 0.03)).passed
    assert check_large_eps(0.5, 0.09, stronger=("apgd-ce", 0.06)).passed is False


def test_check_functions():
    assert check_accuracy_decreases([0, 0.1, 0.2], [0.9, 0.5, 0.1], tol=0.01).passed
    rising = check_accuracy_decreases([0, 0.1, 0.2], [0.9, 0.2, 0.6], tol=0.01)
    assert rising.passed is False and "rises" in rising.detail
    assert check_accuracy_decreases([0.1], [0.5], tol=0.01).passed is None
    assert check_stronger("c", "pgd20", "fgsm", {"pgd20": 0.30, "fgsm": 0.31}, tol=0.0).passed
    assert check_stronger("c", "pgd20", "fgsm", {"pgd20": 0.40, "fgsm": 0.31}, tol=0.01).passed is False
    assert check_stronger("c", "autoattack", "pgd20", {"pgd20": 0.3}, tol=0.01).passed is None
    assert check_large_eps(0.5, 0.04).passed and check_large_eps(0.5, 0.2).passed is False
    assert check_black_box(0.30, 0.31, tol=0.02).passed and check_black_box(0.1, 0.31, tol=0.02).passed is False
    assert tolerance(1000) == 0.01 and tolerance(50) == 0.04


def test_reproducible_and_restores_the_model(tiny_student, batch):
    tiny_student.train()
    flags = [p.requires_grad for p in tiny_student.parameters()]
    data = (batch["image"], batch["label"])
    kwargs = dict(attacks=["clean", "fgsm", "pgd20"], threat=LinfBall(8 / 255), n_examples=4, batch_size=4,
                  seed=1, check_square_queries=20, progress=False)
    first = evaluate_robustness(tiny_student, data, **kwargs).to_dict()
    second = evaluate_robustness(tiny_student, data, **kwargs).to_dict()
    first.pop("seconds"), second.pop("seconds")
    assert first == second and first["dataset"] == "tensors" and first["model"] == "resnet_tiny"
    assert all(m.training for m in tiny_student.modules())
    assert all(p.grad is None for p in tiny_student.parameters())
    assert [p.requires_grad for p in tiny_student.parameters()] == flags


def test_works_for_a_teacher(tiny_teacher, batch):
    report = evaluate_robustness(tiny_teacher, (batch["image"], batch["label"]), ["clean", "pgd20"], LinfBall(),
                                 n_examples=6, checks=False, progress=False)
    assert report.model == "tiny" and list(report.per_class) == ["apple", "boat", "cat"]
    assert report.checks == [] and report.robust_accuracy["pgd20"] <= report.clean_accuracy


def test_bad_requests_fail_before_any_work(trained, test_set):
    with pytest.raises(ValueError, match="Valid attack names"):
        evaluate_robustness(trained, test_set, ["clean", "pgd-20"], progress=False)
    with pytest.raises(ValueError, match="not requested"):
        evaluate_robustness(trained, test_set, ["clean"], attack_options={"square": {}}, progress=False)


def test_collect_examples_sources(test_set):
    x, y, how = collect_examples(test_set, 10, seed=0)
    x2, y2, _ = collect_examples(test_set, 10, seed=0)
    assert x.shape == (10, 3, SIZE, SIZE) and torch.equal(x, x2) and torch.equal(y, y2) and "seed 0" in how
    assert not torch.equal(collect_examples(test_set, 10, seed=1)[0], x)  # another seed, another subset
    xt, yt, how_t = collect_examples((test_set.images, test_set._targets), 100, seed=0)
    assert xt.shape[0] == len(test_set) and how_t == f"all {len(test_set)}"
    loader = torch.utils.data.DataLoader(test_set, batch_size=8)
    xl, yl, how_l = collect_examples(loader, 12)
    assert xl.shape[0] == 12 and torch.equal(yl, test_set._targets[:12]) and how_l.startswith("first 12")


def test_eps_curve_json_and_png(trained, test_set, tmp_path):
    curve = eps_curve(trained, test_set, "fgsm", [0, "2/255", 8 / 255, 0.25], n_examples=32, output=tmp_path / "c",
                      progress=False)
    assert curve["eps_text"] == ["0", "2/255", "8/255", "0.25"] and curve["n_examples"] == 32
    assert curve["accuracy"][0] > 0.8 and curve["accuracy"][-1] < curve["accuracy"][0]
    assert json.loads((tmp_path / "c.json").read_text())["accuracy"] == curve["accuracy"]
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_eval_student_and_teacher(tiny_student, tiny_teacher, tmp_path, monkeypatch, capsys):
    from robust_student import cli, teachers
    from robust_student.students.io import save_student

    from robust_student.data import build_dataset
    from robust_student.students import create_student

    prompts = build_dataset("synthetic:3", "test").prompts
    tiny_teacher.set_classes(prompts.classnames, prompts.templates)  # the student's classes are the dataset's
    save_student(create_student("resnet_tiny", tiny_teacher, image_size=16, width=8), tmp_path / "student")
    out = tmp_path / "report.json"
    argv = ["eval", "--data", "synthetic:3", "--attacks", "clean", "fgsm", "--n-examples", "8", "--no-checks"]
    assert cli.main([*argv, "--model", str(tmp_path / "student"), "--output", str(out), "--eps", "4/255"]) == 0
    report = json.loads(out.read_text())
    assert report["eps_text"] == "4/255" and report["n_examples"] == 8 and "fgsm" in report["robust_accuracy"]
    assert "| fgsm |" in capsys.readouterr().out

    monkeypatch.setattr(teachers, "create_teacher", lambda name: tiny_teacher)
    assert cli.main([*argv, "--model", "tiny-teacher"]) == 0
    assert "Robustness of tiny-teacher on synthetic:3 (test)" in capsys.readouterr().out
    assert tiny_teacher.classnames == ["class 0", "class 1", "class 2"]  # set from the dataset's prompts

