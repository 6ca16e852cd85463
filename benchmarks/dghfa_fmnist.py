"""DGHFA at CPU scale: the method, each step of the paper's ablation (figure 2(a)) and the RSLAD and AdaAD
baselines, trained with the same budget on Fashion-MNIST and evaluated under the same attacks.

Teacher: the built-in ``fmnist-clip``; student: ``resnet_tiny`` (28 px). All runs start from one shared student
warm-started by clean distillation (``kd``, ``--warmup-epochs`` on ``--warmup-n-train`` images, so that the
short per-run budget of a shared 2-core CPU goes to the adversarial phase, where the methods differ), then train
adversarially with the same subset, epochs, batch, optimiser, schedule, seed and training threat; only the
method (and its arguments) changes. A from-scratch DGHFA run of the packaged recipe is in
``results/dghfa_fmnist_recipe_eval.md``.
Each student is then evaluated at eps 0.1 (the Fashion-MNIST literature's radius) and 8/255 (the paper's) on
the same seeded test subset with clean / FGSM / PGD-20 / CW-20 / AutoAttack and the gradient-masking checks.
The run ``dghfa-raw-grads`` (``normalize_grads=False``) decides the ``normalize_grads`` default.

    python benchmarks/dghfa_fmnist.py                  # -> benchmarks/results/dghfa_fmnist.{md,json}
    python benchmarks/dghfa_fmnist.py --quick          # a smoke run of the script itself (minutes)

Finished runs are kept in ``--workdir`` (student + ``result.json``), so an interrupted benchmark continues where
it stopped; ``--fresh`` starts over.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from robust_student.cpu_allocator import keep_freed_memory
from robust_student import RobustDistiller, ThreatConfig, __version__
from robust_student.config import DataConfig
from robust_student.formatting import format_eps
from robust_student.methods.dghfa import ABLATIONS

RESULTS = Path(__file__).resolve().parent / "results"

# label -> (method, method_args, what the row is)
RUNS: dict[str, tuple[str, dict[str, Any], str]] = {
    "rslad": ("rslad", {}, "RSLAD (baseline)"),
    "adaad": ("adaad", {}, "AdaAD (baseline)"),
    "dghfa-ad": ("dghfa", ABLATIONS["ad"], "DGHFA ablation: adversarial distillation (CE + CE' + KL)"),
    "dghfa-ad+pag": ("dghfa", ABLATIONS["ad+pag"], "DGHFA ablation: + PAG"),
    "dghfa-ad+dwga": ("dghfa", ABLATIONS["ad+dwga"], "DGHFA ablation: PAG -> DWGA"),
    "dghfa": ("dghfa", ABLATIONS["dghfa"], "DGHFA (+ HPFA: the full method)"),
    "dghfa-raw-grads": ("dghfa", {**ABLATIONS["dghfa"], "normalize_grads": False},
                        "DGHFA, un-normalised gradients in L_PAG"),
}
ATTACKS = ["clean", "fgsm", "pgd20", "cw20", "autoattack"]


WARMSTART = "kd-warmstart"


def warm_start(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Clean distillation (``kd``) from a random ``resnet_tiny``: the shared initial student of every run."""
    out_dir = workdir / WARMSTART
    distiller = RobustDistiller(
        teacher="fmnist-clip", method="kd", student="resnet_tiny",
        dataset=DataConfig(name="fashion-mnist", max_train_examples=args.warmup_n_train),
        epochs=args.warmup_epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr, seed=args.seed,
        eval_examples=0,
        checkpoint_every=0, log_every=args.log_every, output_dir=str(out_dir), overwrite=True,
    )
    start = time.perf_counter()
    distiller.fit()
    return {"label": WARMSTART, "method": "kd", "method_args": {}, "config": distiller.config.to_dict(),
            "train_seconds": time.perf_counter() - start, "steps": distiller.result.steps if distiller.result else None,
            "train_log": [], "finite": True}


