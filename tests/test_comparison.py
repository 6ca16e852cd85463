"""Per-example outcomes in robustness reports and the paired comparison of two models on the same images."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from robust_student import evaluate_robustness
from robust_student.attacks import LinfBall
from robust_student.comparison import paired_difference
from robust_student.data.synthetic import Synthetic
from robust_student.evaluation import RobustnessReport


def _report(model: str, outcomes: str, **extra) -> RobustnessReport:
    n = len(outcomes)
    fields = dict(dataset="d", model=model, threat="linf", eps=0.1, n_examples=n, clean_accuracy=1.0,
                  robust_accuracy={"autoattack": outcomes.count("1") / n}, per_class={}, attack_settings={},
                  checks=[], seed=0, versions={}, selection=f"all {n}",
                  per_example={"clean": "1" * n, "autoattack": outcomes})
    return RobustnessReport(**{**fields, **extra})


def test_per_example_outcomes_agree_with_the_accuracies():
    data = Synthetic(40, 3, 4, seed=2, pattern_seed=0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 3)).eval()
    report = evaluate_robustness(model, data, ["clean", "fgsm", "pgd20"], LinfBall(8 / 255), n_examples=30,
                                 checks=False, progress=False)
    assert set(report.per_example) == {"clean", "fgsm", "pgd20"}
    for name, bits in report.per_example.items():
        accuracy = report.clean_accuracy if name == "clean" else report.robust_accuracy[name]
        assert len(bits) == 30 and set(bits) <= {"0", "1"} and bits.count("1") / 30 == pytest.approx(accuracy)
    # robust implies clean, per image
    assert all(c == "1" for c, r in zip(report.per_example["clean"], report.per_example["pgd20"]) if r == "1")
    again = RobustnessReport.from_dict(report.to_dict())  # survives the JSON round trip
    assert again.per_example == report.per_example


def test_paired_difference_and_its_standard_error(tmp_path):
    a, b = _report("a", "1101101111"), _report("b", "1011001101")
    result = paired_difference(a, b)
    diffs = [1 if p > q else -1 if p < q else 0 for p, q in zip("1101101111", "1011001101")]
    mean = sum(diffs) / 10
    se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 9 / 10)
    assert (result.only_a, result.only_b, result.n) == (3, 1, 10)
    assert result.difference == pytest.approx(0.2) == pytest.approx(result.a_accuracy - result.b_accuracy)
    assert result.standard_error == pytest.approx(se) and result.z == pytest.approx(0.2 / se)
    path = tmp_path / "a.json"
    a.save_json(path)
    assert paired_difference(path, b.to_dict()) == result  # files and dicts too
    assert paired_difference(a, a).z == 0.0


@pytest.mark.parametrize("change, message", [
    ({"seed": 1}, "not of the same images .*seed: 0 vs 1"),
    ({"eps": 8 / 255}, "not of the same images .*eps"),
    ({"per_example": {"clean": "1" * 10}}, "no per-example outcomes for 'autoattack' in the report.* of b"),
])
def test_reports_of_different_images_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        paired_difference(_report("a", "1" * 10), _report("b", "1" * 10, **change))


def test_robust_student_compare_prints_and_writes_the_paired_table(tmp_path, capsys):
    import json

    from robust_student.cli import main

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    _report("a", "1101101111").save_json(a)
    _report("b", "1011001101").save_json(b)
    assert main(["compare", str(a), str(b), "--output", str(tmp_path / "c.json")]) == 0
    out = capsys.readouterr().out
    assert "A = a, B = b: 10 images of d (all 10), linf eps 0.1" in out
    assert "| autoattack | 80.00 % | 60.00 % | +20.0 pts |" in out and "| clean | 100.00 % | 100.00 % | +0.0 pts |" in out
    saved = json.loads((tmp_path / "c.json").read_text())
    assert [c["attack"] for c in saved["comparisons"]] == ["clean", "autoattack"]
    assert saved["comparisons"][1]["only_a"] == 3


def test_compare_refuses_reports_of_other_images_in_one_line(tmp_path, capsys):
    from robust_student.cli import main

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    _report("a", "1" * 10).save_json(a)
    _report("b", "1" * 10, seed=4).save_json(b)
    assert main(["compare", str(a), str(b)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("robust-student compare: error: the two reports are not of the same images (seed: 0 vs 4)")
    assert "\n" not in err
