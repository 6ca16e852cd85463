"""How strong is each method's training attack? Accuracy at the points the inner maximisation finds (diagnostic).

Adversarial training learns from the points its inner attack finds. PGD-AT (and ARD, DGHFA) maximise the
cross-entropy of the label; TRADES maximises KL(S(x) || S(x')) away from the model's own clean prediction;
RSLAD KL(T(x) || S(x')) away from the teacher's. This runs each of those objectives with a training attack
(default: the flagship recipes' 5-step L-inf PGD, step 0.03, eps 0.1) on a robust model, from a uniform start
and from RSLAD's / TRADES' Gaussian start of std 0.001, and reports the model's accuracy at the points found and
its mean top-class probability there. An attack that leaves accuracy near clean trains on near-clean points.

    python benchmarks/inner_attack_strength.py --model fmnist-clip-robust-wide   # -> results/inner_attack_strength.{json,md}

``--model`` / ``--teacher``: a saved student folder or a zoo teacher name (as ``robust-student eval --model``);
the teacher defaults to the model itself (RSLAD self-distillation, as recipe flagship_rslad_wide_self).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attack_speed import machine_description  # noqa: E402

from robust_student.attacks import objectives  # noqa: E402
from robust_student.attacks.pgd import pgd  # noqa: E402
from robust_student.attacks.threat import LinfBall  # noqa: E402
from robust_student.cli import _model_for_eval  # noqa: E402  (what `robust-student eval --model` accepts)
from robust_student.data import build_dataset  # noqa: E402
from robust_student.evaluation import collect_examples  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
STARTS = {"uniform": {"random_start": "uniform"}, "gaussian 0.001": {"random_start": "normal", "init_std": 0.001}}


def _objectives(model: torch.nn.Module, teacher: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                own: torch.Tensor) -> dict:
    """Each method's inner objective on the batch; ``own`` is the model's clean softmax (computed once)."""
    if teacher is model:
        taught = own
    else:
        with torch.no_grad():
            taught = F.softmax(teacher(x).float(), dim=1)
    return {"CE(S(x'), y) (PGD-AT, ARD, DGHFA)": objectives.ce(model, y),
            "KL(S(x) || S(x')) (TRADES)": objectives.kl_to(model, own),
            "KL(T(x) || S(x')) (RSLAD)": objectives.kl_to(model, taught)}


def _zero_shot(spec: str, dataset) -> torch.nn.Module:
    """A saved student, or a zoo teacher scoring the dataset's classes zero-shot (as ``robust-student eval``)."""
    model = _model_for_eval(spec)[0].eval()
    if not hasattr(model, "spec"):
        model.set_classes(dataset.prompts.classnames, dataset.prompts.templates)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fmnist-clip-robust-wide")
    parser.add_argument("--teacher", default=None, help="RSLAD's teacher (default: the model itself)")
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--step-size", type=float, default=0.03)
    parser.add_argument("--n-examples", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0, help="test subset (as robust-student eval --seed) and starts")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = build_dataset("fashion-mnist", split="test")
    model = _zero_shot(args.model, dataset)
    teacher = _zero_shot(args.teacher, dataset) if args.teacher else model
    x_all, y_all, how = collect_examples(dataset, args.n_examples, args.seed)
    threat = LinfBall(args.eps)
    rows: dict[tuple[str, str], dict[str, float]] = {}
    start = time.perf_counter()
    with torch.no_grad():
        clean = torch.cat([F.softmax(model(x_all[i:i + args.batch_size]).float(), 1)
                           for i in range(0, len(x_all), args.batch_size)])
    for i in range(0, len(x_all), args.batch_size):
        x, y = x_all[i:i + args.batch_size], y_all[i:i + args.batch_size]
        for name, objective in _objectives(model, teacher, x, y, clean[i:i + args.batch_size]).items():
            for start_name, start_args in STARTS.items():
                torch.manual_seed(args.seed + i)
                x_adv = pgd(objective, x, threat, steps=args.steps, step_size=args.step_size, **start_args)
                with torch.no_grad():
                    probs = F.softmax(model(x_adv).float(), dim=1)
                row = rows.setdefault((name, start_name), {"correct": 0.0, "top_prob": 0.0})
                row["correct"] += float((probs.argmax(1) == y).sum())
                row["top_prob"] += float(probs.amax(1).sum())
    n = len(x_all)
    result = {
        "model": args.model, "teacher": args.teacher or args.model, "examples": how, "n": n,
        "threat": f"linf eps {args.eps}",
        "attack": f"PGD, {args.steps} steps of {args.step_size}, sign steps, projected (the training attack)",
        "clean_accuracy": round(float((clean.argmax(1) == y_all).float().mean()), 4),
        "clean_mean_top_probability": round(float(clean.amax(1).mean()), 4),
        "rows": [{"objective": name, "start": start_name, "accuracy_at_found_points": round(r["correct"] / n, 4),
                  "mean_top_probability_there": round(r["top_prob"] / n, 4)} for (name, start_name), r in rows.items()],
        "seconds": round(time.perf_counter() - start, 1), "machine": machine_description(torch.device("cpu")),
        "command": "python benchmarks/inner_attack_strength.py " + " ".join(sys.argv[1:]),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "inner_attack_strength.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Inner-attack strength (benchmarks/inner_attack_strength.py)", "",
        f"Command: `{result['command']}`", "",
        f"Model `{result['model']}`, RSLAD's teacher `{result['teacher']}`; {n} test images ({how}), "
        f"{result['threat']}, {result['attack']}. Clean: accuracy {100 * result['clean_accuracy']:.1f} %, mean "
        f"top-class probability {result['clean_mean_top_probability']:.3f}.", "",
        "| inner objective (methods) | start | accuracy at the points found | mean top-class probability there |",
        "|---|---|---:|---:|",
        *[f"| {r['objective']} | {r['start']} | {100 * r['accuracy_at_found_points']:.1f} % | "
          f"{r['mean_top_probability_there']:.3f} |" for r in result["rows"]],
        "", f"Machine: {result['machine']}; {result['seconds']} s.",
    ]
    (RESULTS / "inner_attack_strength.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
