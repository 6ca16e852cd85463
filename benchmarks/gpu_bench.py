"""GPU checks (any method in bf16, ResNet-18 RSLAD step throughput, ONNX on CUDA): gpu.sh's Python half.

For a lent GPU machine (one NVIDIA H200); ``benchmarks/gpu.sh`` runs each part under its own time limit.

Parts (each writes ``<work>/<part>.json``; ``summary`` merges them into ``<out>/gpu.json`` and ``<out>/gpu.md``):

* ``env``: the machine (GPU, driver via nvidia-smi, torch / CUDA / cuDNN / accelerate / onnxruntime versions and
  providers) and one large bf16 matrix product's TFLOP/s (the reachable peak next to the spec-sheet one).
* ``methods``: every registered method (``list_methods()``, so a new method is covered when it registers) for a
  few steps through ``RobustDistiller(...).fit()`` on the built-in teacher (``fmnist-clip``; the multi-teacher
  methods take the built-in zoo), ``train.mixed_precision="bf16"``, synthetic 28 px data. Checked per method:
  it trained (steps > 0), every logged loss is finite, the student ended on the GPU, and the trainable layers'
  outputs were bf16 (a global forward hook on Conv2d / Linear layers with trainable weights).
* ``throughput``: ResNet-18 (timm, ImageNet stem) at 224 px, one RSLAD training step = the library's
  ``rslad`` loss (10-step PGD at 8/255 inside) + backward + SGD step under bf16 autocast, on a fixed batch that
  already sits on the GPU (no data loading); variants eager / channels_last / torch.compile / both. Images/s
  from the median step time; FLOPs per step estimated as the student's forward FLOPs x passes (see
  ``FLOP_METHOD``) and cross-checked by counting one whole step with ``torch.utils.flop_counter``; the fraction
  of the H200's bf16 dense peak (989 TFLOP/s, spec sheet) and of the measured matrix-product rate.
* ``onnx``: ResNet-18 exported with ``robust_student.export.export_onnx`` (random weights, as
  ``benchmarks/onnx_speed.py``), run by ``OnnxStudent(path, providers=["CUDAExecutionProvider", ...])``: the
  provider that really runs, max |logit difference| and top-1 agreement against torch FP32 on the GPU (TF32
  off), and batch-1 latency / batch-N throughput of torch FP32, torch bf16 autocast and onnxruntime, each
  numpy in / numpy out (host-device copies included for all).

    bash benchmarks/gpu.sh                          # on the GPU machine: every part, under 8 minutes
    python benchmarks/gpu_bench.py --cpu-smoke      # here: the same code on CPU, tiny sizes, fp32, 1 thread

``--cpu-smoke`` runs every part in one process on the CPU with the same functions and tiny sizes (``resnet_tiny``
at 32 px instead of ResNet-18 at 224 px, 1-step PGD, fp32, one thread; torch.compile with the ``eager`` backend,
so Dynamo traces but Inductor does not compile) and writes to ``--out`` (default: a temporary folder); its
numbers say nothing about speed, only that the code path works (about 45 s on a shared 2-core machine).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attack_speed import machine_description  # noqa: E402  (the one machine description of the benchmarks)

from robust_student.cpu_allocator import keep_freed_memory  # noqa: E402
import robust_student  # noqa: E402
from robust_student import DataConfig, RobustDistiller, build_dataset, create_method, create_student  # noqa: E402
from robust_student import create_teacher, list_methods  # noqa: E402
from robust_student.config import DistillConfig  # noqa: E402
from robust_student.methods import METHODS, TrainState  # noqa: E402

H200_BF16_DENSE_TFLOPS = 989.0  # NVIDIA's H200 SXM spec sheet, bf16 tensor core, dense (1979 is with sparsity)
PARTS = ("env", "methods", "throughput", "onnx")
VARIANTS = ("eager", "channels_last", "compile", "compile+channels_last")
FLOP_METHOD = (
    "estimate = batch x ((2K + 6) x F + T): F = the student's forward FLOPs per image and T = the teacher's "
    "(torch.utils.flop_counter on one eval-mode forward; convolutions and matrix products only, 2 FLOPs per "
    "multiply-add); an RSLAD step is K PGD iterations of forward + input-gradient backward (about 1 forward "
    "each: weight gradients are not taken), forwards of the student on x' and x (2) and their backward with "
    "weight and input gradients (about 2 forwards each: 4), plus the teacher's clean forward. 'counted' runs "
    "one whole eager step under torch.utils.flop_counter's counter (backward and PGD included) as a cross-check."
)

# Teachers and students of the methods that need more than the one built-in teacher (roles of the built-in zoo,
# as benchmarks/methods_fmnist.py uses them); every other method: fmnist-clip in each role, resnet_tiny.
METHOD_SETUPS: dict[str, dict[str, Any]] = {
    "mmt-ard": {"teacher": {"adv": "fmnist-clip-fare", "clean": "fmnist-clip"}},
    "ciard": {"teacher": {"adv": "fmnist-clip-fare", "nat": "fmnist-clip"}},
    "hpt-gpd": {"teacher": {"target": "fmnist-clip", "proxy": "fmnist-clip-cnn"}, "student": "clip"},
    "fare": {"student": "clip"},   # FARE / TeCoA tune the teacher's own image tower
    "tecoa": {"student": "clip"},
}


def method_args_for(name: str, s: "Sizes") -> dict[str, Any]:
    """Method arguments that the short runs need: DGHFA's HPFA uses at most as many PGD iterates as there are."""
    return {"num_intermediate": min(6, s.method_attack_steps)} if name == "dghfa" else {}


