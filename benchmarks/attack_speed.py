"""PGD-20 throughput: ``robust_student.attacks.pgd`` against a minimal hand-written PGD loop, same model, one run.

The library's PGD carries a threat object, per-sample objectives and input-only gradients; this benchmark checks
that none of that costs speed. Both loops attack the same ``resnet_tiny`` student (eval mode) on the same batch,
with the same number of steps; repetitions are interleaved (alternating which loop goes first) and the median
images/s of each is reported with their ratio (target: ours / reference >= 0.95).

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


def _time(fn: Callable[[], Tensor], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


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


def run(device: str = "cpu", batch_size: int = 128, image_size: int = 28, steps: int = 20, repeats: int = 7,
        width: int = 16, seed: int = 0, threads: int | None = None) -> dict[str, object]:
    """Measure both loops and return the result dict (images/s per repetition, medians, ratio)."""
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    machine = machine_description(dev)
    torch.manual_seed(seed)
    model = create_student("resnet_tiny", embed_dim=64, num_classes=10, image_size=image_size, width=width)
    model.set_classifier(F.normalize(torch.randn(64, 10), dim=0), logit_scale=20.0)
    model = model.to(dev).eval()
    x = torch.rand(batch_size, 3, image_size, image_size, device=dev)
    y = torch.randint(0, 10, (batch_size,), device=dev)
    eps, step = 8 / 255, 2 / 255
    loops = {"ours": lambda: ours_pgd(model, x, y, eps, step, steps),
             "reference": lambda: reference_pgd(model, x, y, eps, step, steps)}
    for fn in loops.values():  # warm-up (allocator, kernels)
        _time(fn, dev)
    seconds: dict[str, list[float]] = {name: [] for name in loops}
    for rep in range(repeats):
        order = list(loops) if rep % 2 == 0 else list(reversed(loops))
        for name in order:
            seconds[name].append(_time(loops[name], dev))
    throughput = {name: [batch_size / s for s in values] for name, values in seconds.items()}
    median = {name: statistics.median(values) for name, values in throughput.items()}
    paired = [ours / ref for ours, ref in zip(throughput["ours"], throughput["reference"])]
    return {
        "benchmark": "PGD-20 images/s, robust_student pgd vs minimal hand-written loop",
        "device": dev.type, "model": f"resnet_tiny(width={width})", "batch_size": batch_size,
        "image_size": image_size, "steps": steps, "eps": "8/255", "step_size": "2/255", "repeats": repeats,
        "images_per_s": {name: [round(v, 2) for v in values] for name, values in throughput.items()},
        "median_images_per_s": {name: round(v, 2) for name, v in median.items()},
        "ratio_ours_over_reference": round(median["ours"] / median["reference"], 4),
        "median_paired_ratio": round(statistics.median(paired), 4),
        "target_ratio": 0.95,
        "machine": machine,
    }


def to_markdown(result: dict) -> str:
    med = result["median_images_per_s"]
    machine = result["machine"]
    hardware = machine.get("gpu") or (f"{machine['cpu']}, {machine['logical_cpus']} logical CPUs, "
                                      f"torch threads: {machine['torch_threads']}")
    lines = [
        f"# PGD-20 speed on {result['device'].upper()}",
        "",
        f"{result['model']}, batch {result['batch_size']} of {result['image_size']} px images, "
        f"{result['steps']} steps, eps {result['eps']}, step {result['step_size']}; "
        f"{result['repeats']} interleaved repetitions, median.",
        "",
        "| loop | median images/s |",
        "|---|---|",
        f"| robust_student `pgd` | {med['ours']:.1f} |",
        f"| minimal hand-written loop | {med['reference']:.1f} |",
        "",
        f"Ratio ours / reference: **{result['ratio_ours_over_reference']:.3f}** (target >= {result['target_ratio']}); "
        f"median of the per-repetition ratios: {result['median_paired_ratio']:.3f}.",
        "",
        f"Machine: {hardware}; {machine['platform']}; Python {machine['python']}; torch {machine['torch']}; "
        f"robust_student {machine['robust_student']}; 1-min load average at start "
        f"{machine.get('load_average_1min_at_start', 'n/a')} (a shared machine: absolute numbers are noisy, "
        "the interleaved ratio much less so).",
        "",
        *([f"Note: {result['note']}", ""] if result.get("note") else []),
        "Reproduce: `python benchmarks/attack_speed.py"
        + (" --device cuda" if result["device"] == "cuda" else "")
        + f" --threads {machine['torch_threads']} --repeats {result['repeats']}`.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--note", default="", help="a remark stored with the result (e.g. why --threads was set)")
    parser.add_argument("--from-json", help="only re-render the markdown of an existing result file")
    parser.add_argument("--output-dir", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.from_json:
        result = json.loads(Path(args.from_json).read_text(encoding="utf-8"))
    else:
        result = run(args.device, args.batch_size, args.image_size, args.steps, args.repeats, threads=args.threads)
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
