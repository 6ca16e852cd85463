"""MMT-ARD, CIARD and HPT-GPD at CPU scale, each against its natural comparison, plus held-out-class zero-shot.

Fashion-MNIST, the built-in zoo: ``fmnist-clip`` (clean CLIP), ``fmnist-clip-fare`` (its FARE-tuned tower: the
robust ``adv`` teacher) and ``fmnist-clip-cnn`` (a CLIP with a convolutional tower: HPT-GPD's heterogeneous
proxy). Every row of a comparison has the same budget (training images, epochs, batch, optimiser, schedule,
seed, training threat); only the method and its teachers change.

* **MMT-ARD vs single-teacher ARD / RSLAD** from the adv teacher (``resnet_tiny`` students warm-started by clean
  distillation, as in ``dghfa_fmnist.py``), with the per-epoch validation curve and the epochs each method needs
  to reach the single-teacher RSLAD's final validation robust accuracy (the paper's "2.3x training efficiency").
* **CIARD vs the same dual-teacher loss** without the push loss, without the teacher's retraining, and without
  both (``dual-kl``).
* **HPT-GPD vs the same-architecture teacher**: the ``clip`` student (fmnist-clip's own ViT tower) distilled from
  the CNN proxy vs from fmnist-clip itself.
* **Held-out classes**: students trained on 7 of the 10 classes, evaluated on those 7 and, zero-shot through the
  teacher's text encoder, on the 3 others (``evaluate(classes=...)``).

Evaluation at eps 0.1 (L-inf): clean and PGD-20 on the same seeded subset of ``--n-eval`` test images (with the
gradient-masking checks), AutoAttack on the first ``--n-aa`` of them (0 skips it).

    python benchmarks/methods_fmnist.py --quick                 # smoke run of the script itself (minutes)
    python benchmarks/methods_fmnist.py                         # seed 0, AutoAttack on 500
    python benchmarks/methods_fmnist.py --seed 1 --n-aa 200     # seed 1

Finished rows are kept in ``--workdir`` (student + ``result.json``), so an interrupted benchmark continues row by
row; ``--fresh`` starts over. Results: ``benchmarks/results/methods_fmnist[_seed<N>].{md,json}``.
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

from reproduce import (_train_log, cpu_capability, differing, keep_warm_start, locked,  # benchmarks/ is on sys.path
                       read_results, restore_warm_start, results_lock, same_warm_start, warm_start_copy, write_json)

RESULTS = Path(__file__).resolve().parent / "results"
ADV, CLEAN, PROXY = "fmnist-clip-fare", "fmnist-clip", "fmnist-clip-cnn"
HELD_OUT = ["Pullover", "Sandal", "Bag"]
SEEN = ["T-shirt/top", "Trouser", "Dress", "Coat", "Shirt", "Sneaker", "Ankle boot"]

def make_runs(adv: str, clean: str, proxy: str) -> dict[str, dict[str, Any]]:
    """label -> {group, method, teachers (role -> spec), method_args, student ("warm" / "warm7" / "clip"),
    classes, what}."""
    adv_trains = {"name": adv, "trainable": "head"}
    adv_frozen = {"name": adv, "trainable": "none"}
    return {
        "rslad-adv": dict(group="mmt", method="rslad", teachers={"teacher": adv}, what="RSLAD from the adv teacher"),
        "ard-adv": dict(group="mmt", method="ard", teachers={"teacher": adv}, what="ARD from the adv teacher"),
        "mmt-ard": dict(group="mmt", method="mmt-ard", teachers={"adv": adv, "clean": clean},
                        what="MMT-ARD (eq. 2 attack, sigmoid weights, 3 : 0.5)"),
        "mmt-ard-code": dict(group="mmt", method="mmt-ard", teachers={"adv": adv, "clean": clean},
                             method_args={"attack_objective": "kl", "weighting": "code"},
                             what="MMT-ARD as released (KL attack, cosine weights)"),
        "ciard": dict(group="ciard", method="ciard", teachers={"adv": adv_trains, "nat": clean},
                      what="CIARD (push loss + adv teacher retraining)"),
        "ciard-no-push": dict(group="ciard", method="ciard", method_args={"push_weight": 0.0},
                              teachers={"adv": adv_trains, "nat": clean}, what="CIARD without the push loss"),
        "ciard-no-itt": dict(group="ciard", method="ciard", teachers={"adv": adv_frozen, "nat": clean},
                             what="CIARD without teacher retraining"),
        "dual-kl": dict(group="ciard", method="ciard", method_args={"push_weight": 0.0},
                        teachers={"adv": adv_frozen, "nat": clean},
                        what="the dual-teacher loss alone (no push, no retraining)"),
        "hpt-gpd": dict(group="hpt", method="hpt-gpd", teachers={"target": clean, "proxy": proxy}, student="clip",
                        what="HPT-GPD: fmnist-clip's tower from the CNN proxy"),
        "hpt-gpd-same-arch": dict(group="hpt", method="hpt-gpd", teachers={"target": clean, "proxy": clean},
                                  student="clip", what="the same, proxy = fmnist-clip (same architecture)"),
        "heldout-rslad-adv": dict(group="heldout", method="rslad", teachers={"teacher": adv}, student="warm7",
                                  classes=SEEN, what="RSLAD from the adv teacher, 7 classes"),
        "heldout-mmt-ard": dict(group="heldout", method="mmt-ard", teachers={"adv": adv, "clean": clean},
                                student="warm7", classes=SEEN, what="MMT-ARD, 7 classes"),
        "heldout-hpt-gpd": dict(group="heldout", method="hpt-gpd", teachers={"target": clean, "proxy": proxy},
                                student="clip", classes=SEEN, what="HPT-GPD, 7 classes"),
        # untrained references for the held-out rows: where each starts, and the teachers themselves
        "heldout-warm7": dict(group="heldout", method="none", teachers={"teacher": clean}, student="warm7",
                              classes=SEEN, reference=True,
                              what="the clean-distilled 7-class warm start of the resnet_tiny rows, untrained here"),
        "heldout-teacher": dict(group="heldout", method="none", teachers={"teacher": clean}, student="clip",
                                classes=SEEN, reference=True,
                                what=f"`{clean}` zero-shot (its own tower: HPT-GPD's start), untrained"),
        "heldout-teacher-adv": dict(group="heldout", method="none", teachers={"teacher": adv}, student="clip",
                                    classes=SEEN, reference=True, what=f"`{adv}` zero-shot (the adv teacher), untrained"),
    }


RUNS = make_runs(ADV, CLEAN, PROXY)
EVAL_KEYS = ("eval_eps", "n_eval", "n_aa", "n_check")
WARM = {"warm": ("kd-warmstart", None), "warm7": ("kd-warmstart-7", SEEN)}
GROUPS = {"mmt": "MMT-ARD vs single-teacher distillation from the adv teacher",
          "ciard": "CIARD vs the same dual-teacher loss without its parts",
          "hpt": "HPT-GPD: heterogeneous (CNN) proxy vs same-architecture teacher",
          "heldout": f"Held-out classes: trained on 7 classes, zero-shot on {', '.join(HELD_OUT)}"}


def teacher_kwargs(spec: dict[str, Any]) -> dict[str, Any]:
    """RobustDistiller's ``teacher=`` for a row: one name for a single role, else the role dict."""
    teachers = spec["teachers"]
    return {"teacher": teachers["teacher"]} if list(teachers) == ["teacher"] else {"teacher": teachers}


