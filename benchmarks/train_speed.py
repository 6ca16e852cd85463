"""Training throughput per method, the trainer's overhead, and the speed-up from caching teacher outputs.

1. For each method: training images/s through ``Trainer.fit`` (accelerate, progress bar, metrics, the
   epoch-end checkpoint — everything) and through a bare loop that does only what the method needs
   (``method.loss`` -> ``backward`` -> ``optimizer.step``) on the same data, student and teacher, in the same
   process, repetitions interleaved. Overhead = trainer time / bare time - 1 (target <= 10 %), computed from
   the process's CPU time (one thread by default), which other jobs on a shared machine barely disturb;
   wall-clock images/s are reported next to it.
2. Teacher-output caching: ``kd`` and ``rslad`` for several epochs with a randomly initialised open_clip
   ViT-B-32 teacher at 224 px (88 M parameters) and the 28-px ``resnet_tiny`` student (~0.3 M), with and
   without ``train.cache_teacher_outputs``; the cache costs one teacher pass over the training set.

3. ``Trainer.fit``'s RSLAD step against a plain loop written the way the RSLAD reference code
   (zibojia/RSLAD) writes its training loop: teacher logits on the clean batch, the student attacked in eval
   mode with a summed KL inner loss, then ``model.train()``, 5/6 KL on x' + 1/6 KL on x (mean over B x C) and an
   SGD step. Same student, teacher, data, batch and attack; repetitions interleaved; written on its own to
   ``train_speed_reference_cpu.{json,md}`` (``--only-reference-rslad`` measures only this, in a few minutes).

    python benchmarks/train_speed.py            # CPU -> benchmarks/results/train_speed_cpu.{json,md}
    python benchmarks/train_speed.py --quick    # a smoke run of the script itself
    python benchmarks/train_speed.py --only-reference-rslad --repeats 5   # -> train_speed_reference_cpu.{json,md}
    python benchmarks/train_speed.py --only-dghfa-bench   # DGHFA vs RSLAD at 5 and 10 PGD steps, other tables kept
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from robust_student.cpu_allocator import keep_freed_memory
from robust_student import __version__, build_dataset, create_method, create_student, create_teacher
from robust_student.config import DistillConfig
from robust_student.methods import Method, TrainState
from robust_student.training import Trainer
from robust_student.training.trainer import EpochSampler, cache_teacher_outputs, make_accelerator

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("kd", "pgd-at", "trades", "ard", "rslad", "adaad")


def timed(fn: Any, *args: Any) -> tuple[float, float]:
    """``(wall seconds, CPU seconds of this process)`` of ``fn(*args)``."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu


