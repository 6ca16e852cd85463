"""PGD-20 throughput: ``robust_student.attacks.pgd`` against a minimal hand-written PGD loop and torchattacks' PGD.

The library's PGD carries a threat object, per-sample objectives and input-only gradients; this benchmark checks
that none of that costs speed. Every loop attacks the same ``resnet_tiny`` student (eval mode) on the same batch,
with the same eps, step size, number of steps and a uniform random start; repetitions are interleaved (the order
rotates each repetition) and the median images/s of each is reported with the ratios ours / hand-written
(target >= 0.95) and ours / torchattacks (target >= 1.0). torchattacks (``pip install "robust-student[bench]"``)
is what a user would most likely pick instead; without it that peer is skipped and the result says so.

Fairness check, outside the timings: the robust accuracy each attack leaves on the batch and the mean
cross-entropy at its final iterate, over a few random starts. The labels are the model's own clean predictions
(clean accuracy 100 %), so the robust accuracy says how many predictions each attack flips.

    python benchmarks/attack_speed.py                 # CPU -> benchmarks/results/attack_speed_cpu.{json,md}
    python benchmarks/attack_speed.py --threads 1     # steadier timings on a shared machine
    python benchmarks/attack_speed.py --device cuda   # GPU -> benchmarks/results/attack_speed_gpu.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robust_student.cpu_allocator import keep_freed_memory
from robust_student import __version__, create_student
from robust_student.attacks import LinfBall, objectives, pgd

RESULTS = Path(__file__).resolve().parent / "results"


def reference_pgd(model: nn.Module, x: Tensor, y: Tensor, eps: float, step: float, steps: int) -> Tensor:
    """The textbook L-inf PGD loop with a uniform random start (what a research script would write)."""
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + step * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()


def ours_pgd(model: nn.Module, x: Tensor, y: Tensor, eps: float, step: float, steps: int) -> Tensor:
    return pgd(objectives.ce(model, y), x, LinfBall(eps), steps=steps, step_size=step, random_start=True)


def torchattacks_pgd(model: nn.Module, eps: float, step: float, steps: int) -> Callable[[Tensor, Tensor], Tensor]:
    """torchattacks' ``PGD`` (uniform random start, CE loss, sign step, clip to the ball and to [0, 1])."""
    import torchattacks

    return torchattacks.PGD(model, eps=eps, alpha=step, steps=steps, random_start=True)


