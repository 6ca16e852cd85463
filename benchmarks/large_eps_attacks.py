"""Is a failed ``large_eps_breaks_model`` check masking, or a 20-step attack too weak at eps 0.5? (diagnostic)

The masking checks run PGD-20 (step eps/4) at a large eps and fail when more than 5 % of the images survive.
This evaluates a saved student of ``methods_fmnist.py`` on a seeded subset of the held-out test images with
PGD-20, CW-20, PGD-100 and APGD-CE at the threat eps and at the large eps. If the stronger attacks break the model
at the large eps and agree with PGD-20 at the threat eps, the check's failure is the attack's step budget, not
masked gradients.

    python benchmarks/methods_fmnist.py --seed 0 --runs heldout-rslad-adv   # makes the student (its workdir)
    python benchmarks/large_eps_attacks.py                                  # -> results/large_eps_attacks.{json,md}
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


def main() -> None:
    keep_freed_memory()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="heldout-rslad-adv", help="a row of methods_fmnist.py trained on 7 classes")
    p.add_argument("--workdir", default=str(ROOT / "runs" / "methods_fmnist"))
    p.add_argument("--n", type=int, default=100, 
                   help="test images (the evaluation's seeded subset; the checks use 100)")
    p.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.5])
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "large_eps_attacks"))
    args = p.parse_args()
    torch.set_num_threads(1)
    folder = Path(args.workdir) / args.run / "student"
    if not (folder / "model.safetensors").is_file():
        raise SystemExit(f"no saved student in {folder}: run "
                         f"`python benchmarks/methods_fmnist.py --runs {args.run}` first")
    student = load_student(folder)
    distiller = RobustDistiller(teacher=ADV, method="kd", student=student,
                                dataset=DataConfig(name="fashion-mnist", classes=SEEN))
    rows, start = [], time.time()
    for eps in args.eps:
        report = distiller.evaluate(ATTACKS, n_examples=args.n, threat=ThreatConfig(norm="linf", eps=eps),
                                    classes=HELD_OUT, checks=False, progress=False)
        rows.append({"eps": eps, "clean": report.clean_accuracy, **report.robust_accuracy})
        print(rows[-1], flush=True)
    result = {"run": args.run, "student": str(folder.relative_to(ROOT)) if folder.is_relative_to(ROOT) else str(folder),
              "classes": HELD_OUT, "n": args.n, "rows": rows, "seconds": round(time.time() - start, 1),
              "machine": f"{platform.processor() or platform.machine()}, 1 thread, torch {torch.__version__}",
              "command": "python benchmarks/large_eps_attacks.py " + " ".join(sys.argv[1:])}
    Path(args.output).with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"# Large-eps check: attack strength on `{args.run}` (`benchmarks/large_eps_attacks.py`)", "",
             f"Held-out classes {', '.join(HELD_OUT)} (zero-shot through the teacher's text encoder), the evaluation's "
             f"seeded subset of {args.n} test images. Robust accuracy (%) under each attack at L-inf eps:", "",
             "| eps | " + " | ".join(ATTACKS) + " |", "|---:|" + "---:|" * len(ATTACKS)]
    for row in rows:
        lines.append(f"| {row['eps']:g} | " + " | ".join(f"{100 * row[a]:.1f}" for a in ATTACKS) + " |")
    lines += ["", f"Command: `{result['command'].strip()}`; {result['seconds']} s on {result['machine']}.", ""]
    Path(args.output).with_suffix(".md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
