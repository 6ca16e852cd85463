"""Train the built-in teacher zoo from the shipped ``fmnist-clip`` and measure its zero-shot robustness.

    .venv/bin/python scripts/train_fmnist_zoo.py --model fare     # -> robust_student/teachers/weights/fmnist-clip-fare
    .venv/bin/python scripts/train_fmnist_zoo.py --model tecoa
    .venv/bin/python scripts/train_fmnist_zoo.py --model cnn
    .venv/bin/python scripts/train_fmnist_zoo.py --model robust --threads 2 --weight-decay 5e-4   # ~0.7 CPU h + 31 min AA
    .venv/bin/python scripts/train_fmnist_zoo.py --regression fmnist-clip-robust --threads 1     # its regression guard
    .venv/bin/python scripts/train_fmnist_zoo.py --eval-only fmnist-clip   # the base teacher, same evaluation
    .venv/bin/python scripts/train_fmnist_zoo.py --ship RUN --name fmnist-clip-rslad --recipe flagship_rslad_tiny
        # a student trained by `robust-student fit --recipe flagship_rslad_tiny` -> a zoo entry, same evaluation

* ``fare``: fmnist-clip's image tower fine-tuned with FARE (``method="fare"``, student ``clip`` = the teacher's
  own tower) at L-inf eps 0.1, the Fashion-MNIST literature's radius;
* ``tecoa``: the same with TeCoA (CE on zero-shot logits of x');
* ``robust``: a ``resnet_tiny`` image tower adversarially trained (PGD-AT with 5-step PGD at L-inf 0.1, i.e.
  TeCoA of a convolutional tower) on all 60,000 training images against fmnist-clip's locked class text
  embeddings: the zoo's robust teacher, still a zero-shot model in fmnist-clip's text space;
* ``cnn``: a ``resnet_tiny`` image tower trained on clean images with cross-entropy on its zero-shot logits
  against fmnist-clip's class text embeddings (``pgd-at`` with a 0-step attack loop, i.e. no attack): a CLIP
  with a convolutional image tower and fmnist-clip's locked text tower, HPT-GPD's heterogeneous proxy.

Each is trained through ``RobustDistiller`` (so its run folder resumes with ``--resume``), then its saved
student (``config.json`` + ``model.safetensors``) is copied to ``weights/fmnist-clip-<model>/`` with
``training.json``: the command, every setting, the validation history, the training time, and the zero-shot
accuracy of the shipped files (loaded as the registered teacher) on the Fashion-MNIST test set: clean on all
10,000 images, PGD-20 and (optionally) AutoAttack at eps 0.1 on seeded subsets whose size is recorded.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "robust_student" / "teachers" / "weights"
RESULTS = ROOT / "benchmarks" / "results"
log = logging.getLogger("train_fmnist_zoo")

# model -> (method, student, default settings)
MODELS: dict[str, dict[str, Any]] = {
    "fare": {"method": "fare", "student": "clip", "n_train": 30000, "epochs": 2, "lr": 5e-4, "steps": 10,
             "step_size": 0.025, "random_start": "uniform"},
    "tecoa": {"method": "tecoa", "student": "clip", "n_train": 30000, "epochs": 2, "lr": 5e-4, "steps": 10,
              "step_size": 0.025, "random_start": "uniform"},
    "cnn": {"method": "pgd-at", "student": "resnet_tiny", "n_train": 55000, "epochs": 4, "lr": 3e-3, "steps": 0,
            "step_size": 0.0, "random_start": "none"},
    "robust": {"method": "pgd-at", "student": "resnet_tiny", "n_train": 60000, "epochs": 6, "lr": 3e-3, "steps": 5,
               "step_size": 0.03, "random_start": "uniform"},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", choices=list(MODELS), help="which zoo teacher to train")
    p.add_argument("--eval-only", metavar="TEACHER", help="only evaluate a registered teacher (e.g. fmnist-clip)")
    p.add_argument("--n-train", type=int, help="training images (default per model)")
    p.add_argument("--epochs", type=int, help="default per model")
    p.add_argument("--lr", type=float, help="AdamW learning rate (default per model)")
    p.add_argument("--steps", type=int, help="PGD steps of the training attack (default per model)")
    p.add_argument("--step-size", type=float, help="default per model")
    p.add_argument("--eps", type=float, default=0.1, help="training and evaluation L-inf radius")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup-epochs", type=float, default=0.1)
    p.add_argument("--width", type=int, default=16, help="resnet_tiny width of the cnn tower")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (2 OpenMP threads ran far slower on shared cores)")
    p.add_argument("--n-pgd", type=int, default=1000, help="test images for PGD-20 (seeded subset)")
    p.add_argument("--n-aa", type=int, default=500, help="test images for AutoAttack (0: skip)")
    p.add_argument("--workdir", help="run folder (default runs/zoo/<model>)")
    p.add_argument("--out", help="where to write the teacher (default robust_student/teachers/weights/fmnist-clip-<model>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --workdir")
    p.add_argument("--ship", metavar="RUN", help="ship the student of a finished `robust-student fit` run folder as "
                                                 "zoo entry --name (evaluated like the others)")
    p.add_argument("--name", help="the zoo name of a shipped student (with --ship), e.g. fmnist-clip-rslad")
    p.add_argument("--recipe", help="the recipe the shipped run was trained with (with --ship)")
    p.add_argument("--regression", metavar="TEACHER",
                   help="only write TEACHER's regression guard (weights/TEACHER/regression.json: clean and PGD-20 "
                        "accuracy on the first --n-regression test images, which tests/test_zoo.py reproduces)")
    p.add_argument("--n-regression", type=int, default=100, help="test images of the regression guard")
    p.add_argument("--train-only", action="store_true",
                   help="stop after training (evaluate and ship later with --resume, which continues the finished run)")
    return p.parse_args(argv)


def zero_shot_robustness(teacher: torch.nn.Module, args: argparse.Namespace) -> dict[str, Any]:
    """Clean accuracy on the whole test set; PGD-20 (with the masking checks) and AutoAttack on seeded subsets."""
    from robust_student import evaluate_robustness
    from robust_student.config import ThreatConfig
    from robust_student.data import build_dataset
    from robust_student.teachers.zeroshot import zero_shot_accuracy

    test = build_dataset("fashion-mnist", "test")
    teacher.set_classes(test.prompts.classnames, test.prompts.templates)
    threat = ThreatConfig(norm="linf", eps=args.eps)
    started = time.perf_counter()
    out: dict[str, Any] = {"clean_accuracy": zero_shot_accuracy(teacher, test, batch_size=500),
                           "clean_n": len(test), "eps": args.eps, "norm": "linf"}
    # The masking checks run once: with the AutoAttack evaluation when there is one (so that its report, the
    # one the model card shows, is the one `robust-student eval` reproduces), else with PGD-20.
    pgd = evaluate_robustness(teacher, test, ["clean", "pgd20"], threat, n_examples=args.n_pgd, batch_size=250,
                              seed=0, progress=False, checks=not args.n_aa, check_examples=200)
    out["pgd20"] = {"n": pgd.n_examples, "clean": pgd.clean_accuracy, "robust": pgd.robust_accuracy["pgd20"],
                    "checks_passed": pgd.checks_passed, "failed_checks": [c["name"] for c in pgd.failed_checks],
                    "settings": pgd.attack_settings["pgd20"]}
    log.info("clean %.4f (n=%d); PGD-20 %.4f (n=%d)", out["clean_accuracy"], len(test), out["pgd20"]["robust"],
             pgd.n_examples)
    if args.n_aa:
        aa = evaluate_robustness(teacher, test, ["clean", "pgd20", "autoattack"], threat, n_examples=args.n_aa,
                                 batch_size=250, seed=0, checks=True, check_examples=200, progress=True)
        out["pgd20"].update(checks_passed=aa.checks_passed, failed_checks=[c["name"] for c in aa.failed_checks],
                            checks_run_with="autoattack")
        out["autoattack"] = {"n": aa.n_examples, "clean": aa.clean_accuracy, "robust": aa.robust_accuracy["autoattack"],
                             "pgd20_same_images": aa.robust_accuracy["pgd20"],
                             "settings": aa.attack_settings["autoattack"], "warnings": aa.warnings,
                             "report": aa.to_dict(),
                             "rerun": f"robust-student eval --model <this teacher> --attacks clean pgd20 autoattack "
                                      f"--eps {args.eps} --n-examples {args.n_aa} --batch-size 250 --seed 0"}
        log.info("AutoAttack %.4f (n=%d)", out["autoattack"]["robust"], aa.n_examples)
    out["seconds"] = round(time.perf_counter() - started, 1)
    out["versions"] = pgd.versions
    return out


def train(args: argparse.Namespace) -> dict[str, Any]:
    from robust_student import RobustDistiller
    from robust_student.config import DataConfig

    spec = MODELS[args.model]
    settings = {k: getattr(args, k) if getattr(args, k) is not None else spec[k]
                for k in ("n_train", "epochs", "lr", "steps", "step_size")}
    workdir = Path(args.workdir or ROOT / "runs" / "zoo" / args.model)
    distiller = RobustDistiller(
        teacher="fmnist-clip", method=spec["method"], student=spec["student"],
        dataset=DataConfig(name="fashion-mnist", max_train_examples=settings["n_train"], seed=args.seed),
        student_args={"width": args.width} if spec["student"] == "resnet_tiny" else {},
        epochs=settings["epochs"], batch_size=args.batch_size, optimizer="adamw", lr=settings["lr"],
        weight_decay=args.weight_decay, scheduler="cosine", warmup_epochs=args.warmup_epochs, seed=args.seed,
        eval_examples=500, val_attack="pgd:10", checkpoint_every=50, log_every=10, output_dir=str(workdir),
        **{"threat.eps": args.eps, "attack.steps": settings["steps"], "attack.step_size": settings["step_size"],
           "attack.random_start": spec["random_start"]},
    )
    started = time.perf_counter()
    distiller.fit(resume=args.resume)
    seconds = time.perf_counter() - started
    last = distiller.history[-1] if distiller.history else {}
    budget = {"epochs": settings["epochs"], "train_images": settings["n_train"], "threads": args.threads,
              # the trainer's clocks at the last validation, continued across resumes (None: an older run)
              "wall_hours": round(last["train_seconds"] / 3600, 3) if "train_seconds" in last else None,
              "cpu_hours": round(last["cpu_seconds"] / 3600, 3) if "cpu_seconds" in last else None}
    return {"settings": settings, "config": distiller.config.to_dict(), "history": distiller.history,
            "budget": budget, "train_seconds_this_invocation": round(seconds, 1), "steps": distiller.result.steps,
            "student_dir": str(workdir / "student")}


def shipped_budget(config: dict[str, Any], last: dict[str, Any], weights: Path = WEIGHTS) -> dict[str, Any]:
    """A run's compute from its last validation record; a run initialised from a zoo entry (``student_init``)
    also counts that entry's CPU hours (``total_cpu_hours``), since its result rests on them."""
    budget = {"epochs": config["train"]["epochs"], "train_images": config["dataset"]["max_train_examples"],
              "wall_hours": round(last["train_seconds"] / 3600, 3), "cpu_hours": round(last["cpu_seconds"] / 3600, 3)}
    init = config.get("student_init")
    if init and (weights / init / "training.json").is_file():
        init_budget = json.loads((weights / init / "training.json").read_text())["budget"]
        budget["student_init_cpu_hours"] = init_budget.get("total_cpu_hours", init_budget["cpu_hours"])
        budget["total_cpu_hours"] = round(budget["cpu_hours"] + budget["student_init_cpu_hours"], 3)
    return budget


