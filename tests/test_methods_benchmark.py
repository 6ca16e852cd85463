"""benchmarks/methods_fmnist.py keeps finished rows in its committed JSON, so a later session (with no workdir)
neither trains nor evaluates them again, and two processes with different ``--runs`` merge into one output.
Training and evaluation are replaced by fakes: no data, no models, milliseconds."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def bench(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # methods_fmnist imports its lock helpers from reproduce
    spec = importlib.util.spec_from_file_location("methods_fmnist_benchmark", BENCHMARKS / "methods_fmnist.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    calls: list[tuple[str, str]] = []

    def fake_warm(label, classes, args, workdir):
        calls.append(("warm", label))
        (workdir / label).mkdir(parents=True, exist_ok=True)  # the trainer's log: its last loss identifies the start
        (workdir / label / "metrics.jsonl").write_text(json.dumps({"kind": "train", "loss": run.warm_loss}) + "\n")
        return {"label": label, "steps": 10, "cpu_capability": "AVX2"}

    def fake_train(label, args, workdir):
        calls.append(("train", label))
        return {"label": label, "train_seconds": 1.0, "finite": True, "history": []}

    def fake_eval(label, args, workdir):
        calls.append(("eval", label))
        summary = {"n": args.n_eval, "clean": 0.5, "robust": {"pgd20": 0.25}, "failed_checks": []}
        return {"all eps 0.1": {"main": summary}}

    monkeypatch.setattr(module, "warm_start", fake_warm)
    monkeypatch.setattr(module, "train_run", fake_train)
    monkeypatch.setattr(module, "evaluate_run", fake_eval)

    def run(*argv: str, workdir: str = "w1") -> list[tuple[str, str]]:
        calls.clear()
        monkeypatch.setattr(sys, "argv", ["methods_fmnist.py", "--workdir", str(tmp_path / workdir), "--output",
                                          str(tmp_path / "out" / "methods"), *argv])
        module.main()
        return list(calls)

    run.output = tmp_path / "out" / "methods.json"
    run.warm_loss = 0.25
    return run


def test_rows_in_the_committed_json_are_not_trained_again_in_a_new_workdir(bench):
    assert bench("--runs", "ciard", "hpt-gpd") == [("warm", "kd-warmstart"), ("train", "ciard"), ("eval", "ciard"),
                                                  ("train", "hpt-gpd"), ("eval", "hpt-gpd")]
    # another process / a later session: a fresh workdir, other rows; the stored ones are kept and merged
    assert bench("--runs", "dual-kl", "ciard", workdir="w2") == [("warm", "kd-warmstart"), ("train", "dual-kl"),
                                                                ("eval", "dual-kl")]
    stored = json.loads(bench.output.read_text())
    assert list(stored["runs"]) == ["ciard", "dual-kl", "hpt-gpd"]  # in the benchmark's row order
    assert "| dual-kl | 50.0 | 25.0 |" in bench.output.with_suffix(".md").read_text()
    # only the clip student: no warm start is trained
    assert bench("--runs", "hpt-gpd", "hpt-gpd-same-arch", workdir="w3") == [("train", "hpt-gpd-same-arch"),
                                                                            ("eval", "hpt-gpd-same-arch")]


def test_other_evaluation_settings_evaluate_again_and_other_training_settings_are_refused(bench):
    bench("--runs", "ciard")
    assert bench("--runs", "ciard", "--n-eval", "300") == [("eval", "ciard")]  # same workdir: trained row reused
    assert json.loads(bench.output.read_text())["runs"]["ciard"]["eval_settings"]["n_eval"] == 300
    with pytest.raises(SystemExit, match="trained with other settings"):
        bench("--runs", "ciard", "--epochs", "4", workdir="w9")
    assert bench("--runs", "ciard", "--epochs", "4", "--fresh", workdir="w9")[1:] == [("train", "ciard"),
                                                                                      ("eval", "ciard")]


def test_reevaluate_evaluates_stored_rows_again_and_refuses_rows_without_their_student(bench):
    bench("--runs", "heldout-rslad-adv")
    assert bench("--runs", "heldout-rslad-adv", "--reevaluate") == [("eval", "heldout-rslad-adv")]
    with pytest.raises(SystemExit, match="--reevaluate needs each row's trained student"):
        bench("--runs", "heldout-rslad-adv", "--reevaluate", workdir="w2")  # stored, but its student is not here


def test_new_rows_must_start_from_the_warm_start_the_stored_rows_recorded(bench):
    bench("--runs", "rslad-adv", "hpt-gpd")
    stored = json.loads(bench.output.read_text())["runs"]
    assert stored["rslad-adv"]["warm_start"] == {"label": "kd-warmstart", "steps": 10,
                                                 "last_terms": {"kind": "train", "loss": 0.25}, "cpu_capability": "AVX2"}
    assert "warm_start" not in stored["hpt-gpd"]  # the clip student starts from the teacher's tower, not a warm start
    # another machine: the warm start trained again ends elsewhere, so new rows would not pair with the stored ones
    bench.warm_loss = 0.2500001
    with pytest.raises(SystemExit, match=r"not the one stored rows rslad-adv started from \(final loss 0.25"):
        bench("--runs", "mmt-ard", workdir="w2")
    assert bench("--runs", "hpt-gpd-same-arch", workdir="w2")[-1] == ("eval", "hpt-gpd-same-arch")  # no warm start
    # --retrain replaces the stored row with one from this warm start; then new rows pair with it
    assert bench("--runs", "rslad-adv", "mmt-ard", "--retrain", "rslad-adv", workdir="w2") == [
        ("train", "rslad-adv"), ("eval", "rslad-adv"), ("train", "mmt-ard"), ("eval", "mmt-ard")]
    # a stored row without a record (written before rows recorded it) cannot be paired with
    data = json.loads(bench.output.read_text())
    del data["runs"]["rslad-adv"]["warm_start"]
    bench.output.write_text(json.dumps(data))
    with pytest.raises(SystemExit, match="rslad-adv did not record the warm start .* --retrain rslad-adv"):
        bench("--runs", "ard-adv", workdir="w2")
    with pytest.raises(SystemExit, match="name them in --runs too"):
        bench("--runs", "ard-adv", "--retrain", "rslad-adv", workdir="w2")


def test_teacher_reference_row_is_the_teacher_zero_shot(monkeypatch, tmp_path):
    import torch

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("methods_fmnist_reference", BENCHMARKS / "methods_fmnist.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from robust_student import build_dataset, create_teacher, load_student
    from robust_student.config import DataConfig

    run = module.reference_run("heldout-teacher", tmp_path)
    assert run["method"] == "none" and run["train_seconds"] == 0.0
    student = load_student(tmp_path / "heldout-teacher" / "student").eval()
    data = build_dataset(DataConfig(name="fashion-mnist", classes=module.SEEN), "test")
    teacher = create_teacher(module.CLEAN)
    teacher.set_classes(data.prompts.classnames, data.prompts.templates)
    x = torch.stack([data[i]["image"] for i in range(8)])
    with torch.no_grad():
        torch.testing.assert_close(student(x), teacher(x).float(), rtol=1e-4, atol=1e-3)