def train_overrides(args: argparse.Namespace, out_dir: Path, clip_student: bool) -> dict[str, Any]:
    return {"train.epochs": args.epochs, "train.batch_size": args.batch_size, "train.optimizer": "adamw",
            "train.lr": args.clip_lr if clip_student else args.lr, "train.weight_decay": 5e-4,
            "train.seed": args.seed, "train.eval_examples": args.n_val, "train.val_attack": "pgd:10",
            "train.checkpoint_every": 50, "train.log_every": args.log_every, "train.output_dir": str(out_dir),
            "threat.eps": args.train_eps, "attack.step_size": args.train_step_size, "attack.steps": args.train_steps}


def warm_start(label: str, classes: list[str] | None, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Clean distillation (``kd``) from fmnist-clip into a random ``resnet_tiny``: the shared initial student."""
    out_dir = workdir / label
    distiller = RobustDistiller(
        teacher=CLEAN, method="kd", student="resnet_tiny",
        dataset=DataConfig(name="fashion-mnist", max_train_examples=args.warmup_n_train, classes=classes),
        epochs=args.warmup_epochs, batch_size=args.batch_size, optimizer="adamw", lr=args.lr, seed=args.seed,
        eval_examples=0, checkpoint_every=50, log_every=args.log_every, output_dir=str(out_dir))
    started = time.perf_counter()
    distiller.fit(resume=True)
    return {"label": label, "method": "kd", "config": distiller.config.to_dict(), "history": [],
            "train_seconds": time.perf_counter() - started, "steps": distiller.result.steps,
            "cpu_capability": cpu_capability()}


def warm_record(kind: str, workdir: Path) -> dict[str, Any]:
    """What identifies the warm start of kind ``kind`` in ``workdir``: its steps, final training loss and the torch
    CPU kernels it ran on. Rows record it, so rows trained later (another session, another machine) can be checked
    to start from the same student."""
    label = WARM[kind][0]
    cached = json.loads((workdir / label / "result.json").read_text())  # a restored copy carries its last terms
    return {"label": label, "steps": cached.get("steps"),
            "last_terms": cached.get("last_terms") or _train_log(workdir / label)[1],
            "cpu_capability": cached.get("cpu_capability", cpu_capability())}


def check_warm_starts(labels: list[str], stored_runs: dict[str, Any], workdir: Path) -> None:
    """Refuse to train or evaluate ``labels`` from a warm start other than the one the stored rows of the same
    kind started from (pairing rows across warm starts would mix two training replicates), and refuse when a
    stored row did not record its warm start (then nobody can tell)."""
    for kind in dict.fromkeys(RUNS[label].get("student", "warm") for label in labels):
        if kind not in WARM:
            continue
        here = warm_record(kind, workdir)
        others = {name: run.get("warm_start") for name, run in stored_runs.items()
                  if name not in labels and RUNS.get(name, {}).get("student", "warm") == kind}
        unknown = sorted(name for name, record in others.items() if not record)
        if unknown:
            raise SystemExit(
                f"stored rows {', '.join(unknown)} did not record the warm start ({here['label']}) they started from, "
                "so new rows cannot be shown to share it: train them again here with --retrain "
                f"{' '.join(unknown)} (their stored results are replaced) or pass --fresh")
        differ = sorted(name for name, record in others.items() if not same_warm_start(record, here))
        if differ:
            record = others[differ[0]]
            raise SystemExit(
                f"the warm start {here['label']} in {workdir} (final loss {here['last_terms'].get('loss')!r}, torch CPU "
                f"kernels {here['cpu_capability']}) is not the one stored rows {', '.join(differ)} started from "
                f"(final loss {(record.get('last_terms') or {}).get('loss')!r}, {record.get('cpu_capability')}): "
                "run them on a machine like theirs, or --retrain them here")


def reference_run(label: str, workdir: Path) -> dict[str, Any]:
    """An untrained row: the warm start it names, or a teacher's own tower (the ``clip`` student, which is the
    teacher zero-shot), saved as the row's student so it is evaluated like every other row."""
    from robust_student import build_dataset, create_student, create_teacher, save_student

    spec = RUNS[label]
    target = workdir / label / "student"
    if spec["student"] == "clip":
        data = build_dataset(DataConfig(name="fashion-mnist", classes=spec.get("classes")), "train")
        teacher = create_teacher(spec["teachers"]["teacher"])
        teacher.set_classes(data.prompts.classnames, data.prompts.templates)
        student = create_student("clip", teacher, image_size=int(data[0]["image"].shape[-1]))
        student.labels = data.labels
        save_student(student, target)
    else:
        shutil.copytree(workdir / WARM[spec["student"]][0] / "student", target, dirs_exist_ok=True)
    return {"label": label, "method": "none", "teachers": spec["teachers"], "method_args": {}, "config": {},
            "history": [], "train_seconds": 0.0, "steps": 0, "finite": True, "last_terms": {}}