def train_run(label: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Fit one student, from the shared warm start, with the shared budget; return timing and the loss log."""
    from robust_student.students.io import load_student

    method, method_args, _ = RUNS[label]
    out_dir = workdir / label
    overrides = {
        "train.epochs": args.epochs, "train.batch_size": args.batch_size, "train.optimizer": args.optimizer,
        "train.lr": args.lr,
        "train.seed": args.seed, "train.eval_examples": 0, "train.checkpoint_every": 0,
        "train.log_every": args.log_every, "train.output_dir": str(out_dir), "train.overwrite": True,
        "threat.eps": args.train_eps, "attack.step_size": args.train_step_size, "attack.steps": args.train_steps,
    }
    if method == "dghfa":
        method_args = {**method_args, "num_intermediate": min(args.num_intermediate, args.train_steps)}
    distiller = RobustDistiller(
        teacher="fmnist-clip", method=method, student=load_student(workdir / WARMSTART / "student"),
        dataset=DataConfig(name="fashion-mnist", max_train_examples=args.n_train), method_args=method_args,
        **overrides,
    )
    start = time.perf_counter()
    distiller.fit()
    seconds = time.perf_counter() - start
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in records if r.get("kind") == "train"]
    finite = all(all(v == v and abs(v) != float("inf") for k, v in r.items() if isinstance(v, float))
                 for r in train)
    return {"label": label, "method": method, "method_args": method_args, "config": distiller.config.to_dict(),
            "train_seconds": seconds, "steps": distiller.result.steps if distiller.result else None,
            "train_log": train, "finite": finite}


def cached_run_mismatch(run: dict[str, Any], label: str, args: argparse.Namespace) -> list[str]:
    """Settings in which a finished run of ``--workdir`` differs from this invocation (empty: reusable)."""
    cfg = run["config"]
    warm = label == WARMSTART
    expected = {
        ("train", "seed"): args.seed, ("train", "batch_size"): args.batch_size, ("train", "lr"): args.lr,
        ("train", "optimizer"): args.optimizer,
        ("train", "epochs"): args.warmup_epochs if warm else args.epochs,
        ("dataset", "max_train_examples"): args.warmup_n_train if warm else args.n_train,
    }
    if not warm:
        expected |= {("threat", "eps"): args.train_eps, ("attack", "steps"): args.train_steps,
                     ("attack", "step_size"): args.train_step_size}
    mismatch = [f"{a}.{b} {cfg[a][b]!r} != {value!r}" for (a, b), value in expected.items() if cfg[a][b] != value]
    for eps, rep in run.get("eval", {}).items():
        if rep["main"]["n_examples"] != args.n_eval or rep["autoattack"]["n_examples"] != args.n_aa:
            mismatch.append(f"evaluated at eps {eps} on {rep['main']['n_examples']}/{rep['autoattack']['n_examples']} "
                            f"images, not {args.n_eval}/{args.n_aa}")
    return mismatch


def evaluate_run(label: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Evaluate the saved student of ``label`` at every eps on the same seeded test subset."""
    from robust_student.students.io import load_student

    student = load_student(workdir / label / "student")
    distiller = RobustDistiller(teacher="fmnist-clip", method="kd", student=student, dataset="fashion-mnist")
    reports: dict[str, Any] = {}
    for eps in args.eval_eps:
        threat = ThreatConfig(norm="linf", eps=eps)
        main = distiller.evaluate(ATTACKS[:-1], n_examples=args.n_eval, threat=threat, check_examples=args.n_check,
                                  progress=False)
        # AutoAttack costs ~100x PGD-20 on this CPU: it runs on a nested subset (the first n_aa of the same
        # seeded permutation), next to PGD-20 on that subset for the AutoAttack <= PGD-20 check.
        aa = distiller.evaluate(["clean", "pgd20", "autoattack"], n_examples=args.n_aa, threat=threat,
                                attack_options={"autoattack": {"square_queries": args.square_queries}},
                                checks=False, progress=False)
        reports[format_eps(eps)] = {"main": main.to_dict(), "autoattack": aa.to_dict()}
        logging.info("%s eps %s: clean %.3f %s; on %d: %s", label, format_eps(eps), main.clean_accuracy,
                     {k: round(v, 3) for k, v in main.robust_accuracy.items()}, aa.n_examples,
                     {k: round(v, 3) for k, v in aa.robust_accuracy.items()})
    return reports


def to_markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        "# DGHFA on Fashion-MNIST (`benchmarks/dghfa_fmnist.py`)", "",
        f"Teacher `fmnist-clip` (built in), student `resnet_tiny` (28 px). Every run: the first {s['n_train']} "
        f"training images, {s['epochs']} epochs, batch {s['batch_size']}, {s['optimizer']} lr {s['lr']:g} (wd 5e-4, "
        f"cosine), seed {s['seed']}; training attack L-inf eps {s['train_eps']:g}, {s['train_steps']} PGD steps of "
        f"{s['train_step_size']:g}, start x + 0.001 N(0, 1); DGHFA with N_m = {s['num_intermediate']}. "
        f"All runs start from the same student, warm-started by clean distillation (`kd`, {s['warmup_epochs']} "
        f"epoch(s) on the first {s['warmup_n_train']} training images); that student is the `{WARMSTART}` row. "
        f"Evaluation: clean / FGSM / PGD-20 / CW-20 on the same seeded random subset of {s['n_eval']} test "
        f"images, with the gradient-masking checks on {s['n_check']} of them; AutoAttack (pyautoattack's standard "
        f"version, Square reduced to {s['square_queries']} queries) on the first {s['n_aa']} of that subset, "
        f"with PGD-20 on those same images in brackets. Machine: {result['machine']}; torch {result['torch']}; "
        f"robust_student {result['robust_student']}. Train times are wall-clock and compare only if nothing else ran "
        f"on the machine (see the notes); `benchmarks/train_speed.py` measures step times.", "",
        f"Command: `{result['command']}`", "",
    ]
    for eps in s["eval_eps_text"]:
        lines += [f"## eps {eps}", "",
                  f"| run | clean | FGSM | PGD-20 | CW-20 | AutoAttack (PGD-20), n={s['n_aa']} | checks | train time |",
                  "|---|---:|---:|---:|---:|---:|---|---:|"]
        for label, run in result["runs"].items():
            rep = run.get("eval", {}).get(eps)
            if rep is None:
                continue
            main, aa = rep["main"], rep["autoattack"]
            acc, aa_acc = main["robust_accuracy"], aa["robust_accuracy"]
            failed = [c["name"] for c in main["checks"] if c.get("passed") is False]
            if aa_acc["autoattack"] > aa_acc["pgd20"] + 0.02:
                failed.append("autoattack_not_weaker_than_pgd")
            cells = [f"{100 * main['clean_accuracy']:.1f}"] + [
                f"{100 * acc[a]:.1f}" for a in ("fgsm", "pgd20", "cw20")]
            cells.append(f"{100 * aa_acc['autoattack']:.1f} ({100 * aa_acc['pgd20']:.1f})")
            checks = "FAILED: " + ", ".join(failed) if failed else "pass"
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {checks} | {run['train_seconds'] / 60:.1f} min |")
        lines.append("")
    lines += ["## Training stability", "",
              "| run | first logged loss | last logged loss | max | all finite | last terms |",
              "|---|---:|---:|---:|---|---|"]
    for label, run in result["runs"].items():
        log = run["train_log"]
        if not log:
            continue
        losses = [r["loss"] for r in log]
        terms = ", ".join(f"{k} {v:.3g}" for k, v in log[-1].items()
                          if k not in ("kind", "epoch", "step", "lr", "loss"))
        lines.append(f"| {label} | {losses[0]:.3f} | {losses[-1]:.3f} | {max(losses):.3f} | {run['finite']} "
                     f"| {terms} |")
    lines += ["", f"Rows: `{WARMSTART}` the shared initial student (clean distillation only); "
              + "; ".join(f"`{k}` {v[2]}" for k, v in RUNS.items()) + ".", ""]
    if result.get("notes"):
        lines += ["## Notes", "", result["notes"], ""]
    return "\n".join(lines)