def ship_run(args: argparse.Namespace, command: str) -> Path:
    """Copy a finished fit run's student into the zoo as ``--name`` with its ``training.json`` (the recipe, the
    run's config and validation history, its CPU budget, and the same zero-shot evaluation as every zoo entry)."""
    from robust_student.api import load_recipe
    from robust_student.students.io import read_student_config
    from robust_student.teachers.distilled import load_student_teacher
    from robust_student.training.run_dir import config_differences

    if not (args.name and args.recipe):
        raise SystemExit("--ship needs --name (e.g. fmnist-clip-rslad) and --recipe (the one the run was trained with)")
    run = Path(args.ship)
    saved = read_student_config(run / "student")
    recipe = load_recipe(args.recipe).to_dict()
    differences = config_differences(recipe, saved["config"])
    if recipe["train"]["epochs"] != saved["config"]["train"]["epochs"]:  # resumable, yet part of the recipe
        differences.append(f"train.epochs: {recipe['train']['epochs']} -> {saved['config']['train']['epochs']}")
    if differences:  # what ships must be what the recipe trains
        raise SystemExit(f"{run} was not trained with recipe {args.recipe}: {'; '.join(differences)}")
    history = saved.get("history") or []
    if not history or history[-1].get("epoch") != saved["config"]["train"]["epochs"] - 1:
        raise SystemExit(f"{run} has not finished its {saved['config']['train']['epochs']} epochs")
    out = Path(args.out or WEIGHTS / args.name)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copyfile(run / "student" / name, out / name)
    last = history[-1]
    config = saved["config"]
    budget = shipped_budget(config, last)
    record = {
        "command": command, "train_command": f"robust-student fit --recipe {args.recipe} --set train.output_dir=RUN",
        "model": args.name, "recipe": args.recipe, "method": config["method"], "student": config["student"],
        "teacher": config["teacher"], "student_init": config.get("student_init"), "base_teacher": "fmnist-clip",
        "what": f"{config['student']} distilled with {config['method']} from {config['teacher']} (recipe "
                f"{args.recipe}), classifying with fmnist-clip's text embeddings",
        "config": config, "history": history,
        "budget": budget,
        "zero_shot_test": zero_shot_robustness(load_student_teacher(out, name=args.name), args),
        "weights_bytes": (out / "model.safetensors").stat().st_size,
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "license": {"weights": "Apache-2.0", "data": "MIT (Fashion-MNIST, Zalando Research)"},
    }
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    write_card(out)
    return out