def train_run(label: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from robust_student.students.io import load_student

    spec = RUNS[label]
    if spec.get("reference"):
        return reference_run(label, workdir)
    kind = spec.get("student", "warm")
    out_dir = workdir / label
    student = "clip" if kind == "clip" else load_student(workdir / WARM[kind][0] / "student")
    distiller = RobustDistiller(
        **teacher_kwargs(spec), method=spec["method"], student=student, method_args=spec.get("method_args", {}),
        dataset=DataConfig(name="fashion-mnist", max_train_examples=args.n_train, classes=spec.get("classes")),
        **train_overrides(args, out_dir, kind == "clip"))
    started = time.perf_counter()
    distiller.fit(resume=True)  # continues an interrupted row from its last checkpoint
    seconds = time.perf_counter() - started
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train_log = [r for r in records if r.get("kind") == "train"]
    finite = all(all(v == v and abs(v) != float("inf") for v in r.values() if isinstance(v, float)) for r in train_log)
    return {"label": label, "method": spec["method"], "teachers": spec["teachers"],
            "method_args": spec.get("method_args", {}), "config": distiller.config.to_dict(),
            "history": distiller.history, "train_seconds": seconds, "steps": distiller.result.steps,
            "finite": finite, "last_terms": train_log[-1] if train_log else {}}


def _summary(report: Any) -> dict[str, Any]:
    return {"n": report.n_examples, "clean": report.clean_accuracy, "robust": report.robust_accuracy,
            "failed_checks": [c["name"] for c in report.failed_checks], "selection": report.selection,
            "settings": report.attack_settings, "per_class": report.per_class}


def evaluate_run(label: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Clean / PGD-20 (+ masking checks) on n_eval test images and AutoAttack on the first n_aa, at each eps;
    held-out rows also on the 3 held-out classes through the teacher's text encoder."""
    from robust_student.students.io import load_student

    spec = RUNS.get(label, {"teachers": {"teacher": CLEAN}, "method": "kd"})
    student = load_student(workdir / label / "student")
    first_teacher = next(iter(spec["teachers"].values()))
    first_teacher = first_teacher["name"] if isinstance(first_teacher, dict) else first_teacher
    distiller = RobustDistiller(teacher=first_teacher, method="kd", student=student,
                                dataset=DataConfig(name="fashion-mnist", classes=spec.get("classes")))
    out: dict[str, Any] = {}
    evaluations = [("seen" if spec.get("classes") else "all", None)]
    if spec.get("classes"):
        evaluations.append(("held-out", HELD_OUT))
    for eps in args.eval_eps:
        threat = ThreatConfig(norm="linf", eps=eps)
        for name, classes in evaluations:
            main = distiller.evaluate(["clean", "pgd20"], n_examples=args.n_eval, threat=threat, classes=classes,
                                      check_examples=args.n_check, progress=False)
            entry = {"main": _summary(main)}
            if args.n_aa and eps == args.eval_eps[0]:
                aa = distiller.evaluate(["clean", "pgd20", "autoattack"], n_examples=args.n_aa, threat=threat,
                                        classes=classes, checks=False, progress=False)
                entry["autoattack"] = _summary(aa)
            out[f"{name} eps {format_eps(eps)}"] = entry
            logging.info("%s %s eps %s: clean %.3f PGD-20 %.3f%s", label, name, format_eps(eps), main.clean_accuracy,
                         main.robust_accuracy["pgd20"], f" AA {entry['autoattack']['robust']['autoattack']:.3f}"
                         if "autoattack" in entry else "")
    return out


def epochs_to(history: list[dict[str, Any]], target: float) -> int | None:
    """The first epoch (1-based) whose validation robust accuracy reaches ``target``."""
    for record in history:
        if record["val_robust_acc"] >= target - 1e-9:
            return record["epoch"] + 1
    return None


def per_class_text(summary: dict[str, Any]) -> str:
    """``Pullover 97 / 95, ...``: clean and PGD-20 accuracy per class (rows evaluated before it was kept: "-")."""
    classes = summary.get("per_class")
    if not classes:
        return "- (not recorded)"
    return ", ".join(f"{name} {_pct(row['clean'])} / {_pct(row.get('pgd20'))}" for name, row in classes.items())


def train_time(run: dict[str, Any]) -> str:
    return "untrained" if run.get("method") == "none" else f"{run['train_seconds'] / 60:.1f} min"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def to_markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        "# MMT-ARD, CIARD and HPT-GPD on Fashion-MNIST (`benchmarks/methods_fmnist.py`)", "",
        f"Teachers: `{CLEAN}` (clean CLIP), adv `{s['adv_teacher']}` (the robust teacher), proxy "
        f"`{s['proxy_teacher']}` (HPT-GPD's heterogeneous proxy), all built in. Every row: the first {s['n_train']} "
        f"training images, {s['epochs']} epochs, batch {s['batch_size']}, AdamW (lr {s['lr']:g}; {s['clip_lr']:g} "
        f"for the `clip` students, which start from fmnist-clip's own tower), weight decay 5e-4, cosine, seed "
        f"{s['seed']}; training attack L-inf eps {s['train_eps']:g}, {s['train_steps']} PGD steps of "
        f"{s['train_step_size']:g}. `resnet_tiny` students start from a clean-distilled warm start (`kd` from "
        f"fmnist-clip, {s['warmup_epochs']} epochs on {s['warmup_n_train']} images; the held-out rows' warm start "
        f"sees only their 7 classes). Validation after each epoch: PGD-10 on {s['n_val']} validation images. "
        f"Test: clean and PGD-20 on the same seeded subset of {s['n_eval']} test images (masking checks on "
        f"{s['n_check']}), AutoAttack (pyautoattack standard) on the first {s['n_aa']} of them at eps "
        f"{s['eval_eps_text'][0]}, with PGD-20 on those same images in brackets. Machine: {result['machine']}; "
        f"torch {result['torch']}; robust_student {result['robust_student']}.", "",
        f"Command: `{result['command']}`", "",
    ]
    runs = result["runs"]
    for group, title in GROUPS.items():
        labels = [k for k in RUNS if RUNS[k]["group"] == group and k in runs]
        if not labels:
            continue
        lines += [f"## {title}", ""]
        keys = sorted({k for label in labels for k in runs[label].get("eval", {})},
                      key=lambda k: (not k.startswith(("all", "seen")), k))
        for key in keys:
            per_class = key.startswith("held-out")  # a 3-class zero-shot score needs its classes beside it
            lines += [f"### {key}", "", "| run | clean | PGD-20 | AutoAttack (PGD-20) | checks | train time |"
                      + (" clean / PGD-20 per class |" if per_class else ""),
                      "|---|---:|---:|---:|---|---:|" + ("---|" if per_class else "")]
            for label in labels:
                entry = runs[label].get("eval", {}).get(key)
                if entry is None:
                    continue
                main, aa = entry["main"], entry.get("autoattack")
                aa_text = (f"{_pct(aa['robust']['autoattack'])} ({_pct(aa['robust']['pgd20'])}), n={aa['n']}"
                           if aa else "-")
                checks = "FAILED: " + ", ".join(main["failed_checks"]) if main["failed_checks"] else "pass"
                lines.append(f"| {label} | {_pct(main['clean'])} | {_pct(main['robust']['pgd20'])} | {aa_text} | "
                             f"{checks} | {train_time(runs[label])} |"
                             + (f" {per_class_text(main)} |" if per_class else ""))
            lines.append("")
        if group == "mmt" and "rslad-adv" in runs and runs["rslad-adv"].get("history"):
            target = runs["rslad-adv"]["history"][-1]["val_robust_acc"]
            lines += [f"Validation robust accuracy (PGD-10, n={s['n_val']}) per epoch, and the first epoch reaching "
                      f"RSLAD's final {_pct(target)} %:", "",
                      "| run | " + " | ".join(f"epoch {e + 1}" for e in range(s["epochs"])) + " | epochs to target |",
                      "|---|" + "---:|" * (s["epochs"] + 1)]
            for label in labels:
                history = runs[label].get("history", [])
                cells = [_pct(r["val_robust_acc"]) for r in history] + ["-"] * (s["epochs"] - len(history))
                reached = epochs_to(history, target)
                lines.append(f"| {label} | " + " | ".join(cells) + f" | {reached or 'not reached'} |")
            lines.append("")
    lines += ["Rows: " + "; ".join(f"`{k}` {v['what']}" for k, v in RUNS.items() if k in runs) + ".", ""]
    if result.get("notes"):
        lines += ["## Notes", "", result["notes"], ""]
    return "\n".join(lines)


def main() -> None:
    keep_freed_memory()  # this process is the benchmark's: see robust_student.cpu_allocator
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--n-train", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.003, help="AdamW lr of the resnet_tiny students")
    parser.add_argument("--clip-lr", type=float, default=5e-4, help="AdamW lr of the clip (ViT tower) students")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-eps", type=float, default=0.1)
    parser.add_argument("--train-step-size", type=float, default=0.03)
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--eval-eps", type=float, nargs="+", default=[0.1])
    parser.add_argument("--warmup-n-train", type=int, default=10000)
    parser.add_argument("--warmup-epochs", type=int, default=2)
    parser.add_argument("--n-val", type=int, default=500)
    parser.add_argument("--n-eval", type=int, default=500)
    parser.add_argument("--n-aa", type=int, default=None, help="AutoAttack images (default 500 for seed 0, else 200)")
    parser.add_argument("--n-check", type=int, default=100)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", help="default: runs/methods_fmnist[_seed<N>]")
    parser.add_argument("--output", help="default: benchmarks/results/methods_fmnist[_seed<N>]")
    parser.add_argument("--notes", default="", help="text for the Notes section of the markdown")
    parser.add_argument("--fresh", action="store_true", help="ignore finished rows in --workdir")
    parser.add_argument("--skip-eval", action="store_true")
    parser.add_argument("--retrain", nargs="+", default=[], choices=list(RUNS), metavar="ROW",
                        help="train these --runs rows again although they are stored (their results are replaced), "
                             "e.g. rows stored without a record of their warm start")
    parser.add_argument("--reevaluate", action="store_true",
                        help="evaluate the --runs rows again even when stored with these settings (their training "
                             "is kept), e.g. after the stored summary gained a field")
    parser.add_argument("--adv-teacher", default=ADV)
    parser.add_argument("--proxy-teacher", default=PROXY)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check that the script runs")
    args = parser.parse_args()
    RUNS.update(make_runs(args.adv_teacher, CLEAN, args.proxy_teacher))
    if args.n_aa is None:
        args.n_aa = 500 if args.seed == 0 else 200
    if args.quick:
        args.n_train, args.epochs, args.train_steps, args.n_eval, args.n_check, args.n_val = 128, 2, 1, 32, 16, 32
        args.warmup_n_train, args.warmup_epochs, args.n_aa = 128, 1, 8
        args.workdir, args.output = args.workdir or "runs/methods_fmnist_quick", args.output or "/tmp/methods_fmnist_quick"
    suffix = f"_seed{args.seed}" if args.seed else ""
    args.workdir = args.workdir or f"runs/methods_fmnist{suffix}"
    args.output = args.output or str(RESULTS / f"methods_fmnist{suffix}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("robust_student").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    workdir = Path(args.workdir)
    if args.fresh and workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    # Rows are reused when they were trained with these settings; the evaluation may change (a row evaluated
    # with other evaluation settings is evaluated again, e.g. AutoAttack on more images later).
    settings_file = workdir / "settings.json"
    settings = {k: v for k, v in vars(args).items() if k not in EVAL_KEYS + ("runs", "notes", "output", "fresh",
                                                                            "skip_eval", "reevaluate", "retrain", "threads", "log_every",
                                                                            "workdir")}
    if settings_file.is_file() and json.loads(settings_file.read_text()) != settings:
        raise SystemExit(f"{workdir} holds rows trained with other settings ({settings_file}): pass --fresh or "
                         "another --workdir")
    settings_file.write_text(json.dumps(settings, indent=2))
    eval_settings = {k: getattr(args, k) for k in EVAL_KEYS}
    output = Path(args.output)

    # Finished rows live in the committed JSON too (the workdir does not outlive a session): a row stored there
    # with these training and evaluation settings is not trained or evaluated again.
    with locked(results_lock(output)):
        stored = read_results(output.with_suffix(".json"))
    if stored.get("train_settings", settings) != settings and not args.fresh:
        raise SystemExit(f"{output.with_suffix('.json')} holds rows trained with other settings "
                         f"({differing(stored['train_settings'], settings)}): pass --fresh (it discards them) "
                         "or another --output")
    if args.fresh:
        update_stored(output, args, settings, lambda runs: runs.clear())
        shutil.rmtree(warm_start_copy(output, "x").parent, ignore_errors=True)
    stored_runs = {} if args.fresh else stored.get("runs", {})

    if set(args.retrain) - set(args.runs):
        raise SystemExit(f"--retrain {' '.join(sorted(set(args.retrain) - set(args.runs)))}: name them in --runs too")
    for label in args.retrain:  # trained again from this workdir's warm start
        shutil.rmtree(workdir / label, ignore_errors=True)

    def finished(label: str) -> dict[str, Any] | None:
        run = stored_runs.get(label)
        if args.reevaluate or label in args.retrain:
            return None
        return run if run and (args.skip_eval or run.get("eval_settings") == eval_settings) else None

    if args.reevaluate:  # only rows whose trained student is still in the workdir (it does not outlive a session)
        missing = [label for label in args.runs if not (workdir / label / "result.json").is_file()]
        if missing:
            raise SystemExit(f"--reevaluate needs each row's trained student in {workdir}; missing: "
                             f"{', '.join(missing)} (train them first, without --reevaluate)")
    needs_training = [label for label in args.runs if finished(label) is None
                      and not (workdir / label / "result.json").is_file()]
    kinds = dict.fromkeys(RUNS[label].get("student", "warm") for label in needs_training)
    # A warm start kept beside the results (committed with them) is used on any machine; otherwise it is trained
    # here, checked against the stored rows' records, and kept.
    for label, classes in (WARM[kind] for kind in kinds if kind in WARM):
        with locked(workdir / f"{label}.lock"):  # two processes sharing a workdir train it once
            cache = workdir / label / "result.json"
            kept = restore_warm_start(warm_start_copy(output, label), workdir / label, settings)
            if kept is not None and not cache.is_file():
                cache.write_text(json.dumps(kept, indent=2))
            elif not cache.is_file():
                logging.info("training %s", label)
                cache.parent.mkdir(parents=True, exist_ok=True)
                cache.write_text(json.dumps(warm_start(label, classes, args, workdir), indent=2))
    check_warm_starts([label for label in args.runs if finished(label) is None], stored_runs, workdir)
    for kind in (kind for kind in kinds if kind in WARM):
        label = WARM[kind][0]
        keep_warm_start(workdir / label / "student", warm_record(kind, workdir), warm_start_copy(output, label),
                        settings)
    for label in args.runs:
        if finished(label) is not None:
            logging.info("%s: finished earlier (%s), skipped", label, output.with_suffix(".json"))
            continue
        with locked(workdir / f"{label}.lock"):
            cache = workdir / label / "result.json"
            run = json.loads(cache.read_text()) if cache.is_file() else None
            if run is None:
                logging.info("training %s", label)
                run = train_run(label, args, workdir)
                cache.parent.mkdir(parents=True, exist_ok=True)
                cache.write_text(json.dumps(run, indent=2))
            logging.info("%s trained in %.1f min (finite: %s)", label, run["train_seconds"] / 60, run["finite"])
            if not args.skip_eval and (args.reevaluate or run.get("eval_settings") != eval_settings):
                started = time.perf_counter()
                run["eval"] = evaluate_run(label, args, workdir)
                run["eval_settings"] = eval_settings
                run["eval_seconds"] = time.perf_counter() - started
            if RUNS[label].get("student", "warm") in WARM:  # trained in this workdir: from its warm start
                run["warm_start"] = warm_record(RUNS[label].get("student", "warm"), workdir)
            cache.write_text(json.dumps(run, indent=2))
        update_stored(output, args, settings, lambda runs, label=label, run=run: runs.__setitem__(label, run))


def update_stored(output: Path, args: argparse.Namespace, settings: dict[str, Any], change: Any) -> None:
    """Under the results lock: read the stored rows, apply ``change(runs)``, rewrite the JSON and markdown (after
    each row, so partial results are usable and two processes with different ``--runs`` can share one output)."""
    with locked(results_lock(output)):
        stored = read_results(output.with_suffix(".json"))
        runs = stored.get("runs", {})
        change(runs)
        write_results(args, settings, runs, notes=args.notes or stored.get("notes", ""))


def write_results(args: argparse.Namespace, settings: dict[str, Any], runs: dict[str, Any], notes: str) -> None:
    """Rewrite the markdown and JSON with every finished row (in ``RUNS`` order)."""
    runs = {label: runs[label] for label in sorted(runs, key=lambda k: list(RUNS).index(k) if k in RUNS else 99)}
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} threads, CPU (shared)",
        "torch": torch.__version__, "robust_student": __version__,
        "command": "python benchmarks/methods_fmnist.py " + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items()
            if k in ("seed", "adv_teacher", "proxy_teacher", "n_train", "epochs", "batch_size", "lr", "clip_lr", "train_steps",
                     "train_step_size", "warmup_n_train", "warmup_epochs", "n_val", "n_eval", "n_check", "n_aa")),
        "settings": {**{k: v for k, v in vars(args).items() if k not in ("runs", "notes", "output")},
                     "eval_eps_text": [format_eps(e) for e in args.eval_eps]},
        "train_settings": settings,
        "notes": notes,
        "runs": runs,
    }
    output = Path(args.output)
    write_json(output.with_suffix(".json"), result)
    output.with_suffix(".md").write_text(to_markdown(result), encoding="utf-8")


if __name__ == "__main__":
    main()
