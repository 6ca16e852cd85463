"""ONNX speed: onnxruntime FP32 and INT8 against torch eager, latency at batch 1 and throughput at batch 32.

Two students: ResNet-18 (timm, ImageNet stem) at 224 px and the CPU student (``resnet_tiny``, width 16) at 28 px,
random weights (speed does not depend on the values; INT8 is calibrated on 64 random images for ResNet-18 and on
Fashion-MNIST training images for the CPU student). Each is exported with ``export_onnx`` and run through
``OnnxStudent`` (the deployed runner, verified, input checks included in ``logits``). Repetitions interleave the
three runtimes; medians and their ratios come from one run on one machine.

Targets (the ONNX issue): FP32 >= 1.5x torch eager at batch 1; INT8 >= 2x FP32 throughput for ResNet-18. Whether
INT8 keeps robust accuracy within 2 points is measured by the validation (``make quickstart`` prints the CPU
student's INT8 deltas), not here.

    python benchmarks/onnx_speed.py --threads 1      # CPU -> benchmarks/results/onnx_speed_cpu.{json,md}
    python benchmarks/onnx_speed.py --cuda           # adds onnxruntime's CUDA execution provider (GPU machines)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attack_speed import machine_description  # noqa: E402  (the one machine description of the benchmarks)

from robust_student.cpu_allocator import keep_freed_memory  # noqa: E402
from robust_student import create_student  # noqa: E402
from robust_student.export import OnnxStudent, export_onnx  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = {"resnet18_224": ("resnet18", 224, {}), "cpu_student_28": ("resnet_tiny", 28, {"width": 16})}


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _calibration(name: str, size: int) -> object:
    if name == "resnet_tiny":
        from robust_student import build_dataset
        from robust_student.config import DataConfig

        try:
            return build_dataset(DataConfig(name="fashion-mnist", image_size=size), "train")
        except (OSError, ValueError):
            pass
    return torch.rand(64, 3, size, size, generator=torch.Generator().manual_seed(0))


def bench_model(key: str, *, threads: int, latency_runs: int, throughput_repeats: int, cuda: bool,
                workdir: Path, activations: str = "uint8") -> dict[str, object]:
    name, size, kwargs = MODELS[key]
    torch.manual_seed(0)
    student = create_student(name, embed_dim=512, num_classes=10, image_size=size, **kwargs).eval()
    fp32_path, int8_path = workdir / f"{key}.onnx", workdir / f"{key}.int8.onnx"
    export_onnx(student, fp32_path)
    export_onnx(student, int8_path, quantize="int8", calibration=_calibration(name, size), calibration_images=64,
                quantize_options={"activations": activations})
    runners: dict[str, Callable[[np.ndarray], object]] = {}

    def torch_eager(x: np.ndarray) -> object:
        with torch.inference_mode():
            return student(torch.from_numpy(x))

    runners["torch eager"] = torch_eager
    runners["onnxruntime fp32"] = OnnxStudent(fp32_path, threads=threads).logits
    runners["onnxruntime int8"] = OnnxStudent(int8_path, threads=threads).logits
    if cuda:
        runners["onnxruntime fp32 cuda"] = OnnxStudent(fp32_path, providers=["CUDAExecutionProvider"]).logits
    rng = np.random.default_rng(0)
    batches = {1: rng.random((1, 3, size, size), dtype=np.float32), 32: rng.random((32, 3, size, size),
                                                                                   dtype=np.float32)}
    for fn in runners.values():  # warm-up (allocators, onnxruntime's first-run optimisations)
        for x in batches.values():
            fn(x)
    latency = {k: [] for k in runners}
    throughput = {k: [] for k in runners}
    order = list(runners)
    for repeat in range(throughput_repeats):  # interleaved: each repetition runs every runtime, order rotated
        for runtime in order[repeat % len(order):] + order[:repeat % len(order)]:
            fn = runners[runtime]
            latency[runtime].append(_median_seconds(lambda: fn(batches[1]), latency_runs))
            throughput[runtime].append(32 / _median_seconds(lambda: fn(batches[32]), 1))
    latency_ms = {k: 1000 * statistics.median(v) for k, v in latency.items()}
    images_s = {k: statistics.median(v) for k, v in throughput.items()}
    return {
        "model": name, "image_size": size, "args": kwargs,
        "parameters": sum(p.numel() for p in student.parameters()),
        "latency_batch1_ms": latency_ms, "throughput_batch32_images_s": images_s,
        "ratios": {
            "fp32_vs_torch_latency_speedup": latency_ms["torch eager"] / latency_ms["onnxruntime fp32"],
            "int8_vs_torch_latency_speedup": latency_ms["torch eager"] / latency_ms["onnxruntime int8"],
            "fp32_vs_torch_throughput": images_s["onnxruntime fp32"] / images_s["torch eager"],
            "int8_vs_fp32_throughput": images_s["onnxruntime int8"] / images_s["onnxruntime fp32"],
        },
    }


def to_markdown(result: dict[str, object]) -> str:
    m = result["machine"]
    lines = ["# ONNX speed on CPU", "",
             f"Random-weight students, {result['settings']['threads']} thread(s) for torch and onnxruntime; batch-1 "
             f"latency = median of {result['settings']['latency_runs']} calls, repeated "
             f"{result['settings']['repeats']} times interleaved with the other runtimes (median of medians); batch-32 "
             "throughput = median over the same repetitions. Runtimes run through the deployed runner "
             "(`OnnxStudent.logits`) and `torch.inference_mode()`. INT8: QDQ, "
             f"{result['settings']['int8_activations']} activations, int8 per-channel weights.", ""]
    for key, r in result["models"].items():
        lines += [f"## {r['model']} at {r['image_size']} px ({r['parameters'] / 1e6:.2f} M parameters)", "",
                  "| runtime | latency batch 1 (ms) | throughput batch 32 (images/s) |", "|---|---|---|"]
        for runtime, ms in r["latency_batch1_ms"].items():
            lines.append(f"| {runtime} | {ms:.2f} | {r['throughput_batch32_images_s'][runtime]:.1f} |")
        q = r["ratios"]
        lines += ["", f"- ONNX FP32 vs torch eager, batch-1 latency: **{q['fp32_vs_torch_latency_speedup']:.2f}x** "
                      f"(target >= 1.5x: {'met' if q['fp32_vs_torch_latency_speedup'] >= 1.5 else 'NOT met'})",
                  f"- ONNX INT8 vs FP32, batch-32 throughput: **{q['int8_vs_fp32_throughput']:.2f}x** " +
                  (f"(target >= 2x: {'met' if q['int8_vs_fp32_throughput'] >= 2 else 'NOT met'})"
                   if r["model"] == "resnet18" else "(the 2x target is ResNet-18's)"),
                  f"- ONNX FP32 vs torch eager, batch-32 throughput: {q['fp32_vs_torch_throughput']:.2f}x; INT8 vs torch "
                  f"eager, batch-1 latency: {q['int8_vs_torch_latency_speedup']:.2f}x", ""]
    lines += [f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs; {m['platform']}; Python {m['python']}; torch "
              f"{m['torch']}; onnxruntime {result['onnxruntime']}; robust_student {m['robust_student']}; 1-min load "
              f"average at start {m.get('load_average_1min_at_start')} (a shared machine: absolute numbers are "
              "noisy, the interleaved ratios less so). Allocator: "
              + {"kept": "`keep_freed_memory()` (robust_student.cpu_allocator; torch eager gains from it, "
                         "onnxruntime has its own arena)"}.get(result.get("allocator"), "glibc's defaults") + ".", "",
              f"Reproduce: `python benchmarks/onnx_speed.py {result['settings'].get('arguments', '')}`.", ""]
    return "\n".join(lines)


def render(json_path: Path) -> None:
    """Rewrite the markdown next to a results JSON (after changing :func:`to_markdown`; no re-measurement)."""
    result = json.loads(json_path.read_text(encoding="utf-8"))
    json_path.with_suffix(".md").write_text(to_markdown(result), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    kept_freed_memory = keep_freed_memory()  # this process is the benchmark's: see robust_student.cpu_allocator
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime intra-op threads (default 1)")
    parser.add_argument("--latency-runs", type=int, default=20, help="batch-1 calls per repetition")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repetitions")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--cuda", action="store_true", help="also time onnxruntime's CUDA execution provider")
    parser.add_argument("--activations", default="uint8", choices=["uint8", "int8"],
                        help="INT8 activation type (default uint8: onnxruntime's fast x86 path)")
    parser.add_argument("--output", default=str(RESULTS / "onnx_speed_cpu"), help="path stem for .json and .md")
    args = parser.parse_args(argv)
    import onnxruntime

    torch.set_num_threads(args.threads)
    result: dict[str, object] = {"machine": machine_description(torch.device("cpu")),
                                 "allocator": "kept" if kept_freed_memory else "glibc defaults", "onnxruntime":
                                 onnxruntime.__version__, "settings": {"threads": args.threads,
                                                                       "latency_runs": args.latency_runs,
                                                                       "repeats": args.repeats,
                                                                       "int8_activations": args.activations,
                                                                       "arguments": " ".join(sys.argv[1:] if argv is None
                                                                                             else argv)}, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.models:
            print(f"benchmarking {key} ...", flush=True)
            result["models"][key] = bench_model(key, threads=args.threads, latency_runs=args.latency_runs,
                                                throughput_repeats=args.repeats, cuda=args.cuda, workdir=Path(tmp),
                                                activations=args.activations)
    stem = Path(args.output)
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    stem.with_suffix(".md").write_text(to_markdown(result), encoding="utf-8")
    print(to_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