def regression_guard(name: str, n: int, eps: float) -> dict[str, Any]:
    """Clean and PGD-20 zero-shot accuracy of a registered teacher on the first ``n`` test images: seconds to
    measure, so a test can check that the shipped weights still give what they gave when they shipped."""
    from robust_student import create_teacher, evaluate_robustness
    from robust_student.config import ThreatConfig
    from robust_student.data import build_dataset

    teacher = create_teacher(name)
    test = build_dataset("fashion-mnist", "test")
    teacher.set_classes(test.prompts.classnames, test.prompts.templates)
    report = evaluate_robustness(teacher, test.subset(range(n)), ["clean", "pgd20"], ThreatConfig(norm="linf", eps=eps),
                                 n_examples=n, batch_size=n, seed=0, checks=False, progress=False)
    return {"teacher": name, "images": f"the first {n} Fashion-MNIST test images", "n": report.n_examples,
            "eps": eps, "norm": "linf", "seed": 0, "clean": report.clean_accuracy,
            "pgd20": report.robust_accuracy["pgd20"], "settings": report.attack_settings["pgd20"]}


def write_card(folder: Path) -> Path:
    """The teacher's model card (``README.md``) from its ``config.json`` and the AutoAttack evaluation report
    recorded in its ``training.json`` (every number on it comes from that evaluation, none is typed in)."""
    from robust_student.model_cards import render_model_card

    config = json.loads((folder / "config.json").read_text())
    record = json.loads((folder / "training.json").read_text())
    report = record["zero_shot_test"].get("autoattack", {}).get("report")
    if report is None:
        raise SystemExit(f"{folder}/training.json has no AutoAttack report to put on a card: evaluate with --n-aa")
    card = render_model_card(config, report, model_name=folder.name)
    path = folder / "README.md"
    card.save(path)
    log.info("model card written to %s", path)
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    from robust_student.cpu_allocator import keep_freed_memory

    keep_freed_memory()  # this process is the script's: see robust_student.cpu_allocator (PGD-20 measured x1.88 faster)
    torch.set_num_threads(args.threads)
    command = " ".join(["scripts/train_fmnist_zoo.py"] + (argv if argv is not None else sys.argv[1:]))
    if args.regression:
        record = {"command": command, **regression_guard(args.regression, args.n_regression, args.eps)}
        path = WEIGHTS / args.regression / "regression.json"
        path.write_text(json.dumps(record, indent=2) + "\n")
        log.info("%s: clean %.4f, PGD-20 %.4f on %d images -> %s", args.regression, record["clean"],
                 record["pgd20"], record["n"], path)
        return 0
    if args.eval_only:
        from robust_student import create_teacher

        record = {"teacher": args.eval_only, "command": command,
                  "zero_shot_test": zero_shot_robustness(create_teacher(args.eval_only), args)}
        path = RESULTS / f"zoo_eval_{args.eval_only}.json"
        path.write_text(json.dumps(record, indent=2) + "\n")
        log.info("written %s", path)
        return 0
    if args.ship:
        out = ship_run(args, command)
        log.info("shipped %s: register it in robust_student/teachers/builtin.py ZOO, then write its regression "
                 "guard with --regression %s", out, out.name)
        return 0
    if not args.model:
        raise SystemExit("give --model fare|tecoa|cnn|robust, --ship RUN or --eval-only TEACHER")
    run = train(args)
    if args.train_only:
        return 0
    out = Path(args.out or WEIGHTS / f"fmnist-clip-{args.model}")
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copyfile(Path(run["student_dir"]) / name, out / name)

    from robust_student.teachers.distilled import load_student_teacher

    teacher = load_student_teacher(out, name=f"fmnist-clip-{args.model}")
    record = {
        "command": command, "model": args.model, "method": MODELS[args.model]["method"],
        "student": MODELS[args.model]["student"], "base_teacher": "fmnist-clip",
        "what": {"fare": "FARE: min ||phi(x') - phi_orig(x)||^2 from fmnist-clip's image tower",
                 "tecoa": "TeCoA: min CE(zero-shot logits of x') from fmnist-clip's image tower",
                 "robust": "resnet_tiny image tower, PGD-AT (CE on zero-shot logits of 5-step PGD x' at L-inf "
                           "eps) against fmnist-clip's locked text embeddings",
                 "cnn": "resnet_tiny image tower, CE on clean zero-shot logits against fmnist-clip's text "
                        "embeddings (no attack)"}[args.model],
        **run,
        "zero_shot_test": zero_shot_robustness(teacher, args),
        "weights_bytes": (out / "model.safetensors").stat().st_size,
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "license": {"weights": "Apache-2.0", "data": "MIT (Fashion-MNIST, Zalando Research)"},
    }
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    write_card(out)
    log.info("next: register %s in robust_student/teachers/builtin.py ZOO, then write its regression guard with "
             "--regression %s", out.name, out.name)
    zs = record["zero_shot_test"]
    log.info("%s: clean %.4f, PGD-20 %.4f (n=%d)%s -> %s", out.name, zs["clean_accuracy"], zs["pgd20"]["robust"],
             zs["pgd20"]["n"], f", AutoAttack {zs['autoattack']['robust']:.4f} (n={zs['autoattack']['n']})"
             if "autoattack" in zs else "", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
