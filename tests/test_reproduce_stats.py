"""The paired-difference arithmetic of benchmarks/reproduce.py, by hand: no training, no data, milliseconds."""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "reproduce.py"


@pytest.fixture(scope="module")
def reproduce():
    spec = importlib.util.spec_from_file_location("reproduce_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paired_difference_by_hand(reproduce):
    # d = [0, 1, 0, -1, 1]: mean 0.2, sample var ((.2^2)*2 + .8^2*2 + 1.2^2) / 4 = 0.7, se = sqrt(0.7 / 5)
    a = [True, True, False, False, True]
    b = [True, False, False, True, False]
    out = reproduce.paired_difference(a, b)
    assert out["n"] == 5
    assert out["diff"] == pytest.approx(0.2)
    assert out["se"] == pytest.approx(math.sqrt(0.7 / 5))


def test_paired_difference_edge_cases(reproduce):
    same = reproduce.paired_difference([True, False, True], [True, False, True])
    assert same["diff"] == 0 and same["se"] == 0
    assert reproduce.paired_difference([True], [False]) == {"diff": 1.0, "se": None, "n": 1}
    with pytest.raises(ValueError, match="length"):
        reproduce.paired_difference([True], [True, False])
    with pytest.raises(ValueError, match="no images"):
        reproduce.paired_difference([], [])


def test_combine_seeds_takes_the_larger_of_image_and_seed_error(reproduce):
    # two seeds: diffs 0.10 and 0.02, se 0.03 and 0.04
    out = reproduce.combine_seeds([{"diff": 0.10, "se": 0.03, "n": 500}, {"diff": 0.02, "se": 0.04, "n": 200}])
    assert out["diff"] == pytest.approx(0.06)
    assert out["se_images"] == pytest.approx(math.sqrt(0.03**2 + 0.04**2) / 2)  # 0.025
    assert out["se_seeds"] == pytest.approx(math.sqrt(((0.04**2) * 2) / 1) / math.sqrt(2))  # sd 0.0566 / 1.414
    assert out["se"] == pytest.approx(max(out["se_images"], out["se_seeds"]))
    assert out["n_seeds"] == 2 and out["n_images"] == 700
    # one seed: only the image-sampling error exists
    one = reproduce.combine_seeds([{"diff": 0.05, "se": 0.01, "n": 500}])
    assert one["diff"] == 0.05 and one["se"] == one["se_images"] == pytest.approx(0.01) and one["se_seeds"] is None


def test_verdict(reproduce):
    up = {"diff": 0.05, "se": 0.01}
    flat = {"diff": 0.01, "se": 0.01}
    down = {"diff": -0.05, "se": 0.01}
    assert reproduce.verdict([up, up]) == "supported"
    assert reproduce.verdict([up, flat]) == "inconclusive"
    assert reproduce.verdict([up, down]) == "contradicted"
    assert reproduce.verdict([{"diff": 0.5, "se": None}]) == "inconclusive"


def test_paired_rows_from_stored_vectors(reproduce):
    """``paired`` reads the stored bit strings, pairs per seed and refuses vectors of different images."""
    def row(bits: str, images: str = "abc") -> dict:
        return {"eval": {"vectors": {"autoattack": {"correct": bits, "images": images, "n": len(bits)}}}}

    results = {"seeds": {"0": {"rows": {"x": row("1100"), "rslad": row("1000")}},
                         "1": {"rows": {"x": row("10"), "rslad": row("01")}}}}
    out = reproduce.paired(results, "x", "rslad", "autoattack")
    seed0 = reproduce.paired_difference([1, 1, 0, 0], [1, 0, 0, 0])
    seed1 = reproduce.paired_difference([1, 0], [0, 1])
    assert out == reproduce.combine_seeds([seed0, seed1])
    assert reproduce.paired(results, "x", "missing", "autoattack") is None
    results["seeds"]["0"]["rows"]["x"] = row("1100", images="other")
    with pytest.raises(ValueError, match="different images"):
        reproduce.paired(results, "x", "rslad", "autoattack")


def test_bits_round_trip(reproduce):
    flags = [True, False, False, True]
    assert reproduce.bits(flags) == "1001" and reproduce.unbits("1001") == flags


def test_vectors_match_a_float32_report_but_not_one_image_off(reproduce):
    import torch

    n = 500
    accuracy = {"clean": 372 / n, "fgsm": 293 / n, "pgd20": 263 / n, "cw20": 266 / n}
    as_float32 = {k: torch.tensor(v, dtype=torch.float32).item() for k, v in accuracy.items()}  # 0.744 -> 0.7440000176
    report = {"clean_accuracy": as_float32["clean"],
              "robust_accuracy": {k: as_float32[k] for k in accuracy if k != "clean"}}
    assert as_float32["clean"] != accuracy["clean"]  # an exact comparison would flag this as a mismatch
    assert reproduce.vectors_match_report(accuracy, report, n)
    report["robust_accuracy"]["pgd20"] = 264 / n
    assert not reproduce.vectors_match_report(accuracy, report, n)


def test_the_ordering_claim_is_contradicted_by_a_reversal_its_adjacent_steps_hide(reproduce):
    """DGHFA > AdaAD > RSLAD: each adjacent step within 2 SE, but DGHFA below RSLAD by more than 2 SE."""
    n = 400

    def row(correct: int) -> dict:
        vector = "1" * correct + "0" * (n - correct)
        vectors = {col: {"correct": vector, "images": "same", "n": n} for col in reproduce.COLUMNS}
        return {"eval": {"vectors": vectors, "accuracy": {col: correct / n for col in reproduce.COLUMNS}}}

    # nested correct sets: each adjacent step loses 3 of 400 images (-0.75 +- 0.43 points: 1.7 SE), the two
    # together 6 (-1.5 +- 0.61 points: 2.4 SE)
    results = {"settings": {"adv_teacher": "a", "proxy_teacher": "p"},
               "seeds": {"0": {"rows": {"rslad": row(220), "adaad": row(217), "dghfa": row(214)}}}}
    (claim, status, evidence), *_ = reproduce.claims(results)
    assert claim.startswith("DGHFA > AdaAD > RSLAD")
    assert "dghfa − adaad AutoAttack -0.8 ± 0.4" in evidence and "dghfa − rslad AutoAttack -1.5 ± 0.6" in evidence
    assert status.startswith("not supported (contradicted")


def _rows(reproduce, n: int, **correct: dict[str, int]) -> dict:
    """Stored rows with the first ``k`` of ``n`` images correct, per column (nested sets: paired by hand)."""
    rows = {}
    for label, per_column in correct.items():
        vectors = {col: {"correct": "1" * per_column.get(col, 0) + "0" * (n - per_column.get(col, 0)),
                         "images": "same", "n": n} for col in reproduce.COLUMNS}
        rows[label] = {"eval": {"vectors": vectors,
                                "accuracy": {c: v["correct"].count("1") / n for c, v in vectors.items()}}}
    return {"settings": {"adv_teacher": "a", "proxy_teacher": "p"}, "seeds": {"0": {"rows": rows}}}


def test_a_clean_gain_claim_fails_when_autoattack_is_lost_whatever_the_clean_verdict(reproduce):
    # clean +3 of 400 (inconclusive), AutoAttack -40 of 400 (far below -2 SE)
    results = _rows(reproduce, 400, rslad={"clean": 300, "autoattack": 200}, ciard={"clean": 303, "autoattack": 160})
    status = {c: s for c, s, _ in reproduce.claims(results)}
    ciard = next(v for k, v in status.items() if k.startswith("CIARD"))
    assert ciard == "not supported (AutoAttack accuracy lost beyond 2 SE)"


def test_a_robustness_gain_that_costs_the_clean_accuracy_says_so(reproduce):
    results = _rows(reproduce, 400, teacher={"clean": 360, "autoattack": 0}, hpt_gpd={"clean": 80, "autoattack": 32})
    results["seeds"]["0"]["rows"]["hpt-gpd"] = results["seeds"]["0"]["rows"].pop("hpt_gpd")
    claim, status, evidence = next(c for c in reproduce.claims(results) if c[0].startswith("HPT-GPD"))
    assert status == "supported for AutoAttack, but the tower loses clean accuracy beyond 2 SE"
    assert "hpt-gpd − teacher AutoAttack +8.0" in evidence and "clean -70.0" in evidence


def test_a_retrained_warm_start_must_match_the_stored_one(reproduce):
    stored = {"steps": 314, "last_terms": {"loss": 0.11660168319940567}}
    assert reproduce.same_warm_start(stored, {"steps": 314, "last_terms": {"loss": 0.11660168319940567}})
    assert not reproduce.same_warm_start(stored, {"steps": 314, "last_terms": {"loss": 0.11660168319940568}})
    assert not reproduce.same_warm_start(stored, {"steps": 313, "last_terms": {"loss": 0.11660168319940567}})


def _fake_student(workdir: Path, weights: bytes) -> None:
    student = workdir / "kd-warmstart" / "student"
    student.mkdir(parents=True, exist_ok=True)
    (student / "model.safetensors").write_bytes(weights)
    (student / "config.json").write_text("{}")


def test_the_warm_start_is_checked_every_time_a_row_needs_it(reproduce, monkeypatch, tmp_path):
    # A refused warm start stays in the workdir "for inspection"; the next run must refuse it again, not train on it.
    stored = {"steps": 314, "last_terms": {"loss": 0.11660168319940567}, "cpu_capability": "AVX512"}
    results = {"seeds": {"0": {"rows": {"rslad": {}, "teacher": {}}, "warm_start": stored}}}
    args = argparse.Namespace(seed=0, n_eval=500, n_aa=500, lr=0.003)
    trained = {"steps": 314, "last_terms": {"loss": 0.11332300305366516}}
    monkeypatch.setattr(reproduce, "fit_row", lambda label, args, workdir: dict(trained))
    recorded = []
    monkeypatch.setattr(reproduce, "update_results", lambda output, args, change: recorded.append(change) or results)
    work, out = tmp_path / "w1", tmp_path / "out"
    _fake_student(work, b"weights trained here")
    for _ in range(2):
        with pytest.raises(SystemExit, match=r"differs .*\(rslad\) .*AVX512 there"):
            reproduce.use_warm_start(results, args, work, out)
    assert not recorded and not (tmp_path / "out_warm_starts").exists()  # a refused warm start is not kept
    # The one the rows started from: kept beside the results, its sha256 added to the seed's record.
    trained["last_terms"] = dict(stored["last_terms"])
    assert reproduce.use_warm_start(results, args, work, out) is results
    copy = tmp_path / "out_warm_starts" / "seed0"
    sha = hashlib.sha256(b"weights trained here").hexdigest()
    record = json.loads((copy / "record.json").read_text())
    assert record["sha256"] == sha and record["last_terms"] == stored["last_terms"]
    assert (copy / "student" / "model.safetensors").read_bytes() == b"weights trained here"
    assert len(recorded) == 1
    recorded[0](results, results["seeds"]["0"])
    assert stored["sha256"] == sha
    # Another machine, another session: the kept copy is used as it is, nothing is trained.
    monkeypatch.setattr(reproduce, "fit_row", lambda label, args, workdir: pytest.fail("trained the warm start"))
    assert reproduce.use_warm_start(results, args, tmp_path / "w2", out) is results and len(recorded) == 1
    assert (tmp_path / "w2" / "kd-warmstart" / "student" / "model.safetensors").read_bytes() == b"weights trained here"
    assert json.loads((tmp_path / "w2" / "kd-warmstart" / "train.json").read_text())["sha256"] == sha
    # ... but not next to another warm start, nor when the copy was changed or kept under other settings.
    _fake_student(tmp_path / "w3", b"another machine's weights")
    with pytest.raises(SystemExit, match="holds a warm start other than the one kept"):
        reproduce.use_warm_start(results, args, tmp_path / "w3", out)
    args.lr = 0.001
    with pytest.raises(SystemExit, match=r"kept in .* other settings \(lr 0.001 \(stored 0.003\)\)"):
        reproduce.use_warm_start(results, args, tmp_path / "w2", out)
    args.lr = 0.003
    (copy / "student" / "model.safetensors").write_bytes(b"edited")
    with pytest.raises(SystemExit, match="is not the one its record.json names"):
        reproduce.use_warm_start(results, args, tmp_path / "w2", out)
    # No stored row started from a warm start yet (teacher rows do not): this one is recorded with the seed.
    results["seeds"]["0"]["rows"] = {"teacher": {}}
    monkeypatch.setattr(reproduce, "fit_row", lambda label, args, workdir: dict(trained))
    trained["last_terms"] = {"loss": 0.5}
    reproduce.use_warm_start(results, args, work, tmp_path / "out2")
    entry = {}
    recorded[-1](results, entry)
    assert entry["warm_start"]["last_terms"] == {"loss": 0.5} and entry["warm_start"]["sha256"] == sha
    assert entry["warm_start"]["cpu_capability"] == reproduce.cpu_capability()


def test_a_seed_rerun_elsewhere_is_adopted_with_its_warm_start_only_when_asked(reproduce, monkeypatch, tmp_path):
    monkeypatch.setattr(reproduce, "to_markdown", lambda results: "table\n")
    monkeypatch.setattr(reproduce, "plot", lambda results, path: None)
    args = argparse.Namespace(seed=0, n_eval=500, n_aa=500, lr=0.003, fresh=False, adopt=None)
    every, mine = reproduce.settings_of(args)
    rerun, committed = tmp_path / "rerun" / "reproduce", tmp_path / "results" / "reproduce"
    rows = {"rslad": {"eval": "rerun"}, "teacher": {"eval": "rerun"}}
    reproduce.write_json(rerun.with_suffix(".json"), {"settings": every, "seeds": {"0": {
        "rows": rows, "settings": mine, "notes": "AVX2", "warm_start": {"steps": 314}}}})
    old = {"settings": every, "seeds": {"0": {"rows": {"rslad": {"eval": "old"}}, "settings": mine},
                                        "1": {"rows": {"kd": {}}, "settings": {**mine, "seed": 1}}}}
    reproduce.write_json(committed.with_suffix(".json"), old)
    with pytest.raises(SystemExit, match="no kept warm start"):  # rslad started from one: it must come along
        reproduce.adopt_seed(committed, rerun, args)
    copy = tmp_path / "rerun" / "reproduce_warm_starts" / "seed0"
    (copy / "student").mkdir(parents=True)
    (copy / "student" / "model.safetensors").write_bytes(b"w")
    record = {"sha256": hashlib.sha256(b"w").hexdigest(), "settings": {**every, **mine}}
    (copy / "record.json").write_text(json.dumps(record))
    with pytest.raises(SystemExit, match="holds seed 0 already: pass --fresh"):
        reproduce.adopt_seed(committed, rerun, args)
    assert json.loads(committed.with_suffix(".json").read_text()) == old  # nothing replaced without --fresh
    args.fresh = True
    args.lr = 0.001
    with pytest.raises(SystemExit, match="other settings"):
        reproduce.adopt_seed(committed, rerun, args)
    args.lr = 0.003
    reproduce.adopt_seed(committed, rerun, args)
    now = json.loads(committed.with_suffix(".json").read_text())
    assert now["seeds"]["0"]["rows"] == rows and now["seeds"]["0"]["notes"] == "AVX2"
    assert now["seeds"]["1"] == old["seeds"]["1"]  # other seeds stay
    kept = tmp_path / "results" / "reproduce_warm_starts" / "seed0" / "student" / "model.safetensors"
    assert kept.read_bytes() == b"w"
    (copy / "student" / "model.safetensors").write_bytes(b"edited")
    with pytest.raises(SystemExit, match="is not the one its record.json names"):
        reproduce.adopt_seed(committed, rerun, args)


def test_a_rerun_is_compared_cell_by_cell_with_the_committed_spread(reproduce):
    spec = importlib.util.spec_from_file_location("reproduce_rerun", SCRIPT.with_name("reproduce_rerun.py"))
    rerun_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rerun_check)

    def row(correct):
        vector = {"images": "digest", "correct": reproduce.bits(correct)}
        return {"eval": {"vectors": {c: vector for c in reproduce.COLUMNS},
                         "accuracy": {c: sum(correct) / len(correct) for c in reproduce.COLUMNS}}}

    settings = {"adv_teacher": "a", "proxy_teacher": "p"}
    ten = [True] * 5 + [False] * 5
    committed = {"settings": settings, "seeds": {"0": {"rows": {"rslad": row(ten), "kd": row(ten)}},
                                                 "1": {"rows": {"rslad": row([True] * 7 + [False] * 3)}}}}
    rerun = {"settings": settings, "seeds": {"0": {"rows": {"rslad": row([True] * 6 + [False] * 4),
                                                            "kd": row([True] * 9 + [False])}}}}
    result = rerun_check.compare(committed, rerun, 0)
    rslad = [c for c in result["cells"] if c["row"] == "rslad"]
    assert all(c["diff"] == pytest.approx(0.1) and c["sd_seeds"] == pytest.approx(math.sqrt(0.02)) for c in rslad)
    assert all(c["within"] for c in rslad)  # 10 points vs 2 x 14.1 points of seed spread
    assert all(c["within"] is None for c in result["cells"] if c["row"] == "kd")  # one committed seed: no spread
    assert "**6 of 6 cells within" in rerun_check.to_markdown(result, ("a.json", "b.json"))
    assert result["claims"]["with_rerun"] is not None
    partial = {"settings": settings, "seeds": {"0": {"rows": {"rslad": row(ten)}}}}
    assert rerun_check.compare(committed, partial, 0)["claims"]["with_rerun"] is None  # kd missing: no verdicts
    rerun["seeds"]["0"]["rows"]["rslad"] = row([True] * 10)  # +50 points: beyond 2 sd and 2 SE
    assert not any(c["within"] for c in rerun_check.compare(committed, rerun, 0)["cells"] if c["row"] == "rslad")
    rerun["seeds"]["0"]["rows"]["rslad"]["eval"]["vectors"]["clean"] = {"images": "other", "correct": ""}
    with pytest.raises(SystemExit, match="other images"):
        rerun_check.compare(committed, rerun, 0)
    with pytest.raises(SystemExit, match="other settings"):
        rerun_check.compare(committed, {**rerun, "settings": {"adv_teacher": "b"}}, 0)


def test_each_seeds_note_is_shown_under_its_seed(reproduce):
    """With several seeds a bare note is ambiguous: the committed table's notes name their seed."""
    results = json.loads((SCRIPT.parent / "results" / "reproduce.json").read_text())
    for entry in results["seeds"].values():  # however many seeds the committed table holds
        entry["notes"] = ""
    results["seeds"]["0"]["notes"], results["seeds"]["1"]["notes"] = "rerun on AVX2", "first run"
    notes = reproduce.to_markdown(results).split("## Notes", 1)[1].strip().splitlines()
    assert notes == ["- seed 0: rerun on AVX2", "- seed 1: first run"]
