"""What keeping freed memory in the process (``robust_student.cpu_allocator``) buys on CPU, and that it changes no number.

Each measurement runs in a child process, once with glibc's malloc defaults (``ROBUST_STUDENT_MALLOC=system``)
and once with :func:`robust_student.cpu_allocator.keep_freed_memory`, the two interleaved over ``--repeats``
(mallopt is process-wide, so the two cannot share a process). A child times, with one torch thread:

1. a train-mode forward + backward of ``resnet_tiny`` (28 px) per image, at batch sizes 64 to 320 (DGHFA's HPFA
   forward is N_m x B images: 320 at batch 64 and N_m 5);
2. the bare training step (loss, backward, SGD step; ``train_speed.py``'s ``bare_loop``) of RSLAD and of the
   full DGHFA, batch 64, 5-step PGD, teacher ``fmnist-clip``: their ratio is the DGHFA / RSLAD target of issue 14;
3. PGD-20 (eps 0.1) on 256 test images at the evaluation's batch size (256), the kind of work the
   evaluation's attacks do.

It also hashes the trained weights after each step benchmark and the adversarial
images of the PGD run: the two settings must give the same hashes (the same kernels on the same values).

    python benchmarks/cpu_allocator.py             # -> benchmarks/results/cpu_allocator_cpu.{json,md}
    python benchmarks/cpu_allocator.py --quick     # a smoke run of the script itself
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attack_speed import machine_description  # noqa: E402  (the one machine description of the benchmarks)

RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS = ("system", "keep")  # glibc defaults; robust_student.cpu_allocator.keep_freed_memory()


def digest(tensors: list[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One process's measurements (the allocator setting comes from the environment, applied first)."""
    from robust_student.cpu_allocator import keep_freed_memory

    applied = keep_freed_memory()
    torch.set_num_threads(1)
    from robust_student import build_dataset, create_method, create_student, create_teacher
    from robust_student.attacks import LinfBall, objectives, pgd
    from robust_student.config import DistillConfig
    from train_speed import bare_loop

    out: dict[str, Any] = {"applied": applied, "per_image_ms": {}, "step_seconds": {}, "hashes": {}}
    data = build_dataset("fashion-mnist", "train").subset(range(args.n_images))
    teacher = create_teacher("fmnist-clip")
    teacher.set_classes(data.prompts.classnames, data.prompts.templates)
    torch.manual_seed(0)
    student0 = create_student("resnet_tiny", teacher, image_size=28)

    # 1. forward + backward per image by batch size
    student = copy.deepcopy(student0).train()
    for batch in args.batches:
        x = torch.rand(batch, 3, 28, 28, generator=torch.Generator().manual_seed(batch))
        y = torch.arange(batch) % 10
        seconds = []
        for i in range(args.inner + 1):
            started = time.process_time()
            F.cross_entropy(student(x), y).backward()
            if i:  # the first is a warm-up
                seconds.append(time.process_time() - started)
            student.zero_grad(set_to_none=True)
        out["per_image_ms"][str(batch)] = 1000 * statistics.median(seconds) / batch

    # 2. the bare training step of RSLAD and of DGHFA
    cfg = DistillConfig().with_overrides({"train.batch_size": 64, "threat.eps": 0.1, "attack.step_size": 0.025,
                                          "attack.steps": 5})
    steps = -(-args.n_images // 64)
    for name, method_args in (("rslad", {}), ("dghfa", {"num_intermediate": 5})):
        torch.manual_seed(1)
        method = create_method(name, method_args, threat=cfg.threat, attack=cfg.attack, num_classes=10,
                               embed_dim=student0.embed_dim)
        student = copy.deepcopy(student0)
        started = time.process_time()
        bare_loop(student, method, {"teacher": teacher}, data, cfg)
        out["step_seconds"][name] = (time.process_time() - started) / steps
        out["hashes"][f"{name} weights"] = digest(list(student.state_dict().values()))

    # 3. PGD-20 at the evaluation's batch size
    test = build_dataset("fashion-mnist", "test").subset(range(256))
    x = torch.stack([test[i]["image"] for i in range(len(test))])
    y = torch.tensor([int(test[i]["label"]) for i in range(len(test))])
    student = copy.deepcopy(student0).eval()
    torch.manual_seed(2)
    started = time.process_time()
    x_adv = pgd(objectives.ce(student, y), x, LinfBall(0.1), steps=20, step_size=0.01, random_start=True)
    out["pgd20_seconds"] = time.process_time() - started
    out["hashes"]["pgd-20 images"] = digest([x_adv])
    return out


def run_child(setting: str, args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "ROBUST_STUDENT_MALLOC": setting}
    cmd = [sys.executable, __file__, "--child", "--n-images", str(args.n_images), "--inner", str(args.inner),
           "--batches", *map(str, args.batches)]
    done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarise(runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> dict[str, Any]:
    med = statistics.median
    summary: dict[str, Any] = {}
    for setting, rs in runs.items():
        summary[setting] = {
            "per_image_ms": {b: med(r["per_image_ms"][b] for r in rs) for b in rs[0]["per_image_ms"]},
            "step_seconds": {m: med(r["step_seconds"][m] for r in rs) for m in rs[0]["step_seconds"]},
            "pgd20_seconds": med(r["pgd20_seconds"] for r in rs),
        }
        summary[setting]["dghfa_vs_rslad"] = (summary[setting]["step_seconds"]["dghfa"]
                                              / summary[setting]["step_seconds"]["rslad"])
    hashes = {s: {json.dumps(r["hashes"], sort_keys=True) for r in rs} for s, rs in runs.items()}
    summary["identical_numbers"] = len(set().union(*hashes.values())) == 1
    summary["hashes"] = runs[SETTINGS[0]][0]["hashes"]
    return summary


def to_markdown(result: dict[str, Any]) -> str:
    m, s, sy, kp = result["machine"], result["summary"], result["summary"]["system"], result["summary"]["keep"]
    lines = ["# Keeping freed memory in the process (`benchmarks/cpu_allocator.py`)", "",
             f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs (load {m.get('load_average_1min_at_start')} at "
             f"start), one torch thread; {m['platform']}; torch {m['torch']}; robust_student {m['robust_student']}. "
             f"Each setting in its own process, {result['settings']['repeats']} interleaved repetitions, medians; "
             "CPU seconds of the process. `system`: glibc's malloc defaults (`ROBUST_STUDENT_MALLOC=system`); "
             "`keep`: `robust_student.cpu_allocator.keep_freed_memory()` (what the CLI and the benchmarks do).", "",
             "## Train-mode forward + backward of `resnet_tiny` (28 px), ms per image", "",
             "| batch | system | keep | speed-up |", "|---:|---:|---:|---:|"]
    for b, v in sy["per_image_ms"].items():
        lines.append(f"| {b} | {v:.2f} | {kp['per_image_ms'][b]:.2f} | x{v / kp['per_image_ms'][b]:.2f} |")
    lines += ["", f"## Training step (bare loop, batch 64, 5-step PGD, {result['settings']['n_images']} images), "
              "s / step", "", "| method | system | keep | speed-up |", "|---|---:|---:|---:|"]
    for name, v in sy["step_seconds"].items():
        lines.append(f"| {name} | {v:.3f} | {kp['step_seconds'][name]:.3f} | x{v / kp['step_seconds'][name]:.2f} |")
    lines.append(f"| DGHFA / RSLAD | x{sy['dghfa_vs_rslad']:.2f} | x{kp['dghfa_vs_rslad']:.2f} | |")
    lines += ["", "## PGD-20 on 256 test images at batch 256 (s)", "",
              "| system | keep | speed-up |", "|---:|---:|---:|",
              f"| {sy['pgd20_seconds']:.2f} | {kp['pgd20_seconds']:.2f} | x{sy['pgd20_seconds'] / kp['pgd20_seconds']:.2f} |",
              "", "## Same numbers", "",
              ("The trained weights of both methods and the PGD-20 images hash the same in every process of both "
               "settings" if s["identical_numbers"] else "**The hashes differ between processes**") +
              f": {', '.join(f'{k} `{v}`' for k, v in s['hashes'].items())}.", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--n-images", type=int, default=256, help="training images per step benchmark (batch 64)")
    p.add_argument("--inner", type=int, default=5, help="timed forward + backward passes per batch size")
    p.add_argument("--batches", type=int, nargs="+", default=[64, 128, 192, 256, 320])
    p.add_argument("--output", default=str(RESULTS / "cpu_allocator_cpu"))
    p.add_argument("--quick", action="store_true", help="tiny sizes: check that the script runs")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    if args.quick:
        args.repeats, args.n_images, args.inner, args.batches = 1, 64, 1, [16, 32]
        args.output = "/tmp/cpu_allocator_quick"
    torch.set_num_threads(1)
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in SETTINGS}
    for repeat in range(args.repeats):
        for setting in (SETTINGS if repeat % 2 == 0 else SETTINGS[::-1]):
            runs[setting].append(run_child(setting, args))
            print(f"repeat {repeat + 1}/{args.repeats} {setting}: {runs[setting][-1]['step_seconds']}", flush=True)
    if not all(r["applied"] for r in runs["keep"]):
        raise SystemExit("keep_freed_memory() did not apply here (not glibc?): nothing to compare")
    result = {"benchmark": "glibc malloc defaults vs keep_freed_memory()", "machine":
              machine_description(torch.device("cpu")), "settings": {k: getattr(args, k) for k in
              ("repeats", "n_images", "inner", "batches")}, "runs": runs, "summary": summarise(runs, args)}
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    output.with_suffix(".md").write_text(to_markdown(result), encoding="utf-8")
    print(to_markdown(result))


if __name__ == "__main__":
    main()