@dataclass
class Sizes:
    """Everything that differs between the GPU run and the CPU smoke run."""

    device: str = "cuda"
    precision: str = "bf16"          # train.mixed_precision of the methods part; autocast dtype elsewhere
    threads: int | None = None       # torch / onnxruntime threads (None: their defaults)
    method_image: int = 28
    method_batch: int = 32
    method_examples: int = 64        # training images: method_examples / method_batch steps
    method_attack_steps: int = 3
    method_eval: int = 32
    val_attack: str = "pgd:5"
    tp_model: str = "resnet18"
    tp_image: int = 224
    tp_batch: int = 256
    tp_pgd_steps: int = 10           # RSLAD's paper setting: 10 steps of 2/255 in 8/255
    tp_warmup: int = 3
    tp_steps: int = 10
    compile_backend: str = "inductor"
    onnx_model: str = "resnet18"
    onnx_image: int = 224
    onnx_parity_batch: int = 32
    onnx_latency_runs: int = 50
    onnx_tp_batch: int = 64
    onnx_tp_runs: int = 10
    matmul_n: int = 8192


GPU = Sizes()
SMOKE = Sizes(device="cpu", precision="no", threads=1, tp_model="resnet_tiny", onnx_model="resnet_tiny",
              method_batch=8, method_examples=16, method_attack_steps=1, method_eval=8, val_attack="pgd:1",
              tp_image=32, tp_batch=2, tp_pgd_steps=1, tp_warmup=1, tp_steps=2,
              compile_backend="eager", onnx_image=32, onnx_parity_batch=4, onnx_latency_runs=5, onnx_tp_batch=8,
              onnx_tp_runs=2, matmul_n=256)


# -- helpers -------------------------------------------------------------------------------------------------

