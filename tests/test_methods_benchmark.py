"""benchmarks/methods_fmnist.py keeps finished rows in its committed JSON, so a later session (with no workdir)
neither trains nor evaluates them again, and two processes with different ``--runs`` merge into one output.
Training and evaluation are replaced by fakes: no data, no models, milliseconds."""

from __future__ import annotations

import importlib.util
import json
import shutil
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
        (workdir / label / "student").mkdir()
        (workdir / label / "student" / "model.safetensors").write_text(f"weights ending at loss {run.warm_loss}")
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

    def run(*argv: str, workdir: str = "w1", warm_first: bool = False) -> list[tuple[str, str]]:
        if warm_first:  # a warm start trained in the workdir before, by this machine
            fake_warm("kd-warmstart", None, None, tmp_path / workdir)
            (tmp_path / workdir / "kd-warmstart" / "result.json").write_text(json.dumps({"steps": 10}))
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
    # another process / a later session: a fresh workdir, other rows; the stored ones are kept and merged, and the
    # warm start kept beside the results is used instead of being trained again
    assert bench("--runs", "dual-kl", "ciard", workdir="w2") == [("train", "dual-kl"), ("eval", "dual-kl")]
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
    # The warm start is kept beside the results: another machine (whose kernels would end it elsewhere) uses it.
    kept = bench.output.parent / "methods_warm_starts" / "kd-warmstart"
    record = json.loads((kept / "record.json").read_text())
    assert record["last_terms"] == {"kind": "train", "loss": 0.25} and len(record["sha256"]) == 64
    bench.warm_loss = 0.2500001
    assert bench("--runs", "mmt-ard", workdir="w4") == [("train", "mmt-ard"), ("eval", "mmt-ard")]
    assert json.loads(bench.output.read_text())["runs"]["mmt-ard"]["warm_start"]["last_terms"]["loss"] == 0.25
    with pytest.raises(SystemExit, match="holds a warm start other than the one kept"):
        bench("--runs", "ard-adv", workdir="w1b", warm_first=True)  # one trained there before: refused, not mixed
    # Rows stored before warm starts were kept: the one trained again ends elsewhere and new rows are refused.
    shutil.rmtree(kept)
    with pytest.raises(SystemExit, match=r"not the one stored rows mmt-ard, rslad-adv started from \(final loss 0.25"):
        bench("--runs", "dual-kl", workdir="w2")
    assert bench("--runs", "hpt-gpd-same-arch", workdir="w2")[-1] == ("eval", "hpt-gpd-same-arch")  # no warm start
    # --retrain replaces the stored row with one from this warm start; then new rows pair with it
    assert bench("--runs", "rslad-adv", "mmt-ard", "--retrain", "rslad-adv", "mmt-ard", workdir="w2") == [
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
