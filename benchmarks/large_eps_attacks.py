"""Is a failed ``large_eps_breaks_model`` check masking, or a 20-step attack too weak at eps 0.5? (diagnostic)

The masking checks run PGD-20 (step eps/4) at a large eps and fail when more than 5 % of the images survive.
This evaluates a saved student of ``methods_fmnist.py`` on a seeded subset of the held-out test images with
PGD-20, CW-20, PGD-100 and APGD-CE at the threat eps and at the large eps. If the stronger attacks break the model
at the large eps and agree with PGD-20 at the threat eps, the check's failure is the attack's step budget, not
masked gradients.

    python benchmarks/methods_fmnist.py --seed 0 --runs heldout-rslad-adv   # makes the student (its workdir)
    python benchmarks/large_eps_attacks.py                                  # -> results/large_eps_attacks.{json,md}
    python benchmarks/large_eps_attacks.py --check   # the library's checks as methods_fmnist.py runs them
                                                     # -> results/large_eps_check.{json,md}

``--check`` re-evaluates the student on the held-out classes the way ``methods_fmnist.py`` does (clean and PGD-20
on ``--n-eval`` images with the gradient-masking checks on the first ``--n-check``), to see the check's verdict
with the code of today.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from methods_fmnist import ADV, HELD_OUT, SEEN  # noqa: E402  (the held-out split the student was trained on)

from robust_student import RobustDistiller  # noqa: E402
from robust_student.config import DataConfig, ThreatConfig  # noqa: E402
from robust_student.cpu_allocator import keep_freed_memory  # noqa: E402
from robust_student.students.io import load_student  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ATTACKS = ["clean", "pgd20", "cw20", "pgd:100", "apgd-ce"]


def write_outputs(output: str, result: dict, lines: list[str], start: float) -> None:
    """Add the run's time, machine and command to ``result`` and the markdown, write <output>.{json,md}."""
    result.update({"seconds": round(time.time() - start, 1),
                   "machine": f"{platform.processor() or platform.machine()}, 1 thread, torch {torch.__version__}",
                   "command": "python benchmarks/large_eps_attacks.py " + " ".join(sys.argv[1:])})
    Path(output).with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    lines += ["", f"Command: `{result['command'].strip()}`; {result['seconds']} s on {result['machine']}.", ""]
    Path(output).with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


def library_check(distiller: RobustDistiller, args: argparse.Namespace, start: float) -> None:
    """The held-out evaluation of ``methods_fmnist.py`` (eps 0.1) with today's checks -> <output>.{json,md}."""
    report = distiller.evaluate(["clean", "pgd20"], n_examples=args.n_eval, threat=ThreatConfig(norm="linf", eps=0.1),
                                classes=HELD_OUT, check_examples=args.n_check, progress=False)
    result = {"run": args.run, "classes": HELD_OUT, "n": args.n_eval, "n_check": args.n_check,
              "clean": report.clean_accuracy, "pgd20": report.robust_accuracy["pgd20"], "checks": report.checks,
              "sweep": report.sanity_sweep}
    lines = [f"# Masking checks on `{args.run}`, held-out classes (`benchmarks/large_eps_attacks.py --check`)", "",
             f"Clean {100 * result['clean']:.1f} %, PGD-20 {100 * result['pgd20']:.1f} % at L-inf eps 0.1 on "
             f"{args.n_eval} test images of {', '.join(HELD_OUT)}; checks on the first {args.n_check}:", "",
             "| check | passed | detail |", "|---|---|---|"]
    lines += [f"| {c['name']} | {c['passed']} | {c['detail']} |" for c in report.checks]
    write_outputs(args.output, result, lines, start)


def main() -> None:
    keep_freed_memory()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="heldout-rslad-adv", help="a row of methods_fmnist.py trained on 7 classes")
    p.add_argument("--workdir", default=str(ROOT / "runs" / "methods_fmnist"))
    p.add_argument("--n", type=int, default=100,
                   help="test images (the evaluation's seeded subset; the checks use 100)")
    p.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.5])
    p.add_argument("--output", help="path stem (default results/large_eps_attacks, with --check large_eps_check)")
    p.add_argument("--check", action="store_true", help="run the library's masking checks instead (see above)")
    p.add_argument("--n-eval", type=int, default=500, help="--check: test images (methods_fmnist.py's default)")
    p.add_argument("--n-check", type=int, default=100, help="--check: images for the checks")
    args = p.parse_args()
    args.output = args.output or str(ROOT / "benchmarks" / "results" / ("large_eps_check" if args.check
                                                                        else "large_eps_attacks"))
    torch.set_num_threads(1)
    folder = Path(args.workdir) / args.run / "student"
    if not (folder / "model.safetensors").is_file():
        raise SystemExit(f"no saved student in {folder}: run "
                         f"`python benchmarks/methods_fmnist.py --runs {args.run}` first")
    student = load_student(folder)
    distiller = RobustDistiller(teacher=ADV, method="kd", student=student,
                                dataset=DataConfig(name="fashion-mnist", classes=SEEN))
    start = time.time()
    if args.check:
        library_check(distiller, args, start)
        return
    rows = []
    for eps in args.eps:
        report = distiller.evaluate(ATTACKS, n_examples=args.n, threat=ThreatConfig(norm="linf", eps=eps),
                                    classes=HELD_OUT, checks=False, progress=False)
        rows.append({"eps": eps, "clean": report.clean_accuracy, **report.robust_accuracy})
        print(rows[-1], flush=True)
    result = {"run": args.run, "student": str(folder.relative_to(ROOT)) if folder.is_relative_to(ROOT) else str(folder),
              "classes": HELD_OUT, "n": args.n, "rows": rows}
    lines = [f"# Large-eps check: attack strength on `{args.run}` (`benchmarks/large_eps_attacks.py`)", "",
             f"Held-out classes {', '.join(HELD_OUT)} (zero-shot through the teacher's text encoder), the evaluation's "
             f"seeded subset of {args.n} test images. Robust accuracy (%) under each attack at L-inf eps:", "",
             "| eps | " + " | ".join(ATTACKS) + " |", "|---:|" + "---:|" * len(ATTACKS)]
    for row in rows:
        lines.append(f"| {row['eps']:g} | " + " | ".join(f"{100 * row[a]:.1f}" for a in ATTACKS) + " |")
    write_outputs(args.output, result, lines, start)


if __name__ == "__main__":
    main()