def write_json(path: Path, data: Any) -> None:
    """Atomic write (a part killed by gpu.sh's timeout leaves the previous complete file, never half a file)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(s: Sizes, device: torch.device) -> Any:
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=s.precision == "bf16")


def error_text(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())[:600]}"


def flop_counter() -> Any:
    """``torch.utils.flop_counter.FlopCounterMode`` without its module tracker: the tracker's backward hooks refuse
    ``torch.autograd.grad`` (PGD's input gradient), and only the total is needed here."""
    from torch.utils.flop_counter import FlopCounterMode, _FlopCounterMode

    class TotalFlops(FlopCounterMode):
        def __enter__(self) -> "TotalFlops":
            self.flop_counts.clear()
            self.mode = _FlopCounterMode(self)
            self.mode.__enter__()
            return self

        def __exit__(self, *args: Any) -> Any:
            out = self.mode.__exit__(*args)
            self.mode = None
            return out

    return TotalFlops(display=False)


def forward_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad(), flop_counter() as counter:
        model(x)
    return int(counter.get_total_flops())


# -- env -----------------------------------------------------------------------------------------------------

def part_env(s: Sizes, work: Path) -> dict[str, Any]:
    device = torch.device(s.device)
    info: dict[str, Any] = {"machine": machine_description(device), "python": sys.executable,
                            "robust_student_from": str(Path(robust_student.__file__).parent)}
    info["torch_cuda"] = torch.version.cuda
    info["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                       "multiprocessors": props.multi_processor_count, "capability": f"{props.major}.{props.minor}"}
    try:
        import accelerate
        info["accelerate"] = accelerate.__version__
    except ImportError as err:
        info["accelerate"] = error_text(err)
    try:
        import onnxruntime as ort
        info["onnxruntime"] = {"version": ort.__version__, "package": _ort_package(),
                               "available_providers": ort.get_available_providers()}
    except ImportError as err:
        info["onnxruntime"] = error_text(err)
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit",
                 "--format=csv,noheader"]
        try:
            info["nvidia_smi"] = subprocess.run(query, capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError) as err:
            info["nvidia_smi"] = error_text(err)
    info["matmul"] = matmul_rate(s, device)
    return info


def _ort_package() -> str | None:
    try:
        from onnxruntime.capi import build_and_package_info as b
        return f"{b.package_name} (CUDA {getattr(b, 'cuda_version', 'n/a')})"
    except ImportError:
        return None


def matmul_rate(s: Sizes, device: torch.device) -> dict[str, Any]:
    """TFLOP/s of one n x n x n matrix product (bf16 on the GPU, fp32 on the CPU), mean of 10 after 3 warm-ups."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n = s.matmul_n
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    sync(device)
    seconds = (time.perf_counter() - start) / 10
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "seconds": seconds,
            "tflops": 2 * n ** 3 / seconds / 1e12}


# -- methods -------------------------------------------------------------------------------------------------

def zoo_teacher_missing(name: str) -> bool:
    """A registered zoo teacher whose weights folder is not in this checkout."""
    from robust_student.teachers.builtin import WEIGHTS_DIR, ZOO

    return name in ZOO and not (WEIGHTS_DIR / name / "model.safetensors").is_file()


def method_setup(name: str) -> dict[str, Any]:
    setup = dict(METHOD_SETUPS.get(name, {}))
    roles = METHODS.get(name).teacher_roles
    if "teacher" not in setup:
        setup["teacher"] = {role: "fmnist-clip" for role in roles} if len(roles) > 1 else "fmnist-clip"
    if isinstance(setup["teacher"], dict):
        teachers = dict(setup["teacher"])
        for role, teacher in teachers.items():
            if zoo_teacher_missing(teacher):
                teachers[role] = "fmnist-clip"
                setup.setdefault("notes", []).append(f"{role}: {teacher} weights are not in this checkout, "
                                                     "fmnist-clip instead")
        setup["teacher"] = teachers
    setup.setdefault("student", "resnet_tiny")
    return setup


def run_method(name: str, s: Sizes, workdir: Path) -> dict[str, Any]:
    setup = method_setup(name)
    row: dict[str, Any] = {"method": name, "teacher": setup["teacher"], "student": setup["student"],
                           "method_args": method_args_for(name, s), "notes": setup.get("notes", [])}
    seen: set[tuple[str, str]] = set()

    def hook(module: torch.nn.Module, _inputs: Any, output: Any) -> None:
        weight = getattr(module, "weight", None)
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) and isinstance(output, torch.Tensor) and \
                weight is not None and weight.requires_grad:
            seen.add((str(output.dtype).replace("torch.", ""), output.device.type))

    out_dir = workdir / name
    started = time.perf_counter()
    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        distiller = RobustDistiller(
            teacher=setup["teacher"], method=name, student=setup["student"], method_args=row["method_args"],
            dataset=DataConfig(name="synthetic:10", image_size=s.method_image, max_train_examples=s.method_examples),
            epochs=1, batch_size=s.method_batch, mixed_precision=s.precision, eval_examples=s.method_eval,
            val_attack=s.val_attack, checkpoint_every=0, log_every=1, output_dir=str(out_dir), overwrite=True,
            optimizer="adamw", lr=1e-3,
            **{"threat.eps": 8 / 255, "attack.steps": s.method_attack_steps, "attack.step_size": 2 / 255})
        student = distiller.fit()
    except Exception as err:  # noqa: BLE001 - one method's failure is a result, the others still run
        row.update(status="error", error=error_text(err), traceback=traceback.format_exc()[-2000:],
                   seconds=time.perf_counter() - started)
        return row
    finally:
        handle.remove()
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    losses = [r["loss"] for r in records if r.get("kind") == "train" and "loss" in r]
    device = next(student.parameters()).device.type
    dtypes = sorted({d for d, _ in seen})
    row.update(seconds=time.perf_counter() - started, steps=distiller.result.steps, losses=losses,
               finite=bool(losses) and all(math.isfinite(v) for v in losses), student_device=device,
               trainable_layer_output_dtypes=dtypes, mixed_precision=distiller.config.train.mixed_precision,
               validation={k: v for k, v in (distiller.history[-1] if distiller.history else {}).items()
                           if k.startswith("val_")})
    problems = []
    if not row["steps"]:
        problems.append("no optimiser step")
    if not row["finite"]:
        problems.append("a logged loss is not finite (or none was logged)")
    if device != s.device:
        problems.append(f"student on {device}, not {s.device}")
    if s.precision == "bf16" and "bfloat16" not in dtypes:
        problems.append(f"no bf16 layer output (saw {dtypes})")
    row["status"] = "ok" if not problems else "failed: " + "; ".join(problems)
    return row


def part_methods(s: Sizes, work: Path) -> dict[str, Any]:
    result: dict[str, Any] = {"settings": {k: v for k, v in asdict(s).items() if k.startswith("method")
                                           or k in ("device", "precision", "val_attack")},
                              "dataset": "synthetic:10", "methods": {}}
    path = work / "methods.json"
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        for name in list_methods():
            print(f"  method {name} ...", flush=True)
            row = run_method(name, s, Path(tmp))
            print(f"    {row['status']} ({row.get('steps', 0)} steps, {row['seconds']:.1f} s)", flush=True)
            result["methods"][name] = row
            write_json(path, result)  # after each method: a timeout keeps the finished ones
    return result


# -- throughput ----------------------------------------------------------------------------------------------

def rslad_bench_setup(s: Sizes, device: torch.device) -> tuple[Any, Any, dict[str, Any], torch.Tensor]:
    prompts = build_dataset("synthetic:10", "val").prompts
    teacher = create_teacher("fmnist-clip")
    teacher.set_classes(prompts.classnames, prompts.templates)
    teacher = teacher.to(device)
    torch.manual_seed(0)
    student = create_student(s.tp_model, teacher, image_size=s.tp_image).to(device)
    cfg = DistillConfig(method="rslad").with_overrides(
        {"threat.eps": 8 / 255, "attack.steps": s.tp_pgd_steps, "attack.step_size": 2 / 255})
    method = create_method("rslad", threat=cfg.threat, attack=cfg.attack, num_classes=teacher.num_classes,
                           embed_dim=student.embed_dim)
    teachers = {"teacher": teacher}
    method.setup(student, teachers)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(s.tp_batch, 3, s.tp_image, s.tp_image, generator=gen).to(device)
    return student, method, teachers, x


def flops_of(s: Sizes, device: torch.device, student: Any, method: Any, teachers: dict[str, Any],
             x: torch.Tensor) -> dict[str, Any]:
    probe = x[:2]
    student.eval()
    f_student = forward_flops(student, probe) / probe.shape[0]
    f_teacher = forward_flops(teachers["teacher"], probe) / probe.shape[0]
    k = s.tp_pgd_steps
    estimate = s.tp_batch * ((2 * k + 6) * f_student + f_teacher)
    model = copy.deepcopy(student).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    batch = {"image": x, "label": torch.zeros(x.shape[0], dtype=torch.long, device=device)}
    with flop_counter() as counter:
        train_step(s, device, model, method, teachers, batch, opt)
    counted = int(counter.get_total_flops())
    return {"student_forward_gflops_per_image": f_student / 1e9, "teacher_forward_gflops_per_image": f_teacher / 1e9,
            "pgd_steps": k, "batch": s.tp_batch, "estimate_tflop_per_step": estimate / 1e12,
            "counted_tflop_per_step": counted / 1e12, "counted_over_estimate": counted / estimate,
            "method": FLOP_METHOD}


def train_step(s: Sizes, device: torch.device, model: Any, method: Any, teachers: dict[str, Any],
               batch: dict[str, torch.Tensor], opt: torch.optim.Optimizer) -> None:
    with autocast(s, device):
        out = method.loss(batch, model, teachers, TrainState(step=0, total_steps=1))
    out["loss"].backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def bench_variant(s: Sizes, device: torch.device, variant: str, student: Any, method: Any,
                  teachers: dict[str, Any], x: torch.Tensor) -> dict[str, Any]:
    channels_last = "channels_last" in variant
    model = copy.deepcopy(student).train()
    xb = x.clone()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        xb = xb.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    if variant.startswith("compile"):
        torch._dynamo.reset()
        model = torch.compile(model, backend=s.compile_backend)
    batch = {"image": xb, "label": torch.zeros(xb.shape[0], dtype=torch.long, device=device)}
    sync(device)
    started = time.perf_counter()
    for _ in range(s.tp_warmup):  # includes torch.compile's compilation (eval and train graphs)
        train_step(s, device, model, method, teachers, batch, opt)
    sync(device)
    warmup = time.perf_counter() - started
    times = []
    for _ in range(s.tp_steps):
        t0 = time.perf_counter()
        train_step(s, device, model, method, teachers, batch, opt)
        sync(device)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    row = {"variant": variant, "channels_last": channels_last, "compiled": variant.startswith("compile"),
           "compile_backend": s.compile_backend if variant.startswith("compile") else None,
           "warmup_steps": s.tp_warmup, "warmup_seconds": warmup, "timed_steps": s.tp_steps, "step_seconds": times,
           "median_step_seconds": median, "images_per_s": s.tp_batch / median}
    if device.type == "cuda":
        row["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
    return row


def part_throughput(s: Sizes, work: Path, variants: list[str], peak_tflops: float,
                    append: bool = False) -> dict[str, Any]:
    """The variants' rows; with ``append`` they join those already in ``throughput.json`` (gpu.sh runs the
    compiled variants in a second process, under their own time limit)."""
    device = torch.device(s.device)
    path = work / "throughput.json"
    result = (read_json(path) if append else None) or {
        "model": s.tp_model, "image_size": s.tp_image, "batch": s.tp_batch,
        "precision": "bf16 autocast" if s.precision == "bf16" else "fp32",
        "pgd": f"{s.tp_pgd_steps} steps of 2/255, L-inf 8/255 (RSLAD's training attack)",
        "step": "robust_student rslad loss (teacher fmnist-clip, built in, 28 px: inputs resized inside it) + "
                "backward + SGD (momentum 0.9) step, fixed batch on the device, no data loading",
        "cudnn_benchmark": device.type == "cuda", "variants": {}}
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    student, method, teachers, x = rslad_bench_setup(s, device)
    if "flops" not in result:
        try:
            result["flops"] = flops_of(s, device, student, method, teachers, x)
        except Exception as err:  # noqa: BLE001
            result["flops"] = {"error": error_text(err), "method": FLOP_METHOD}
        write_json(path, result)
    env = read_json(work / "env.json") or {}
    measured_peak = (env.get("matmul") or {}).get("tflops") if device.type == "cuda" else None
    for variant in variants:
        print(f"  throughput {variant} ...", flush=True)
        try:
            row = bench_variant(s, device, variant, student, method, teachers, x)
        except Exception as err:  # noqa: BLE001 - e.g. a compiler missing: the other variants still count
            row = {"variant": variant, "error": error_text(err), "traceback": traceback.format_exc()[-2000:]}
            print(f"    error: {row['error']}", flush=True)
        else:
            estimate = (result["flops"] or {}).get("estimate_tflop_per_step")
            if estimate:
                row["achieved_tflops_estimate"] = estimate / row["median_step_seconds"]
                if device.type == "cuda":
                    row["fraction_of_bf16_dense_peak"] = row["achieved_tflops_estimate"] / peak_tflops
                    if measured_peak:
                        row["fraction_of_measured_matmul"] = row["achieved_tflops_estimate"] / measured_peak
            print(f"    {row['images_per_s']:.1f} images/s (median step {row['median_step_seconds'] * 1000:.1f} ms, "
                  f"warm-up {row['warmup_seconds']:.1f} s)", flush=True)
        result["variants"][variant] = row
        result["peak_tflops"] = peak_tflops if device.type == "cuda" else None
        write_json(path, result)
    return result


# -- onnx ----------------------------------------------------------------------------------------------------

def part_onnx(s: Sizes, work: Path) -> dict[str, Any]:
    import onnxruntime as ort

    from robust_student.export import OnnxStudent, export_onnx

    device = torch.device(s.device)
    result: dict[str, Any] = {"model": s.onnx_model, "image_size": s.onnx_image, "onnxruntime": ort.__version__,
                              "onnxruntime_package": _ort_package(),
                              "available_providers": ort.get_available_providers()}
    torch.manual_seed(0)
    student = create_student(s.onnx_model, embed_dim=512, num_classes=10, image_size=s.onnx_image)
    # random text embeddings as the classifier (without one every logit is 0 and parity would be vacuous)
    student.set_classifier(torch.nn.functional.normalize(torch.randn(512, 10), dim=0), logit_scale=20.0)
    student = student.eval()
    path = work / f"{s.onnx_model}_{s.onnx_image}.onnx"
    started = time.perf_counter()
    export_onnx(student, path, overwrite=True)
    result["export_seconds"] = time.perf_counter() - started
    if device.type == "cuda" and hasattr(ort, "preload_dlls"):
        try:  # CUDA / cuDNN from the nvidia pip packages torch uses (a no-op when torch already loaded them)
            ort.preload_dlls()
        except Exception as err:  # noqa: BLE001
            result["preload_dlls"] = error_text(err)
    requested = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.type == "cuda" else \
        ["CPUExecutionProvider"]
    runner = OnnxStudent(path, providers=requested, threads=s.threads)
    result["requested_providers"] = requested
    result["provider"] = runner.provider
    try:
        result["provider_options"] = runner.session.get_provider_options().get(runner.provider)
    except Exception:  # noqa: BLE001
        pass
    rng = np.random.default_rng(0)
    x = rng.random((s.onnx_parity_batch, 3, s.onnx_image, s.onnx_image), dtype=np.float32)

    # parity: torch FP32 on the device with TF32 off is the reference; torch on the CPU for scale
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    with torch.inference_mode():
        cpu_logits = student(torch.from_numpy(x)).numpy()
        model = copy.deepcopy(student).to(device)
        ref = model(torch.from_numpy(x).to(device)).float().cpu().numpy()
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    got = runner.logits(x)
    result["parity"] = {
        "examples": int(x.shape[0]), "reference": f"torch fp32 on {device.type} (TF32 off), same random weights",
        "max_abs_logit_diff": float(np.abs(got - ref).max()),
        "max_abs_logit": float(np.abs(ref).max()),
        "top1_agreement": float((got.argmax(1) == ref.argmax(1)).mean()),
        "torch_device_vs_torch_cpu_max_abs_diff": float(np.abs(ref - cpu_logits).max()),
    }

    def torch_runner(bf16: bool) -> Callable[[np.ndarray], np.ndarray]:
        def run(batch: np.ndarray) -> np.ndarray:
            with torch.inference_mode(), torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                                                        enabled=bf16):
                return model(torch.from_numpy(batch).to(device)).float().cpu().numpy()
        return run

    runners: dict[str, Callable[[np.ndarray], np.ndarray]] = {"torch fp32": torch_runner(False)}
    if device.type == "cuda":
        runners["torch bf16 autocast"] = torch_runner(True)
    runners[f"onnxruntime fp32 ({runner.provider})"] = runner.logits
    one = rng.random((1, 3, s.onnx_image, s.onnx_image), dtype=np.float32)
    many = rng.random((s.onnx_tp_batch, 3, s.onnx_image, s.onnx_image), dtype=np.float32)
    speed: dict[str, Any] = {}
    for label, fn in runners.items():
        for batch in (one, many):  # warm-up: allocators, cuDNN / onnxruntime first-run choices
            fn(batch)
            fn(batch)
        latency = []
        for _ in range(s.onnx_latency_runs):
            t0 = time.perf_counter()
            fn(one)
            latency.append(time.perf_counter() - t0)
        tp = []
        for _ in range(s.onnx_tp_runs):
            t0 = time.perf_counter()
            fn(many)
            tp.append(s.onnx_tp_batch / (time.perf_counter() - t0))
        speed[label] = {"latency_batch1_ms": 1000 * statistics.median(latency),
                        f"throughput_batch{s.onnx_tp_batch}_images_s": statistics.median(tp)}
    result["speed"] = speed
    result["speed_settings"] = {"latency_runs": s.onnx_latency_runs, "throughput_batch": s.onnx_tp_batch,
                                "throughput_runs": s.onnx_tp_runs, "io": "numpy in, numpy out (host-device "
                                                                         "copies included)"}
    ort_label = f"onnxruntime fp32 ({runner.provider})"
    result["ratios"] = {
        "onnx_vs_torch_fp32_latency_speedup": speed["torch fp32"]["latency_batch1_ms"] /
        speed[ort_label]["latency_batch1_ms"],
        "onnx_vs_torch_fp32_throughput": speed[ort_label][f"throughput_batch{s.onnx_tp_batch}_images_s"] /
        speed["torch fp32"][f"throughput_batch{s.onnx_tp_batch}_images_s"],
    }
    wanted = requested[0]
    result["status"] = "ok" if runner.provider == wanted else \
        f"{wanted} not available: onnxruntime runs {runner.provider} (available: {result['available_providers']})"
    write_json(work / "onnx.json", result)
    return result


# -- summary -------------------------------------------------------------------------------------------------

def pytest_result(work: Path, status: dict[str, str]) -> dict[str, Any]:
    log = work / "pytest.log"
    if "pytest" not in status and not log.is_file():
        return {"status": "not run"}
    lines = log.read_text(encoding="utf-8", errors="replace").strip().splitlines() if log.is_file() else []
    rc = status.get("pytest")
    meaning = {"0": "passed", "1": "some tests failed", "2": "interrupted or collection error",
               "5": "no test collected: no test is marked gpu", "124": "timed out", "137": "killed"}
    return {"rc": rc, "meaning": meaning.get(str(rc), "see the log"), "last_line": lines[-1] if lines else "",
            "command": "pytest -m gpu -q -p no:cacheprovider tests"}


def fmt(value: Any, spec: str = ".1f") -> str:
    return "n/a" if value is None else format(value, spec)


def to_markdown(summary: dict[str, Any]) -> str:
    env, methods, tp, onnx = (summary.get(k) or {} for k in ("env", "methods", "throughput", "onnx"))
    machine = env.get("machine", {})
    gpu = env.get("gpu") or {}
    ort = env.get("onnxruntime")
    ort_version = ort.get("version") if isinstance(ort, dict) else ort
    lines = [f"# GPU checks ({'CPU smoke run: numbers mean nothing' if summary['cpu_smoke'] else 'benchmarks/gpu.sh'})",
             "",
             f"Machine: {gpu.get('name') or machine.get('cpu', 'n/a')}"
             + (f" ({gpu.get('memory_gib')} GiB, {gpu.get('multiprocessors')} SMs, compute {gpu.get('capability')})"
                if gpu else "")
             + f"; {machine.get('logical_cpus', 'n/a')} logical CPUs; {machine.get('platform', 'n/a')}; Python "
               f"{machine.get('python', 'n/a')}; torch {machine.get('torch', 'n/a')} (CUDA {env.get('torch_cuda')}, "
               f"cuDNN {env.get('cudnn')}); accelerate {env.get('accelerate', 'n/a')}; onnxruntime "
               f"{ort_version}; "
               f"robust_student {machine.get('robust_student', 'n/a')}.", ""]
    if env.get("nvidia_smi"):
        lines += [f"nvidia-smi: {env['nvidia_smi']}", ""]
    if env.get("matmul"):
        m = env["matmul"]
        lines += [f"Matrix product {m['n']}^3 {m['dtype']}: {m['tflops']:.1f} TFLOP/s (mean of 10 after 3 warm-ups).",
                  ""]
    if summary.get("status"):
        lines += ["Exit codes of the parts (gpu.sh; 124 = stopped by its time limit): "
                  + ", ".join(f"{k} {v}" for k, v in summary["status"].items()), ""]

    lines += ["## Every method through RobustDistiller", ""]
    if methods.get("methods"):
        st = methods["settings"]
        lines += [f"{st['method_examples']} synthetic {st['method_image']} px images, batch {st['method_batch']}, "
                  f"{st['method_attack_steps']}-step PGD (8/255), train.mixed_precision={st['precision']}, device "
                  f"{st['device']}; validation on {st['method_eval']} images with {st['val_attack']}.", "",
                  "| method | teachers | student | status | steps | last loss | trainable layers' output dtype | s |",
                  "|---|---|---|---|---:|---:|---|---:|"]
        for name, r in methods["methods"].items():
            teachers = r["teacher"] if isinstance(r["teacher"], str) else \
                ", ".join(f"{k}: {v}" for k, v in r["teacher"].items())
            last = r.get("losses", [None])[-1] if r.get("losses") else None
            status = r["status"] if r["status"] != "error" else f"error: {r.get('error', '')[:160]}"
            if r.get("notes"):
                status += f" ({'; '.join(r['notes'])})"
            lines.append(f"| {name} | {teachers} | {r['student']} | {status} | {r.get('steps', 0)} | "
                         f"{fmt(last, '.4g')} | {', '.join(r.get('trainable_layer_output_dtypes', []))} | "
                         f"{r['seconds']:.1f} |")
        missing = [m for m in list_methods() if m not in methods["methods"]]
        if missing:
            lines.append(f"\nNot reached (time limit): {', '.join(missing)}")
    else:
        lines.append("not run (or stopped before its first method)")
    lines.append("")

    lines += [f"## {tp.get('model', 'resnet18')} RSLAD step throughput", ""]
    if tp.get("variants") or tp.get("flops"):
        lines += [f"{tp['model']} at {tp['image_size']} px, batch {tp['batch']}, {tp['precision']}; PGD {tp['pgd']}; "
                  f"step: {tp['step']}.", ""]
        fl = tp.get("flops") or {}
        if "estimate_tflop_per_step" in fl:
            lines += [f"FLOPs: student forward {fl['student_forward_gflops_per_image']:.4g} GFLOP/image, teacher "
                      f"{fl['teacher_forward_gflops_per_image']:.4g}; estimate {fl['estimate_tflop_per_step']:.4g} "
                      f"TFLOP/step, counted {fl['counted_tflop_per_step']:.4g} (counted / estimate "
                      f"{fl['counted_over_estimate']:.3f}). Method: {fl['method']} Every variant's TFLOP/s counts "
                      "the estimate's FLOPs (the useful work: a compiled graph may also compute the weight "
                      "gradients that PGD discards).", ""]
        elif fl:
            lines += [f"FLOPs: not counted ({fl.get('error')})", ""]
        peak = tp.get("peak_tflops")
        lines += ["| variant | images/s | median step (ms) | warm-up (s) | TFLOP/s (estimate) | of bf16 dense peak "
                  f"({fmt(peak, '.0f')}) | of measured matmul |", "|---|---:|---:|---:|---:|---:|---:|"]
        for name in VARIANTS:
            r = tp.get("variants", {}).get(name)
            if r is None:
                lines.append(f"| {name} | not reached (time limit) | | | | | |")
            elif "error" in r:
                lines.append(f"| {name} | error: {r['error'][:200]} | | | | | |")
            else:
                frac = r.get("fraction_of_bf16_dense_peak")
                mm = r.get("fraction_of_measured_matmul")
                lines.append(f"| {name} | {r['images_per_s']:.1f} | {1000 * r['median_step_seconds']:.1f} | "
                             f"{r['warmup_seconds']:.1f} | {fmt(r.get('achieved_tflops_estimate'), '.4g')} | "
                             f"{'n/a' if frac is None else f'{100 * frac:.1f} %'} | "
                             f"{'n/a' if mm is None else f'{100 * mm:.1f} %'} |")
        base = tp.get("variants", {}).get("eager", {}).get("images_per_s")
        ratios = [f"{n} x{r['images_per_s'] / base:.2f}" for n, r in tp.get("variants", {}).items()
                  if base and "images_per_s" in r and n != "eager"]
        if ratios:
            lines += ["", "Against eager (same run): " + ", ".join(ratios)]
    else:
        lines.append("not run")
    lines.append("")

    lines += ["## ONNX on onnxruntime's CUDA provider", ""]
    if onnx.get("parity"):
        p = onnx["parity"]
        lines += [f"{onnx['model']} at {onnx['image_size']} px (random weights), onnxruntime {onnx['onnxruntime']} "
                  f"({onnx.get('onnxruntime_package')}); requested {onnx['requested_providers']}, runs "
                  f"**{onnx['provider']}**; status: {onnx['status']}.", "",
                  f"Parity on {p['examples']} images against {p['reference']}: max |logit diff| "
                  f"{p['max_abs_logit_diff']:.2e} (largest |logit| {p['max_abs_logit']:.2f}), top-1 agreement "
                  f"{100 * p['top1_agreement']:.1f} %; torch on the device vs torch on the CPU: "
                  f"{p['torch_device_vs_torch_cpu_max_abs_diff']:.2e}.", "",
                  "| runtime | latency batch 1 (ms) | throughput (images/s) |", "|---|---:|---:|"]
        for label, r in onnx["speed"].items():
            tp_key = next(k for k in r if k.startswith("throughput"))
            lines.append(f"| {label} | {r['latency_batch1_ms']:.2f} | {r[tp_key]:.1f} ({tp_key.split('_')[1]}) |")
        q = onnx["ratios"]
        lines += ["", f"ONNX vs torch FP32: batch-1 latency x{q['onnx_vs_torch_fp32_latency_speedup']:.2f}, "
                      f"throughput x{q['onnx_vs_torch_fp32_throughput']:.2f} ({onnx['speed_settings']['io']})."]
    else:
        lines.append(onnx.get("error", "not run"))
    lines.append("")

    pt = summary.get("pytest") or {}
    lines += ["## pytest -m gpu", "", f"rc {pt.get('rc', 'n/a')}: {pt.get('meaning', pt.get('status', 'not run'))}"
              + (f"; last line: `{pt['last_line']}`" if pt.get("last_line") else ""), ""]
    return "\n".join(lines)


def part_summary(work: Path, out: Path, status: dict[str, str], cpu_smoke: bool) -> dict[str, Any]:
    summary: dict[str, Any] = {"cpu_smoke": cpu_smoke, "status": status,
                               "written": time.strftime("%Y-%m-%d %H:%M:%S")}
    for part in PARTS:
        summary[part] = read_json(work / f"{part}.json")
    summary["pytest"] = pytest_result(work, status) if not cpu_smoke else {"status": "not run in --cpu-smoke"}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "gpu.json", summary)
    (out / "gpu.md").write_text(to_markdown(summary), encoding="utf-8")
    return summary


# -- entry point ---------------------------------------------------------------------------------------------

def run_part(part: str, s: Sizes, work: Path, args: argparse.Namespace) -> None:
    if part == "env":
        write_json(work / "env.json", part_env(s, work))
    elif part == "methods":
        part_methods(s, work)
    elif part == "throughput":
        part_throughput(s, work, args.variants, args.peak_tflops, append=args.append)
    elif part == "onnx":
        try:
            part_onnx(s, work)
        except Exception as err:  # noqa: BLE001 - recorded, so the summary says why
            write_json(work / "onnx.json", {"error": error_text(err), "traceback": traceback.format_exc()[-2000:]})
            raise


def main(argv: list[str] | None = None) -> int:
    keep_freed_memory()  # this process is the benchmark's: see robust_student.cpu_allocator
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=[*PARTS, "summary", "all"], default="all")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="every part on the CPU with tiny sizes, fp32, 1 thread (checks the code path only)")
    parser.add_argument("--work", help="folder of the parts' JSON (default: --out)")
    parser.add_argument("--out", help="folder of gpu.json / gpu.md (default: $OUT, else benchmarks/results/gpu; "
                                      "with --cpu-smoke a temporary folder)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                        help="throughput variants to run (default: all)")
    parser.add_argument("--append", action="store_true",
                        help="throughput: add the variants to those already in <work>/throughput.json")
    parser.add_argument("--peak-tflops", type=float, default=H200_BF16_DENSE_TFLOPS,
                        help="the GPU's bf16 dense peak (default: the H200's 989)")
    parser.add_argument("--status", nargs="*", default=[], metavar="PART=RC",
                        help="gpu.sh's exit codes, for the summary")
    args = parser.parse_args(argv)

    s = SMOKE if args.cpu_smoke else GPU
    if args.out:
        out = Path(args.out)
    elif args.cpu_smoke:
        out = Path(tempfile.mkdtemp(prefix="robust_student_gpu_smoke."))
    else:
        out = Path(os.environ.get("OUT") or Path(__file__).resolve().parent / "results" / "gpu")
    work = Path(args.work) if args.work else out
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if s.threads:
        torch.set_num_threads(s.threads)
    if args.part != "summary" and s.device == "cuda" and not torch.cuda.is_available():
        print("gpu_bench: torch.cuda.is_available() is False: these checks need a CUDA GPU "
              f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); on a CPU run --cpu-smoke",
              file=sys.stderr)
        return 3
    work.mkdir(parents=True, exist_ok=True)
    status = dict(item.split("=", 1) for item in args.status)
    parts = list(PARTS) if args.part == "all" else [args.part]
    failed = False
    for part in parts:
        if part == "summary":
            continue
        print(f"== {part}{' (cpu smoke)' if args.cpu_smoke else ''}", flush=True)
        started = time.perf_counter()
        try:
            run_part(part, s, work, args)
            status.setdefault(part, "0") if args.part == "all" else None
        except Exception as err:  # noqa: BLE001
            failed = True
            print(f"   {part} failed: {error_text(err)}", flush=True)
            traceback.print_exc()
            if args.part == "all":
                status[part] = "1"
        print(f"   {part}: {time.perf_counter() - started:.1f} s", flush=True)
    if args.part in ("summary", "all"):
        summary = part_summary(work, out, status, args.cpu_smoke)
        print(to_markdown(summary))
        print(f"written: {out / 'gpu.json'}, {out / 'gpu.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