def _time(fn: Callable[[], Tensor], device: torch.device) -> tuple[float, float]:
    """``(wall seconds, CPU seconds of this process)`` of ``fn()``; with one torch thread the CPU time barely
    moves when other jobs share the machine, the wall clock does."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, time.process_time() - cpu


def machine_description(device: torch.device) -> dict[str, object]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    info: dict[str, object] = {
        "cpu": cpu, "logical_cpus": torch.multiprocessing.cpu_count(), "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
        "robust_student": __version__,
    }
    if hasattr(os, "getloadavg"):
        info["load_average_1min_at_start"] = round(os.getloadavg()[0], 2)  # a shared machine makes timings noisy
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def agreement(model: nn.Module, x: Tensor, y: Tensor, attacks: dict[str, Callable[[], Tensor]],
              starts: int) -> dict[str, dict[str, object]]:
    """Per attack: robust accuracy (%) and mean CE at the final iterate on the batch, for ``starts`` seeds.

    Every attack runs from the same seed per start, and the largest ``|x_adv - x_adv of ours|`` is recorded: the
    uniform start is drawn the same way by all three, so equal iterates mean the same attack, step for step.
    """
    out: dict[str, dict[str, object]] = {}
    ours: list[Tensor] = []
    for name, attack in attacks.items():
        accuracy, ce, linf, diff = [], [], [], []
        for start in range(starts):
            torch.manual_seed(1000 + start)
            x_adv = attack()
            with torch.no_grad():
                logits = model(x_adv)
            accuracy.append(round(100 * (logits.argmax(1) == y).float().mean().item(), 2))
            ce.append(round(F.cross_entropy(logits, y).item(), 4))
            linf.append((x_adv - x).abs().max().item())
            if name == "ours":
                ours.append(x_adv)
            diff.append((x_adv - ours[start]).abs().max().item())
        out[name] = {"robust_accuracy_percent": accuracy, "mean_robust_accuracy_percent":
                     round(statistics.mean(accuracy), 2), "final_ce": ce, "mean_final_ce": round(statistics.mean(ce), 4),
                     "max_linf_times_255": round(255 * max(linf), 4),
                     "max_abs_diff_to_ours_times_255": round(255 * max(diff), 4)}
    return out


def run(device: str = "cpu", batch_size: int = 128, image_size: int = 28, steps: int = 20, repeats: int = 7,
        width: int = 16, seed: int = 0, threads: int | None = None, torchattacks: bool = True,
        check_starts: int = 3) -> dict[str, object]:
    """Measure every loop and return the result dict (images/s per repetition, medians, ratios, agreement)."""
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    machine = machine_description(dev)
    torch.manual_seed(seed)
    model = create_student("resnet_tiny", embed_dim=64, num_classes=10, image_size=image_size, width=width)
    model.set_classifier(F.normalize(torch.randn(64, 10), dim=0), logit_scale=20.0)
    model = model.to(dev).eval()
    x = torch.rand(batch_size, 3, image_size, image_size, device=dev)
    with torch.no_grad():
        y = model(x).argmax(1)  # the model's own predictions: clean accuracy 100 %, robust accuracy = not flipped
    eps, step = 8 / 255, 2 / 255
    loops = {"ours": lambda: ours_pgd(model, x, y, eps, step, steps),
             "reference": lambda: reference_pgd(model, x, y, eps, step, steps)}
    skipped = None
    if torchattacks:
        try:
            peer = torchattacks_pgd(model, eps, step, steps)
            loops["torchattacks"] = lambda: peer(x, y)
            machine["torchattacks"] = __import__("torchattacks").__version__
        except ImportError:
            skipped = 'torchattacks is not installed (pip install "robust-student[bench]"): its PGD was not measured'
            print(f"warning: {skipped}")
    else:
        skipped = "torchattacks left out (--no-torchattacks)"
    check = agreement(model, x, y, loops, check_starts)
    for fn in loops.values():  # warm-up (allocator, kernels)
        _time(fn, dev)
    seconds: dict[str, list[float]] = {name: [] for name in loops}
    cpu_seconds: dict[str, list[float]] = {name: [] for name in loops}
    names = list(loops)
    for rep in range(repeats):
        order = names[rep % len(names):] + names[:rep % len(names)]  # rotate who goes first
        for name in order:
            wall, cpu = _time(loops[name], dev)
            seconds[name].append(wall)
            cpu_seconds[name].append(cpu)
    throughput = {name: [batch_size / s for s in values] for name, values in seconds.items()}
    median = {name: statistics.median(values) for name, values in throughput.items()}
    cpu_median = {name: statistics.median(values) for name, values in cpu_seconds.items()}
    result: dict[str, object] = {
        "benchmark": "PGD-20 images/s, robust_student pgd vs minimal hand-written loop"
                     + (" and torchattacks.PGD" if "torchattacks" in loops else ""),
        "device": dev.type, "model": f"resnet_tiny(width={width})", "batch_size": batch_size,
        "image_size": image_size, "steps": steps, "eps": "8/255", "step_size": "2/255", "random_start": "uniform",
        "labels": "the model's clean predictions", "repeats": repeats,
        "images_per_s": {name: [round(v, 2) for v in values] for name, values in throughput.items()},
        "median_images_per_s": {name: round(v, 2) for name, v in median.items()},
        "cpu_seconds": {name: [round(v, 3) for v in values] for name, values in cpu_seconds.items()},
        "median_cpu_seconds": {name: round(v, 3) for name, v in cpu_median.items()},
    }
    for peer_name, key in (("reference", "reference"), ("torchattacks", "torchattacks")):
        if peer_name not in loops:
            continue
        paired = [ours / other for ours, other in zip(throughput["ours"], throughput[peer_name])]
        result[f"ratio_ours_over_{key}"] = round(median["ours"] / median[peer_name], 4)
        result[f"median_paired_ratio_{key}" if key != "reference" else "median_paired_ratio"] = round(
            statistics.median(paired), 4)
        if dev.type == "cpu":  # images per CPU second: ours / peer
            result[f"cpu_ratio_ours_over_{key}"] = round(cpu_median[peer_name] / cpu_median["ours"], 4)
    result["target_ratio"] = 0.95
    if "torchattacks" in loops:
        result["target_ratio_torchattacks"] = 1.0
    if skipped:
        result["torchattacks_skipped"] = skipped
    accuracies = [v["mean_robust_accuracy_percent"] for v in check.values()]
    result["agreement"] = {"random_starts": check_starts, "per_attack": check,
                           "max_robust_accuracy_gap_points": round(max(accuracies) - min(accuracies), 2)}
    result["machine"] = machine
    return result


LABELS = {"ours": "robust_student `pgd`", "reference": "minimal hand-written loop",
          "torchattacks": "torchattacks `PGD`"}


def to_markdown(result: dict) -> str:
    med = result["median_images_per_s"]
    cpu = result.get("median_cpu_seconds") if result["device"] == "cpu" else None
    machine = result["machine"]
    hardware = machine.get("gpu") or (f"{machine['cpu']}, {machine['logical_cpus']} logical CPUs, "
                                      f"torch threads: {machine['torch_threads']}")
    lines = [
        f"# PGD-20 speed on {result['device'].upper()}",
        "",
        f"{result['model']}, batch {result['batch_size']} of {result['image_size']} px images, "
        f"{result['steps']} steps, eps {result['eps']}, step {result['step_size']}, "
        f"{result.get('random_start', 'uniform')} random start; {result['repeats']} interleaved repetitions, median.",
        "",
        *(["| loop | median images/s (wall clock) | median CPU s per batch |", "|---|---|---|",
            *[f"| {LABELS.get(name, name)} | {value:.1f} | {cpu[name]:.2f} |" for name, value in med.items()]]
          if cpu else
          ["| loop | median images/s |", "|---|---|",
           *[f"| {LABELS.get(name, name)} | {value:.1f} |" for name, value in med.items()]]),
        "",
        f"Ratio ours / hand-written: **{result['ratio_ours_over_reference']:.3f}** (target >= {result['target_ratio']}); "
        f"median of the per-repetition ratios: {result['median_paired_ratio']:.3f}"
        + (f"; from CPU time: {result['cpu_ratio_ours_over_reference']:.3f}" if "cpu_ratio_ours_over_reference" in result
           else "") + ".",
        "",
    ]
    if "ratio_ours_over_torchattacks" in result:
        lines += [f"Ratio ours / torchattacks {machine.get('torchattacks', '')}: "
                  f"**{result['ratio_ours_over_torchattacks']:.3f}** (target >= {result['target_ratio_torchattacks']}); "
                  f"median of the per-repetition ratios: {result['median_paired_ratio_torchattacks']:.3f}"
                  + (f"; from CPU time: {result['cpu_ratio_ours_over_torchattacks']:.3f}"
                     if "cpu_ratio_ours_over_torchattacks" in result else "") + ".", ""]
    if result.get("torchattacks_skipped"):
        lines += [f"Not measured: {result['torchattacks_skipped']}.", ""]
    check = result.get("agreement")
    if check:
        lines += [
            f"Same attack? Robust accuracy each leaves on this batch (labels: {result.get('labels', 'random')}, so "
            f"clean accuracy is 100 %) and the mean cross-entropy at its final iterate, over {check['random_starts']} "
            "random starts (outside the timings):",
            "",
            "| loop | robust accuracy (%) per start | mean | mean final CE | max abs(x_adv - x) x 255 "
            "| max abs(x_adv - ours' x_adv) x 255 |",
            "|---|---|---:|---:|---:|---:|",
            *[f"| {LABELS.get(name, name)} | {', '.join(f'{a:.2f}' for a in row['robust_accuracy_percent'])} | "
              f"{row['mean_robust_accuracy_percent']:.2f} | {row['mean_final_ce']:.4f} | {row['max_linf_times_255']:.3f} "
              f"| {row.get('max_abs_diff_to_ours_times_255', float('nan')):.3g} |"
              for name, row in check["per_attack"].items()],
            "",
            f"Largest gap between the attacks' mean robust accuracies: {check['max_robust_accuracy_gap_points']:.2f} "
            "percentage points. Each start seeds every attack alike and all three draw their uniform start the same "
            "way, so a zero last column means the same iterates (up to floating-point rounding).",
            "",
        ]
    lines += [
        f"Machine: {hardware}; {machine['platform']}; Python {machine['python']}; torch {machine['torch']}; "
        f"robust_student {machine['robust_student']}"
        + (f"; torchattacks {machine['torchattacks']}" if machine.get("torchattacks") else "")
        + f"; 1-min load average at start {machine.get('load_average_1min_at_start', 'n/a')} (a shared machine: "
        "absolute numbers are noisy, the interleaved ratios much less so).",
        "",
        *([f"Note: {result['note']}", ""] if result.get("note") else []),
        "Reproduce: `python benchmarks/attack_speed.py"
        + (" --device cuda" if result["device"] == "cuda" else "")
        + f" --threads {machine['torch_threads']} --repeats {result['repeats']}"
        + (f" --check-starts {check['random_starts']}" if check and check["random_starts"] != 3 else "")
        + (" --no-torchattacks" if result.get("torchattacks_skipped", "").endswith("(--no-torchattacks)") else "")
        + "`.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    keep_freed_memory()  # this process is the benchmark's: see robust_student.cpu_allocator
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--no-torchattacks", action="store_true", help="leave torchattacks' PGD out")
    parser.add_argument("--check-starts", type=int, default=3, help="random starts of the robust-accuracy check")
    parser.add_argument("--note", default="", help="a remark stored with the result (e.g. why --threads was set)")
    parser.add_argument("--from-json", help="only re-render the markdown of an existing result file")
    parser.add_argument("--output-dir", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.from_json:
        result = json.loads(Path(args.from_json).read_text(encoding="utf-8"))
    else:
        result = run(args.device, args.batch_size, args.image_size, args.steps, args.repeats, threads=args.threads,
                     torchattacks=not args.no_torchattacks, check_starts=args.check_starts)
    if args.note:
        result["note"] = args.note
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"attack_speed_{'gpu' if result['device'] == 'cuda' else 'cpu'}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    stem.with_suffix(".md").write_text(to_markdown(result), encoding="utf-8")
    print(to_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
