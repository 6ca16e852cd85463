"""Learning curves against compute: validation clean and robust accuracy of one or more runs vs CPU hours.

    python benchmarks/learning_curve.py runs/zoo/robust=fmnist-clip-robust \
        --final fmnist-clip-robust=robust_student/teachers/weights/fmnist-clip-robust/training.json \
        --out benchmarks/results/learning_curve_fmnist_clip_robust
    python benchmarks/learning_curve.py RUN_A=flagship RUN_B=pgd-at --final flagship=eval_a.json --out STEM
    python benchmarks/learning_curve.py robust_student/teachers/weights/fmnist-clip-robust=pgd-at ...  # a shipped one

Each run folder's ``metrics.jsonl`` holds one ``eval`` record per validation (clean and robust accuracy under
the run's ``val_attack`` on its validation images), stamped by the trainer with ``cpu_seconds`` (the training
process's CPU time, all threads, continued across resumes) and ``train_seconds`` (wall). ``--final`` adds a
test-set point from a ``robust-student eval --output`` report or a zoo teacher's ``training.json`` (its AutoAttack,
else PGD-20, accuracy) at the run's last CPU time. ``--continues B=A`` places run B, trained from A's final
weights (``student_init``), after A: its CPU hours start where A's end, and its line starts at A's last point, so
the curve counts all the compute behind B. Writes ``STEM.png`` and ``STEM.json`` (the points plotted, the machine, the command).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any


def read_curve(run_dir: Path) -> list[dict[str, Any]]:
    """The validation records of a run, in order: a run folder's ``metrics.jsonl``, or the ``history`` a zoo
    entry's ``training.json`` (or its folder) ships, so a shipped model's curve is redrawn from committed files.
    Refuses a run whose records carry no CPU time."""
    shipped = run_dir if run_dir.suffix == ".json" else run_dir / "training.json"
    path = run_dir / "metrics.jsonl"
    if shipped.is_file():
        records = json.loads(shipped.read_text())["history"]
    elif path.is_file():
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    else:
        raise SystemExit(f"{run_dir}: no metrics.jsonl (give a run folder written by robust-student fit) and no "
                         "training.json (a zoo entry's folder)")
    evals = [r for r in records if r.get("kind") == "eval"]
    if not evals:
        raise SystemExit(f"{run_dir}: no validation records yet (the first comes after the first epoch)")
    if any("cpu_seconds" not in r for r in evals):
        raise SystemExit(f"{run_dir}: its validation records have no cpu_seconds (trained before the trainer "
                         "recorded time); rerun it to plot it against compute")
    return [{"epoch": r["epoch"] + 1, "step": r["step"], "cpu_hours": r["cpu_seconds"] / 3600,
             "wall_hours": r["train_seconds"] / 3600, "clean": r["val_clean_acc"], "robust": r["val_robust_acc"],
             "attack": r["val_attack"], "n": r["val_examples"]} for r in evals]


def final_point(report_path: Path) -> dict[str, Any]:
    """A ``robust-student eval --output`` report, or a zoo teacher's ``training.json`` (its AutoAttack report)."""
    report = json.loads(report_path.read_text())
    if "zero_shot_test" in report:
        report = report["zero_shot_test"]["autoattack"]["report"]
    robust = report["robust_accuracy"]
    attack = "autoattack" if "autoattack" in robust else "pgd20"
    return {"report": str(report_path), "clean": report["clean_accuracy"], "robust": robust[attack],
            "attack": attack, "n": report["n_examples"], "eps": report["eps"]}


def continue_after(run: dict[str, Any], base: dict[str, Any]) -> None:
    """Shift ``run``'s curve by the compute of ``base``, whose final weights it started from, and start it at
    ``base``'s last validation point (what the run's weights were at step 0)."""
    start = base["curve"][-1]
    for point in run["curve"]:
        point["cpu_hours"] += start["cpu_hours"]
        point["wall_hours"] += start["wall_hours"]
    run["curve"].insert(0, dict(start, epoch=0, step=0, initialisation=True))
    run["continues"] = base["run_dir"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", metavar="RUN_DIR[=LABEL]", help="run folders (label: the folder name)")
    p.add_argument("--final", action="append", default=[], metavar="LABEL=REPORT.json",
                   help="a test-set report to mark at the end of the run with that label")
    p.add_argument("--continues", action="append", default=[], metavar="LABEL=BASE_LABEL",
                   help="LABEL was initialised from BASE_LABEL's final weights: plot it after BASE_LABEL's CPU hours")
    p.add_argument("--out", required=True, metavar="STEM", help="writes STEM.png and STEM.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs: dict[str, dict[str, Any]] = {}
    for spec in args.runs:
        folder, _, label = spec.partition("=")
        runs[label or Path(folder).name] = {"run_dir": folder, "curve": read_curve(Path(folder))}
    for spec in args.final:
        label, _, report = spec.partition("=")
        if label not in runs or not report:
            raise SystemExit(f"--final {spec}: give LABEL=REPORT.json with one of the run labels {sorted(runs)}")
        runs[label]["final"] = final_point(Path(report))
    for spec in args.continues:
        label, _, base = spec.partition("=")
        if label not in runs or base not in runs or label == base:
            raise SystemExit(f"--continues {spec}: give LABEL=BASE_LABEL, two different run labels of {sorted(runs)}")
        continue_after(runs[label], runs[base])

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.5, 4.2))
    for index, (label, run) in enumerate(runs.items()):
        color = f"C{index}"
        hours = [p["cpu_hours"] for p in run["curve"]]
        ax.plot(hours, [100 * p["clean"] for p in run["curve"]], "--o", color=color, ms=3, label=f"{label}: clean")
        ax.plot(hours, [100 * p["robust"] for p in run["curve"]], "-o", color=color, ms=3,
                label=f"{label}: {run['curve'][-1]['attack']}")
        if "final" in run:
            final = run["final"]
            ax.plot([hours[-1]], [100 * final["robust"]], "*", color=color, ms=12,
                    label=f"{label}: test {final['attack']} (n={final['n']})")
            ax.plot([hours[-1]], [100 * final["clean"]], "P", color=color, ms=8, label=f"{label}: test clean")
    ax.set_xlabel("training CPU hours (process CPU time, all threads)")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside: never over a point
    ax.set_title("validation accuracy against training compute", fontsize=10)
    fig.tight_layout()
    stem = Path(args.out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(stem.with_suffix(".png"), dpi=120)
    record = {"command": " ".join(["python benchmarks/learning_curve.py", *(argv if argv is not None else sys.argv[1:])]),
              "machine": {"processor": platform.processor() or platform.machine(), "python": platform.python_version()},
              "runs": runs}
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"written {stem.with_suffix('.png')} and {stem.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
