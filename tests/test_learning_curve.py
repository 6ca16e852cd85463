"""benchmarks/learning_curve.py: the trainer's time-stamped validation records become a curve against CPU hours."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "learning_curve.py"


@pytest.fixture(scope="module")
def curve():
    spec = importlib.util.spec_from_file_location("learning_curve_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(folder: Path, points: list[tuple[float, float, float]], clocks: bool = True) -> Path:
    folder.mkdir(parents=True)
    lines = [{"kind": "train", "epoch": 0, "step": 1, "loss": 2.0}]
    for epoch, (cpu, clean, robust) in enumerate(points):
        record = {"kind": "eval", "epoch": epoch, "step": 10 * (epoch + 1), "val_clean_acc": clean,
                  "val_robust_acc": robust, "val_attack": "pgd:10 linf eps=0.1", "val_examples": 500}
        if clocks:
            record.update(cpu_seconds=cpu, train_seconds=cpu / 2)
        lines.append(record)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return folder


def test_plots_each_runs_validation_points_at_their_cpu_hours(curve, tmp_path):
    a = _run(tmp_path / "a", [(3600, 0.7, 0.5), (7200, 0.8, 0.6)])
    b = _run(tmp_path / "b", [(1800, 0.6, 0.4)])
    report = tmp_path / "eval.json"
    report.write_text(json.dumps({"clean_accuracy": 0.81, "robust_accuracy": {"pgd20": 0.6, "autoattack": 0.55},
                                  "n_examples": 500, "eps": 0.1}))
    stem = tmp_path / "out" / "curve"
    assert curve.main([f"{a}=flagship", str(b), "--final", f"flagship={report}", "--out", str(stem)]) == 0
    record = json.loads(stem.with_suffix(".json").read_text())
    assert stem.with_suffix(".png").stat().st_size > 1000
    assert list(record["runs"]) == ["flagship", "b"]
    flagship = record["runs"]["flagship"]
    assert [(p["epoch"], p["cpu_hours"], p["clean"], p["robust"]) for p in flagship["curve"]] == \
        [(1, 1.0, 0.7, 0.5), (2, 2.0, 0.8, 0.6)]
    assert flagship["final"]["attack"] == "autoattack" and flagship["final"]["robust"] == 0.55
    assert record["runs"]["b"]["curve"][0]["cpu_hours"] == 0.5 and "final" not in record["runs"]["b"]


def test_refuses_runs_it_cannot_place_against_compute(curve, tmp_path):
    with pytest.raises(SystemExit, match="no metrics.jsonl"):
        curve.main([str(tmp_path / "missing"), "--out", str(tmp_path / "x")])
    old = _run(tmp_path / "old", [(0, 0.7, 0.5)], clocks=False)
    with pytest.raises(SystemExit, match="no cpu_seconds"):
        curve.main([str(old), "--out", str(tmp_path / "x")])
    run = _run(tmp_path / "run", [(60, 0.7, 0.5)])
    with pytest.raises(SystemExit, match="one of the run labels"):
        curve.main([str(run), "--final", "other=r.json", "--out", str(tmp_path / "x")])


def test_a_shipped_zoo_entry_is_redrawn_from_its_training_json(curve, tmp_path):
    from robust_student.teachers.builtin import WEIGHTS_DIR

    folder = WEIGHTS_DIR / "fmnist-clip-robust"
    history = [r for r in json.loads((folder / "training.json").read_text())["history"] if r["kind"] == "eval"]
    points = curve.read_curve(folder)
    assert points == curve.read_curve(folder / "training.json")
    assert [(p["epoch"], p["robust"]) for p in points] == [(r["epoch"] + 1, r["val_robust_acc"]) for r in history]


def test_a_run_initialised_from_another_is_plotted_after_its_compute(curve, tmp_path):
    base = _run(tmp_path / "base", [(3600, 0.7, 0.5), (7200, 0.8, 0.6)])
    more = _run(tmp_path / "more", [(1800, 0.82, 0.63)])
    stem = tmp_path / "curve"
    assert curve.main([f"{base}=base", f"{more}=more", "--continues", "more=base", "--out", str(stem)]) == 0
    runs = json.loads(stem.with_suffix(".json").read_text())["runs"]
    assert [(p["cpu_hours"], p["robust"]) for p in runs["more"]["curve"]] == [(2.0, 0.6), (2.5, 0.63)]
    assert runs["more"]["curve"][0]["initialisation"] and runs["more"]["continues"] == str(base)
    assert [p["cpu_hours"] for p in runs["base"]["curve"]] == [1.0, 2.0]
    with pytest.raises(SystemExit, match="two different run labels"):
        curve.main([f"{base}=base", "--continues", "base=base", "--out", str(stem)])