def bare_loop(student: nn.Module, method: Method, teachers: Mapping[str, nn.Module], dataset: Any,
              cfg: DistillConfig) -> dict[str, float]:
    """Only what the method needs: its loss, backward and an SGD step per batch. Returns the CPU seconds spent
    in ``method.loss`` (attack and forwards) and in backward + step, summed over the batches."""
    optimizer = torch.optim.SGD(student.parameters(), lr=cfg.train.lr, momentum=cfg.train.momentum,
                                weight_decay=cfg.train.weight_decay)
    loader = DataLoader(dataset, batch_size=cfg.train.batch_size, sampler=EpochSampler(len(dataset), 0),
                        generator=torch.Generator())
    method.setup(student, teachers)
    student.train()
    split = {"loss": 0.0, "backward": 0.0}
    for step, batch in enumerate(loader):
        started = time.process_time()
        out = method.loss(batch, student, teachers, TrainState(step=step, total_steps=len(loader)))
        middle = time.process_time()
        out["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        split["loss"] += middle - started
        split["backward"] += time.process_time() - middle
    return split


def trainer_run(student: nn.Module, method: Method, teachers: Mapping[str, nn.Module], dataset: Any,
                cfg: DistillConfig) -> None:
    """The whole ``Trainer.fit`` (accelerator set-up, loop, logging, epoch-end checkpoint)."""
    Trainer(cfg, student, teachers, method, dataset, None).fit()


def overhead_table(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    data = build_dataset("fashion-mnist", "train").subset(range(args.n_images))
    teacher = create_teacher(args.teacher)
    teacher.set_classes(data.prompts.classnames, data.prompts.templates)
    torch.manual_seed(0)
    student0 = create_student("resnet_tiny", teacher, image_size=28)
    rows = []
    for name in args.methods:
        cfg = DistillConfig(method=name).with_overrides({
            "train.epochs": 1, "train.batch_size": args.batch_size, "train.eval_examples": 0,
            "train.checkpoint_every": 0, "train.log_every": 10, "threat.eps": 0.1, "attack.step_size": 0.025,
            "attack.steps": args.steps, "train.output_dir": str(workdir / name), "train.overwrite": True})
        times: dict[str, list[tuple[float, float]]] = {"bare": [], "trainer": []}
        for repeat in range(args.repeats):
            order = ("bare", "trainer") if repeat % 2 == 0 else ("trainer", "bare")
            for kind in order:
                method = create_method(name, threat=cfg.threat, attack=cfg.attack, num_classes=10,
                                       embed_dim=student0.embed_dim)
                teachers = {role: teacher for role in method.teacher_roles}
                run = bare_loop if kind == "bare" else trainer_run
                times[kind].append(timed(run, copy.deepcopy(student0), method, teachers, data, cfg))
        wall = {k: statistics.median(w for w, _ in v) for k, v in times.items()}
        cpu = {k: statistics.median(c for _, c in v) for k, v in times.items()}
        rows.append({"method": name, "images": args.n_images, "bare_images_per_s": args.n_images / wall["bare"],
                     "trainer_images_per_s": args.n_images / wall["trainer"],
                     "bare_cpu_seconds": cpu["bare"], "trainer_cpu_seconds": cpu["trainer"],
                     "overhead": cpu["trainer"] / cpu["bare"] - 1,
                     "wall_overhead": wall["trainer"] / wall["bare"] - 1, "runs": times})
        logging.info("%s: bare %.1f img/s, trainer %.1f img/s, overhead (CPU time) %+.1f %%", name,
                     rows[-1]["bare_images_per_s"], rows[-1]["trainer_images_per_s"], 100 * rows[-1]["overhead"])
    return rows


def random_vit_teacher(arch: str) -> nn.Module:
    """A randomly initialised open_clip model as a Teacher: the cost of a large ViT without any download."""
    import open_clip

    from robust_student.teachers.open_clip import OpenClipTeacher

    model = open_clip.create_model(arch, pretrained=None)
    return OpenClipTeacher(model, open_clip.get_tokenizer(arch), name=f"{arch} (random init)", license="n/a")


def caching_table(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    data = build_dataset("fashion-mnist", "train").subset(range(args.cache_images))
    teacher = random_vit_teacher(args.cache_teacher)
    teacher.set_classes(data.prompts.classnames, data.prompts.templates)
    torch.manual_seed(0)
    student0 = create_student("resnet_tiny", teacher, image_size=28)
    accelerator = make_accelerator(DistillConfig().train)
    _, fill = timed(lambda: cache_teacher_outputs(data, {"teacher": teacher}, batch_size=args.batch_size,
                                                 accelerator=accelerator))
    rows = []
    for name in args.cache_methods:
        row: dict[str, Any] = {"method": name, "epochs": args.cache_epochs, "images": args.cache_images}
        for cached in (False, True):
            cfg = DistillConfig(method=name).with_overrides({
                "train.epochs": args.cache_epochs, "train.batch_size": args.batch_size, "train.eval_examples": 0,
                "train.checkpoint_every": 0, "train.cache_teacher_outputs": cached, "threat.eps": 0.1,
                "attack.step_size": 0.025, "attack.steps": args.steps,
                "train.output_dir": str(workdir / f"cache_{name}_{cached}"), "train.overwrite": True})
            method = create_method(name, threat=cfg.threat, attack=cfg.attack, num_classes=10,
                                   embed_dim=student0.embed_dim)
            _, seconds = timed(trainer_run, copy.deepcopy(student0), method, {"teacher": teacher}, data, cfg)
            row["cached_seconds" if cached else "uncached_seconds"] = seconds
        row["speedup"] = row["uncached_seconds"] / row["cached_seconds"]
        rows.append(row)
        logging.info("%s x%d epochs: uncached %.1f s, cached %.1f s (x%.2f)", name, args.cache_epochs,
                     row["uncached_seconds"], row["cached_seconds"], row["speedup"])
    return {"teacher": args.cache_teacher, "teacher_parameters": sum(p.numel() for p in teacher.parameters()),
            "teacher_input": teacher.input_size, "student_parameters": sum(p.numel() for p in student0.parameters()),
            "cache_fill_seconds": fill, "rows": rows}


DGHFA_STEPS = ("ad", "ad+pag", "dghfa")  # no gradient alignment, + the double backward, the full method


def dghfa_table(args: argparse.Namespace, steps: int | None = None) -> list[dict[str, Any]]:
    """DGHFA's cost next to RSLAD's: seconds per training step (bare loop), and the double backward's share.

    ``ad`` is DGHFA without gradient alignment or HPFA; ``ad+pag`` adds L_PAG (the teacher's input-gradient
    and the student's double backward); ``dghfa`` adds HPFA (N_m iterates through the student). ``steps``: the
    training attack's PGD steps (default ``args.steps``); both methods run the same attack.
    """
    steps = args.steps if steps is None else steps
    from robust_student.methods.dghfa import ABLATIONS

    data = build_dataset("fashion-mnist", "train").subset(range(args.n_images))
    teacher = create_teacher(args.teacher)
    teacher.set_classes(data.prompts.classnames, data.prompts.templates)
    torch.manual_seed(0)
    student0 = create_student("resnet_tiny", teacher, image_size=28)
    variants = {"rslad": ("rslad", {})}
    variants.update({f"dghfa:{k}": ("dghfa", {**ABLATIONS[k], "num_intermediate": min(6, steps)})
                     for k in DGHFA_STEPS})
    # the same two with the student in channels-last memory format (train.channels_last)
    variants.update({f"{label} channels_last": variants[label] for label in ("rslad", "dghfa:dghfa")})
    cfg = DistillConfig().with_overrides({"train.batch_size": args.batch_size, "threat.eps": 0.1,
                                          "attack.step_size": 0.025, "attack.steps": steps})
    times: dict[str, list[float]] = {k: [] for k in variants}
    splits: dict[str, list[dict[str, float]]] = {k: [] for k in variants}
    for repeat in range(args.repeats):
        for label, (name, method_args) in (variants.items() if repeat % 2 == 0 else reversed(variants.items())):
            method = create_method(name, method_args, threat=cfg.threat, attack=cfg.attack,
                                   num_classes=10, embed_dim=student0.embed_dim)
            student = copy.deepcopy(student0)
            if label.endswith("channels_last"):
                student.to(memory_format=torch.channels_last)
            _, cpu_seconds = timed(lambda: splits[label].append(
                bare_loop(student, method, {"teacher": teacher}, data, cfg)))  # the loop only, not the copy
            times[label].append(cpu_seconds)
    optimiser_steps = -(-args.n_images // args.batch_size)
    rows = [{"variant": label, "seconds_per_step": statistics.median(t) / optimiser_steps,
             "vs_rslad": statistics.median(t) / statistics.median(
                 times["rslad channels_last" if label.endswith("channels_last") else "rslad"]), "seconds": t,
             "loss_seconds_per_step": statistics.median(x["loss"] for x in splits[label]) / optimiser_steps,
             "backward_seconds_per_step": statistics.median(x["backward"] for x in splits[label]) / optimiser_steps}
            for label, t in times.items()]
    logging.info("dghfa (%d-step PGD): %s", steps, ", ".join(f"{r['variant']} {r['seconds_per_step']:.2f} s/step "
                                        f"(x{r['vs_rslad']:.2f} RSLAD)" for r in rows))
    return rows


PAPER_METHODS = ("mmt-ard", "ciard", "hpt-gpd", "fare", "tecoa")
# Settings that let every method run with the fmnist-clip teacher and the resnet_tiny student (FARE and TeCoA
# otherwise start from the teacher's own tower, a different student).
TABLE_ARGS = {"fare": {"init_from_teacher": False}, "tecoa": {"init_from_teacher": False}}


def trainable_loop(student: nn.Module, method: Method, teachers: Mapping[str, nn.Module], dataset: Any,
                   cfg: DistillConfig) -> None:
    """:func:`bare_loop`, with the method's trainable teacher roles' heads in the optimiser (CIARD's adv)."""
    params = list(student.parameters())
    for role in method.trainable_teacher_roles:
        params += teachers[role].make_trainable("head")
    optimizer = torch.optim.SGD(params, lr=cfg.train.lr, momentum=cfg.train.momentum,
                                weight_decay=cfg.train.weight_decay)
    loader = DataLoader(dataset, batch_size=cfg.train.batch_size, sampler=EpochSampler(len(dataset), 0),
                        generator=torch.Generator())
    method.setup(student, teachers)
    student.train()
    for teacher in teachers.values():
        teacher.train()
    for step, batch in enumerate(loader):
        # after CIARD's teacher warm-up, so its adv teacher's CE counts
        out = method.loss(batch, student, teachers, TrainState(step=len(loader) + step, total_steps=2 * len(loader)))
        out["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def methods_table(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Seconds per training step of MMT-ARD, CIARD, HPT-GPD, FARE and TeCoA next to RSLAD's: the same resnet_tiny
    student, batch, attack steps and data; every teacher role is a copy of fmnist-clip (CIARD's adv trains its
    head); bare loop (loss, backward, SGD step), CPU time, repetitions interleaved."""
    data = build_dataset("fashion-mnist", "train").subset(range(args.n_images))
    teacher = create_teacher(args.teacher)
    teacher.set_classes(data.prompts.classnames, data.prompts.templates)
    torch.manual_seed(0)
    student0 = create_student("resnet_tiny", teacher, image_size=28)
    cfg = DistillConfig().with_overrides({"train.batch_size": args.batch_size, "threat.eps": 0.1,
                                          "attack.step_size": 0.025, "attack.steps": args.steps})
    names = ("rslad", *args.paper_methods)
    times: dict[str, list[float]] = {k: [] for k in names}
    for repeat in range(args.repeats):
        for name in (names if repeat % 2 == 0 else tuple(reversed(names))):
            method = create_method(name, TABLE_ARGS.get(name), threat=cfg.threat, attack=cfg.attack,
                                   num_classes=10, embed_dim=student0.embed_dim)
            teachers = {role: copy.deepcopy(teacher) for role in method.teacher_roles}
            _, cpu_seconds = timed(trainable_loop, copy.deepcopy(student0), method, teachers, data, cfg)
            times[name].append(cpu_seconds)
    steps = -(-args.n_images // args.batch_size)
    rslad = statistics.median(times["rslad"])
    rows = [{"method": name, "seconds_per_step": statistics.median(t) / steps,
             "vs_rslad": statistics.median(t) / rslad, "seconds": t} for name, t in times.items()]
    logging.info("paper methods: %s", ", ".join(f"{r['method']} {r['seconds_per_step']:.2f} s/step "
                                                f"(x{r['vs_rslad']:.2f} RSLAD)" for r in rows))
    return rows


def reference_rslad_loss(student: nn.Module, teacher: nn.Module, x: Tensor, cfg: DistillConfig) -> Tensor:
    """One RSLAD loss the way the reference code computes it (our own code, following its structure).

    Teacher logits on clean ``x`` without a graph; the inner maximisation with the student in eval mode, start
    ``x + 0.001 * N(0, 1)``, summed KL(teacher soft labels || student(x')) as the attack loss, sign steps, clip to
    the ball and to [0, 1]; then ``student.train()``, a forward on x' and one on x, and
    ``5/6 * KL_adv + 1/6 * KL_nat`` with the KL averaged over batch x classes (``torch.mean`` of the elementwise
    KL), the reference's reduction (ours is ``batchmean``: C times larger, the same direction).
    """
    eps, alpha, steps = cfg.threat.eps, cfg.attack.step_size, cfg.attack.steps
    with torch.no_grad():
        teacher_logits = teacher(x)
    soft = F.softmax(teacher_logits, dim=1)
    student.eval()
    x_adv = x.detach() + 0.001 * torch.randn_like(x)
    for _ in range(steps):
        x_adv.requires_grad_()
        with torch.enable_grad():
            inner = F.kl_div(F.log_softmax(student(x_adv), dim=1), soft, reduction="sum")
        (grad,) = torch.autograd.grad(inner, [x_adv])
        x_adv = x_adv.detach() + alpha * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    student.train()
    x_adv = torch.clamp(x_adv, 0.0, 1.0).detach()
    adv_logits = student(x_adv)
    nat_logits = student(x)

    def elementwise_kl(logits: Tensor) -> Tensor:  # KL(soft || softmax(logits)), one value per (sample, class)
        return soft * (torch.log(soft.clamp_min(1e-12)) - F.log_softmax(logits, dim=1))

    return 5 / 6 * elementwise_kl(adv_logits).mean() + 1 / 6 * elementwise_kl(nat_logits).mean()


def reference_rslad_loop(student: nn.Module, teacher: nn.Module, dataset: Any, cfg: DistillConfig) -> None:
    """The reference code's training loop: a shuffled DataLoader, SGD, per batch zero_grad / loss / backward / step."""
    optimizer = torch.optim.SGD(student.parameters(), lr=cfg.train.lr, momentum=cfg.train.momentum,
                                weight_decay=cfg.train.weight_decay)
    loader = DataLoader(dataset, batch_size=cfg.train.batch_size, shuffle=True, generator=torch.Generator())
    teacher.eval()
    for batch in loader:
        x = batch["image"]
        student.train()
        optimizer.zero_grad()
        loss = reference_rslad_loss(student, teacher, x, cfg)
        loss.backward()
        optimizer.step()


def reference_rslad_table(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """``Trainer.fit`` with ``rslad`` against :func:`reference_rslad_loop`: same student (a fresh copy each run),
    teacher, data, batch, attack and SGD settings; repetitions interleaved; wall-clock images/s and CPU time."""
    data = build_dataset("fashion-mnist", "train").subset(range(args.n_images))
    teacher = create_teacher(args.teacher)
    teacher.set_classes(data.prompts.classnames, data.prompts.templates)
    torch.manual_seed(0)
    student0 = create_student("resnet_tiny", teacher, image_size=28)
    cfg = DistillConfig(method="rslad").with_overrides({
        "train.epochs": 1, "train.batch_size": args.batch_size, "train.eval_examples": 0,
        "train.checkpoint_every": 0, "train.log_every": 10, "threat.eps": 0.1, "attack.step_size": 0.025,
        "attack.steps": args.steps, "train.output_dir": str(workdir / "reference_rslad"), "train.overwrite": True})

    def make_method() -> Method:
        return create_method("rslad", threat=cfg.threat, attack=cfg.attack, num_classes=10,
                             embed_dim=student0.embed_dim)

    # Same computation? One batch, the same student and seed: our loss against the reference-style loss x C
    # (its mean over B x C against our batchmean); the start differs only in that ours clips x + noise to [0, 1].
    batch = next(iter(DataLoader(data, batch_size=args.batch_size)))
    method = make_method()
    method.setup(student0, {"teacher": teacher})
    torch.manual_seed(1)
    ours_loss = method.loss(batch, copy.deepcopy(student0).train(), {"teacher": teacher}, TrainState())["loss"].item()
    torch.manual_seed(1)
    ref_loss = reference_rslad_loss(copy.deepcopy(student0), teacher, batch["image"], cfg).item()
    num_classes = len(data.prompts.classnames)

    runs = {"ours": lambda: trainer_run(copy.deepcopy(student0), make_method(), {"teacher": teacher}, data, cfg),
            "reference": lambda: reference_rslad_loop(copy.deepcopy(student0), teacher, data, cfg)}
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in runs}
    for repeat in range(args.repeats):
        for kind in (("ours", "reference") if repeat % 2 == 0 else ("reference", "ours")):
            times[kind].append(timed(runs[kind]))
    wall = {k: statistics.median(w for w, _ in v) for k, v in times.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in times.items()}
    paired_wall = [r[0] / o[0] for o, r in zip(times["ours"], times["reference"])]
    row = {
        "images": args.n_images, "steps_per_run": -(-args.n_images // args.batch_size),
        "ours_images_per_s": args.n_images / wall["ours"], "reference_images_per_s": args.n_images / wall["reference"],
        "ratio_ours_over_reference": wall["reference"] / wall["ours"],
        "median_paired_ratio": statistics.median(paired_wall),
        "ours_cpu_seconds": cpu["ours"], "reference_cpu_seconds": cpu["reference"],
        "cpu_ratio_ours_over_reference": cpu["reference"] / cpu["ours"], "target_ratio": 1.0,
        "loss_check": {"ours_batchmean": ours_loss, "reference_mean_times_classes": ref_loss * num_classes,
                       "reference_mean": ref_loss, "num_classes": num_classes},
        "runs": {k: [{"wall_s": w, "cpu_s": c} for w, c in v] for k, v in times.items()},
    }
    logging.info("rslad vs reference-style loop: ours %.1f img/s, reference %.1f img/s, ratio %.3f (CPU time %.3f)",
                 row["ours_images_per_s"], row["reference_images_per_s"], row["ratio_ours_over_reference"],
                 row["cpu_ratio_ours_over_reference"])
    return row


def reference_markdown(result: dict[str, Any]) -> str:
    s, r, m = result["settings"], result["reference_rslad"], result["machine"]
    check = r["loss_check"]
    return "\n".join([
        "# RSLAD training step: `Trainer.fit` against a loop in the RSLAD reference code's style", "",
        f"Student `resnet_tiny` (28 px), teacher `{s['teacher']}`, Fashion-MNIST, {r['images']} images "
        f"({r['steps_per_run']} steps of batch {s['batch_size']}), {s['steps']}-step PGD at eps 0.1 (step 0.025), "
        f"SGD (lr 0.1, momentum 0.9, weight decay 5e-4), one epoch per run, a fresh copy of the same student each run; "
        f"median of {s['repeats']} interleaved repetitions.", "",
        "| loop | images/s (wall clock) | CPU s per run |", "|---|---:|---:|",
        f"| robust_student `Trainer.fit`, method `rslad` | {r['ours_images_per_s']:.1f} | {r['ours_cpu_seconds']:.2f} |",
        f"| plain loop in the RSLAD reference style | {r['reference_images_per_s']:.1f} | "
        f"{r['reference_cpu_seconds']:.2f} |", "",
        f"Ratio ours / reference (images/s, wall clock): **{r['ratio_ours_over_reference']:.3f}** (target >= "
        f"{r['target_ratio']}); median of the per-repetition ratios {r['median_paired_ratio']:.3f}; from CPU time "
        f"{r['cpu_ratio_ours_over_reference']:.3f}.", "",
        "`Trainer.fit` is timed end to end (accelerator set-up, data loading, progress bar, metrics, the end-of-run "
        "checkpoint). The reference-style loop: teacher logits on the clean batch without a graph; the student "
        "attacked in eval mode from x + 0.001 N(0, 1) with a summed KL(teacher || student) inner loss, sign steps, "
        "clip to the ball and [0, 1]; `model.train()`; 5/6 KL(teacher(x) || student(x')) + 1/6 KL(teacher(x) || "
        "student(x)), each the mean over batch x classes; `backward`, SGD step (written for this benchmark from the "
        "reference code's structure, not copied).", "",
        f"Same computation? On one batch from the same student and seed: our loss {check['ours_batchmean']:.5f} "
        f"(KL `batchmean`), the reference-style loss x {check['num_classes']} classes "
        f"{check['reference_mean_times_classes']:.5f} (its mean over B x C is {check['reference_mean']:.6f}); the "
        "attacks' starts differ only in that ours clips x + noise to [0, 1] before the first step.", "",
        f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, torch threads: {m['torch_threads']}; {m['platform']}; "
        f"Python {m['python']}; torch {m['torch']}; robust_student {m['robust_student']}; 1-min load average at start "
        f"{m.get('load_average_1min_at_start', 'n/a')} (a shared machine: absolute numbers are noisy, the interleaved "
        "ratio much less so).", "",
        *([f"Note: {result['note']}", ""] if result.get("note") else []),
        f"Reproduce: `python benchmarks/train_speed.py --only-reference-rslad --threads {s['threads']} --repeats "
        f"{s['repeats']}"
        + "".join(f" --{flag} {s[key]}" for flag, key, default in (("n-images", "n_images", 512),
                  ("batch-size", "batch_size", 64), ("steps", "steps", 5), ("teacher", "teacher", "fmnist-clip"))
                  if s[key] != default) + "`.", "",
    ])


def dghfa_rows(rows: list[dict[str, Any]]) -> list[str]:
    """The DGHFA-vs-RSLAD table: seconds per step, the ratio, and (when measured) the loss / backward split."""
    if "backward_seconds_per_step" not in rows[0]:
        return ["| variant | s / step | x RSLAD |", "|---|---:|---:|",
                *(f"| {r['variant']} | {r['seconds_per_step']:.3f} | {r['vs_rslad']:.2f} |" for r in rows)]
    return ["| variant | s / step | x RSLAD | loss (attack + forwards) s | backward + step s |",
            "|---|---:|---:|---:|---:|",
            *(f"| {r['variant']} | {r['seconds_per_step']:.3f} | {r['vs_rslad']:.2f} | "
              f"{r['loss_seconds_per_step']:.3f} | {r['backward_seconds_per_step']:.3f} |" for r in rows)]


def step_passes(steps: int, num_intermediate: int) -> tuple[int, int]:
    """Passes of the student over a batch in one RSLAD step and one DGHFA step (a lower bound of their cost).

    A forward, an input-gradient backward and a weight-gradient backward over B images count one pass each.
    RSLAD: ``2K`` for K attack steps (forward + input-backward), the forwards of x and x' (2) and their
    two-part backward (4): ``2K + 6``. DGHFA: the same attack, the forwards of x and of the N_m iterates with
    their backward (``3 (N_m + 1)``), g_S's eval-mode forward and input-backward (2) and the double backward of
    L_PAG through both (about 4): ``2K + 3 (N_m + 1) + 6``.
    """
    return 2 * steps + 6, 2 * steps + 3 * (num_intermediate + 1) + 6


def pass_count_text(steps: int, num_intermediate: int, measured: float) -> str:
    rslad, dghfa = step_passes(steps, num_intermediate)
    return (f"What the math needs at {steps}-step PGD and N_m = {num_intermediate}, counted in passes of the student "
            f"over a batch (a forward, an input-gradient backward or a weight-gradient backward is one pass; "
            f"`step_passes`, an estimate): RSLAD {rslad}, DGHFA {dghfa}, a ratio of about x{dghfa / rslad:.2f}; measured "
            f"x{measured:.2f}.")


def allocator_text(result: dict[str, Any], table: str) -> str:
    kept = (result.get("allocator") or {}).get(table)
    return {True: "`keep_freed_memory()` (robust_student.cpu_allocator, what the benchmarks and the CLI use)",
            False: "glibc's defaults (`ROBUST_STUDENT_MALLOC=system`)",
            None: "glibc's defaults (measured before `keep_freed_memory()` existed)"}[kept]


def to_markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        "# Training speed (`benchmarks/train_speed.py`)", "",
        f"Machine: {result['machine']}; torch {result['torch']}, {s['threads']} threads; robust_student "
        f"{result['robust_student']}. Student `resnet_tiny` (28 px), teacher `{s['teacher']}`, Fashion-MNIST, "
        f"batch {s['batch_size']}, {s['steps']}-step PGD (eps 0.1), {s['n_images']} images per run, median of "
        f"{s['repeats']} interleaved repetitions.", "",
    ]
    if result.get("overhead"):
        lines += ["## Trainer overhead over the bare loop each method needs", "",
                  f"Allocator: {allocator_text(result, 'overhead')}.", "",
                  "| method | bare loop (img/s) | Trainer.fit (img/s) | bare CPU s | Trainer CPU s | overhead (CPU time) |",
                  "|---|---:|---:|---:|---:|---:|"]
        for row in result["overhead"]:
            lines.append(f"| {row['method']} | {row['bare_images_per_s']:.1f} | {row['trainer_images_per_s']:.1f} "
                         f"| {row['bare_cpu_seconds']:.2f} | {row['trainer_cpu_seconds']:.2f} "
                         f"| {100 * row['overhead']:+.1f} % |")
        lines += ["", "Trainer.fit is timed end to end: accelerator set-up, data loading, progress bar, metrics "
                  "and the epoch-end checkpoint are all inside. Images/s are wall clock on a machine shared with "
                  "other jobs (noisy); the overhead compares CPU seconds of this process, which such sharing "
                  "barely changes.", ""]
    cache = result.get("caching")
    if cache:
        lines += [
            "## Caching the teacher's clean outputs", "",
            f"Allocator: {allocator_text(result, 'caching')}.", "",
            f"Teacher `{cache['teacher']}` ({cache['teacher_parameters'] / 1e6:.1f} M parameters, "
            f"{cache['teacher_input']} px input), student {cache['student_parameters'] / 1e6:.2f} M parameters; "
            f"filling the cache (one teacher pass over {cache['rows'][0]['images']} images) takes "
            f"{cache['cache_fill_seconds']:.1f} CPU s and is included in the cached times.", "",
            "| method | epochs | uncached (CPU s) | cached (CPU s) | speed-up |", "|---|---:|---:|---:|---:|",
        ]
        for row in cache["rows"]:
            lines.append(f"| {row['method']} | {row['epochs']} | {row['uncached_seconds']:.1f} | "
                         f"{row['cached_seconds']:.1f} | x{row['speedup']:.2f} |")
        lines += ["", "AdaAD is left out: its losses use the teacher at x' only (alpha 1), so there is nothing to "
                  "cache.", ""]
    dghfa = result.get("dghfa")
    if dghfa:
        by = {row["variant"]: row for row in dghfa}
        lines += [
            "## DGHFA step time next to RSLAD's", "",
            f"Bare loop (loss, backward, SGD step), batch {s['batch_size']}, {s['steps']}-step PGD, median of "
            f"{s['repeats']} interleaved repetitions. `dghfa:ad` is DGHFA with neither gradient alignment nor HPFA; "
            "`dghfa:ad+pag` adds L_PAG (the teacher's input-gradient and the student's double backward); "
            "`dghfa:dghfa` is the full method (DWGA + HPFA over min(6, steps) PGD iterates). The `channels_last` "
            "rows keep the student's weights in channels-last memory format (`train.channels_last=true`; same "
            "math) and are compared with RSLAD in that format. "
            f"Allocator: {allocator_text(result, 'dghfa')}.", "",
        ]
        lines += dghfa_rows(dghfa)
        double = by["dghfa:ad+pag"]["seconds_per_step"] / by["dghfa:ad"]["seconds_per_step"] - 1
        lines += ["", f"The double backward (L_PAG) adds {100 * double:.0f} % to a DGHFA step without it.", ""]
        if "backward_seconds_per_step" in by["rslad"]:
            full, rslad = by["dghfa:dghfa"], by["rslad"]
            lines += [
                f"Where the full method's extra {full['seconds_per_step'] - rslad['seconds_per_step']:.3f} s per step "
                f"goes: {full['loss_seconds_per_step'] - rslad['loss_seconds_per_step']:.3f} s in the loss (the "
                "teacher's input-gradient, the student's eval-mode forward for g_S, and one train-mode forward over "
                f"all N_m iterates instead of one adversarial batch) and "
                f"{full['backward_seconds_per_step'] - rslad['backward_seconds_per_step']:.3f} s in backward "
                "(through those N_m x B iterates and the double backward of L_PAG). Both are what eqs. 1 and 5 "
                "compute: every HPFA iterate's embedding carries gradient to the student, and g_S must be "
                "differentiated; the iterates already share one batched forward.", "",
                pass_count_text(s["steps"], min(6, s["steps"]), full["vs_rslad"]), ""]
            if "dghfa:dghfa channels_last" in by:
                cl = by["dghfa:dghfa channels_last"]
                lines += [
                    f"Channels-last memory format (`train.channels_last=true`) makes the full DGHFA step "
                    f"{100 * (1 - cl['seconds_per_step'] / full['seconds_per_step']):.0f} % faster and RSLAD's "
                    f"{100 * (1 - by['rslad channels_last']['seconds_per_step'] / rslad['seconds_per_step']):.0f} "
                    f"% faster; DGHFA / RSLAD, both channels-last: x{cl['vs_rslad']:.2f}.", ""]
    for steps, rows in (result.get("dghfa_by_steps") or {}).items():
        lines += [f"The same at {steps}-step PGD (both methods; HPFA over min(6, {steps}) iterates), measured in the "
                  "same run as the table above (`--only-dghfa-bench` re-measures both):", ""]
        lines += dghfa_rows(rows)
        full = next(r for r in rows if r["variant"] == "dghfa:dghfa")
        lines += ["", pass_count_text(int(steps), min(6, int(steps)), full["vs_rslad"]), ""]
    paper = result.get("paper_methods")
    if paper:
        lines += [
            "## MMT-ARD, CIARD, HPT-GPD, FARE and TeCoA step time next to RSLAD's", "",
            f"Bare loop (loss, backward, SGD step), the same `resnet_tiny` student, batch {s['batch_size']}, "
            f"{s['steps']}-step PGD, median of {s['repeats']} interleaved repetitions. Every teacher role is a copy "
            "of the same teacher; CIARD's adv teacher trains its head (after its warm-up); HPT-GPD's anchor is a "
            "copy of the student; FARE and TeCoA distil into the compact student here (`init_from_teacher=False`: "
            "their real use fine-tunes the teacher's own tower, a different student). Measured in its own run "
            "(`python benchmarks/train_speed.py --only-paper-bench`), so compare its ratios, not its seconds, with "
            f"the tables above. Allocator: {allocator_text(result, 'paper_methods')}.", "",
            "| method | s / step | x RSLAD |", "|---|---:|---:|",
        ]
        lines += [f"| {r['method']} | {r['seconds_per_step']:.3f} | {r['vs_rslad']:.2f} |" for r in paper]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    kept_freed_memory = keep_freed_memory()  # this process is the benchmark's: see robust_student.cpu_allocator
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--teacher", default="fmnist-clip")
    parser.add_argument("--n-images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="PGD steps of the training attack")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU time is exact with one)")
    parser.add_argument("--cache-teacher", default="ViT-B-32")
    parser.add_argument("--cache-methods", nargs="+", default=["kd", "rslad"])
    parser.add_argument("--cache-images", type=int, default=256)
    parser.add_argument("--cache-epochs", type=int, default=3)
    parser.add_argument("--no-cache-bench", action="store_true")
    parser.add_argument("--no-dghfa-bench", action="store_true")
    parser.add_argument("--dghfa-extra-steps", nargs="*", type=int, default=[10],
                        help="also time DGHFA vs RSLAD at these PGD step counts (a longer attack dilutes DGHFA's "
                             "fixed extra cost)")
    parser.add_argument("--only-dghfa-bench", action="store_true",
                        help="re-measure only the DGHFA tables, keeping the other tables of an earlier full run")
    parser.add_argument("--paper-methods", nargs="+", default=list(PAPER_METHODS))
    parser.add_argument("--no-paper-bench", action="store_true")
    parser.add_argument("--only-paper-bench", action="store_true",
                        help="only the MMT-ARD / CIARD / HPT-GPD / FARE / TeCoA vs RSLAD table")
    parser.add_argument("--only-reference-rslad", action="store_true",
                        help="only Trainer.fit's RSLAD against a loop in the RSLAD reference code's style "
                             "(writes <output>_reference beside the main results, e.g. train_speed_reference_cpu)")
    parser.add_argument("--no-reference-rslad", action="store_true")
    parser.add_argument("--note", default="", help="a remark stored with the reference-RSLAD result")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check that the script runs")
    parser.add_argument("--output", default=str(RESULTS / "train_speed_cpu"))
    args = parser.parse_args()
    if args.quick:
        args.n_images, args.repeats, args.steps, args.cache_images, args.cache_epochs = 128, 1, 2, 32, 2
        args.batch_size, args.cache_teacher = 64, "ViT-B-32"
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("robust_student").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)

    output = Path(args.output)
    if (not args.no_reference_rslad and not args.only_dghfa_bench) or args.only_reference_rslad:
        reference_output = output.with_name(output.name.replace("train_speed", "train_speed_reference", 1)
                                            if output.name.startswith("train_speed") else output.name + "_reference")
        with tempfile.TemporaryDirectory() as tmp:
            from attack_speed import machine_description  # the one machine description of the benchmarks

            reference = {
                "benchmark": "RSLAD training images/s, Trainer.fit vs a plain loop in the RSLAD reference style",
                "machine": machine_description(torch.device("cpu")),
                "settings": {"teacher": args.teacher, "batch_size": args.batch_size, "steps": args.steps,
                             "n_images": args.n_images, "repeats": args.repeats, "threads": args.threads},
            }
            reference["reference_rslad"] = reference_rslad_table(args, Path(tmp))
        if args.note:
            reference["note"] = args.note
        reference_output.parent.mkdir(parents=True, exist_ok=True)
        reference_output.with_suffix(".json").write_text(json.dumps(reference, indent=2) + "\n", encoding="utf-8")
        reference_output.with_suffix(".md").write_text(reference_markdown(reference), encoding="utf-8")
        print(reference_markdown(reference))
        if args.only_reference_rslad:
            return
    with tempfile.TemporaryDirectory() as tmp:
        result: dict[str, Any] = {
            "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, CPU",
            "torch": torch.__version__, "robust_student": __version__,
            "settings": {"teacher": args.teacher, "batch_size": args.batch_size, "steps": args.steps,
                         "n_images": args.n_images, "repeats": args.repeats, "threads": args.threads},
        }
        if args.only_paper_bench or args.only_dghfa_bench:  # keep an earlier full run's other tables
            previous = output.with_suffix(".json")
            if previous.is_file():
                old = json.loads(previous.read_text(encoding="utf-8"))
                if old.get("settings") != result["settings"]:
                    raise SystemExit(f"{previous} was measured with other settings; run the full benchmark")
                result = {**old, **{k: result[k] for k in ("machine", "torch", "robust_student")}}
        measured = (["dghfa"] if args.only_dghfa_bench else ["paper_methods"] if args.only_paper_bench else
                    ["overhead", "caching", "dghfa", "paper_methods"])
        result["allocator"] = {**result.get("allocator", {}), **{table: kept_freed_memory for table in measured}}
        if args.only_dghfa_bench:
            result["dghfa"] = dghfa_table(args)
        elif not args.only_paper_bench:
            result["overhead"] = overhead_table(args, Path(tmp))
            if not args.no_cache_bench:
                result["caching"] = caching_table(args, Path(tmp))
            if not args.no_dghfa_bench:
                result["dghfa"] = dghfa_table(args)
        if (args.only_dghfa_bench or not (args.no_dghfa_bench or args.only_paper_bench)) and args.dghfa_extra_steps:
            result["dghfa_by_steps"] = {str(k): dghfa_table(args, k) for k in args.dghfa_extra_steps}
        if not args.no_paper_bench and not args.only_dghfa_bench:
            result["paper_methods"] = methods_table(args)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    output.with_suffix(".md").write_text(to_markdown(result), encoding="utf-8")
    print(to_markdown(result))


if __name__ == "__main__":
    main()