def main() -> None:
    keep_freed_memory()  # this process is the benchmark's: see robust_student.cpu_allocator
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--n-train", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"],
                        help="adamw: on this budget SGD at lr 0.1 leaves every student near 40 %% clean accuracy")
    parser.add_argument("--lr", type=float, default=0.003)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-eps", type=float, default=0.1)
    parser.add_argument("--train-step-size", type=float, default=0.03)
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--num-intermediate", type=int, default=5, help="DGHFA's N_m (capped at the PGD steps)")
    parser.add_argument("--eval-eps", type=float, nargs="+", default=[0.1, 8 / 255])
    parser.add_argument("--warmup-n-train", type=int, default=10000)
    parser.add_argument("--warmup-epochs", type=int, default=2)
    parser.add_argument("--n-eval", type=int, default=500)
    parser.add_argument("--n-aa", type=int, default=100, help="examples for AutoAttack (a nested subset)")
    parser.add_argument("--n-check", type=int, default=100)
    parser.add_argument("--square-queries", type=int, default=1000)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", help="default: runs/dghfa_fmnist, with _seed<N> for a seed other than 0")
    parser.add_argument("--output", help="default: benchmarks/results/dghfa_fmnist, with _seed<N> as --workdir")
    parser.add_argument("--notes", default="", help="text for the Notes section of the markdown")
    parser.add_argument("--fresh", action="store_true", help="ignore finished runs in --workdir")
    parser.add_argument("--skip-eval", action="store_true")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check that the script runs")
    args = parser.parse_args()
    if args.quick:
        args.n_train, args.epochs, args.train_steps, args.n_eval, args.n_check = 256, 1, 2, 32, 16
        args.warmup_n_train, args.n_aa = 256, 16
        args.square_queries, args.workdir, args.output = 50, "runs/dghfa_fmnist_quick", "/tmp/dghfa_fmnist_quick"
    suffix = f"_seed{args.seed}" if args.seed else ""
    args.workdir = args.workdir or f"runs/dghfa_fmnist{suffix}"
    args.output = args.output or str(RESULTS / f"dghfa_fmnist{suffix}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("robust_student").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    workdir = Path(args.workdir)
    if args.fresh and workdir.exists():
        shutil.rmtree(workdir)

    runs: dict[str, Any] = {}
    for label in [WARMSTART, *args.runs]:
        cache = workdir / label / "result.json"
        run = json.loads(cache.read_text()) if cache.is_file() else None
        if run is not None and (mismatch := cached_run_mismatch(run, label, args)):
            raise SystemExit(f"{cache} was trained with other settings ({'; '.join(mismatch)}): "
                             "pass --fresh to start over, or another --workdir")
        if run is None:
            logging.info("training %s", label)
            run = warm_start(args, workdir) if label == WARMSTART else train_run(label, args, workdir)
            cache.write_text(json.dumps(run, indent=2))
        logging.info("%s trained in %.1f min (finite: %s)", label, run["train_seconds"] / 60, run["finite"])
        if not args.skip_eval and "eval" not in run:
            run["eval"] = evaluate_run(label, args, workdir)
            cache.write_text(json.dumps(run, indent=2))
        runs[label] = run

    result = {
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} threads, CPU (shared)",
        "torch": torch.__version__, "robust_student": __version__,
        "command": "python benchmarks/dghfa_fmnist.py " + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items()
            if k in ("runs", "seed", "n_train", "epochs", "batch_size", "optimizer", "lr", "train_steps",
                     "train_step_size", "num_intermediate", "warmup_n_train", "warmup_epochs", "n_eval", "n_check", "n_aa",
                     "square_queries")),
        "settings": {**{k: v for k, v in vars(args).items() if k not in ("runs", "notes", "output")},
                     "eval_eps_text": [format_eps(e) for e in args.eval_eps]},
        "notes": args.notes,
        "runs": runs,
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    output.with_suffix(".md").write_text(to_markdown(result), encoding="utf-8")
    print(to_markdown(result))


if __name__ == "__main__":
    main()
