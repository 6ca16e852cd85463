"""Which INT8 settings keep a trained robust student's robustness? (calibration, activations, float nodes)

The robust zoo student ``fmnist-clip-robust`` (``resnet_tiny``, 28 px, PGD-AT at L-inf eps 0.1) is exported to
INT8 with each setting of :data:`SETTINGS` through the library's own path, ``export_onnx(..., quantize="int8",
validate=...)`` (``allow_failed=True`` so a refused setting still reports its numbers): calibration on training
images, validation on the same ``--n-val`` seeded test images for every setting (PGD-20 and APGD-CE crafted on the
FP32 torch student, Square on the INT8 onnxruntime session, the INT8 gates of :class:`~export.validate.Thresholds`).
Then, in one interleaved timing pass over the FP32 artifact and every INT8 artifact (batch 64, onnxruntime on one
thread, median of ``--repeats``), the throughput of each INT8 model relative to FP32, and each file's size.

Writes ``benchmarks/results/int8_settings.{json,md}``. Each setting's validation is cached in ``--workdir`` (keyed
by its settings), so an interrupted run continues; the timing pass always runs afresh.

    nice -n 15 env OMP_NUM_THREADS=1 python benchmarks/int8_settings.py            # the committed result
    nice -n 15 env OMP_NUM_THREADS=1 python benchmarks/int8_settings.py --quick    # smoke run (2 settings, 40 images)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attack_speed import machine_description  # noqa: E402  (the one machine description of the benchmarks)
from onnx_int8_robustness import pin_onnxruntime_threads  # noqa: E402  (calibration sessions on one thread too)

from robust_student import build_dataset, load_student  # noqa: E402
from robust_student.config import DataConfig  # noqa: E402
from robust_student.export import OnnxStudent, Thresholds, export_onnx  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
STUDENT = Path(__file__).resolve().parents[1] / "robust_student" / "teachers" / "weights" / "fmnist-clip-robust"
EPS = 0.1

# name -> export_onnx INT8 arguments (calibration_images, calibration_method, quantize_options).
SETTINGS: dict[str, dict[str, Any]] = {
    "minmax-256 (old default)": {},
    "minmax-1024": {"calibration_images": 1024},
    "minmax-256 moving average": {"quantize_options": {"extra_options": {"CalibMovingAverage": True}}},
    "percentile-256 (99.999)": {"calibration_method": "percentile"},
    "percentile-256 (99.99)": {"calibration_method": "percentile",
                               "quantize_options": {"extra_options": {"CalibPercentile": 99.99}}},
    "entropy-256": {"calibration_method": "entropy"},
    "minmax-256 int8 activations": {"quantize_options": {"activations": "int8"}},
    "minmax-256 stem float": {"quantize_options": {"keep_float": ["stem"]}},
    "minmax-256 head float": {"quantize_options": {"keep_float": ["head"]}},
    "minmax-256 stem+head float": {"quantize_options": {"keep_float": ["stem", "head"]}},
}
QUICK = ("minmax-256 (old default)", "minmax-256 head float")


def export_setting(name: str, options: dict[str, Any], student: Any, train: Any, test: Any, workdir: Path,
                   args: argparse.Namespace) -> dict[str, Any]:
    """The validated INT8 export of one setting: its report, quantization metadata and file (cached by settings)."""
    slug = "".join(c if c.isalnum() else "_" for c in name)
    cache, path = workdir / f"{slug}.json", workdir / f"{slug}.int8.onnx"
    key = {"student": str(args.student.resolve()), "options": options, "n_val": args.n_val,
           "square_queries": args.square_queries, "train_limit": args.train_limit}
    if cache.is_file() and path.is_file():
        kept = json.loads(cache.read_text())
        if kept.get("key") == key:
            print(f"reusing {name}", flush=True)
            return kept
    start = time.perf_counter()
    result = export_onnx(student, path, quantize="int8", calibration=train, validate=test, n_examples=args.n_val,
                         square_queries=args.square_queries, allow_failed=True, overwrite=True, threads=1,
                         threat={"norm": "linf", "eps": EPS}, dataset_name="fashion-mnist test", **options)
    out = {"key": key, "path": str(path), "seconds": round(time.perf_counter() - start, 1),
           "report": result.report.to_dict(), "quantization": result.metadata.get("quantization")}
    cache.write_text(json.dumps(out, indent=2) + "\n")
    print(f"{name}: {result.report.to_text()}", flush=True)
    return out


def calibration_draws(student: Any, fp32: Path, train: Any, test: Any, workdir: Path,
                      args: argparse.Namespace) -> list[dict[str, Any]]:
    """MinMax at each of ``--draw-images`` on other calibration draws (``--calibration-seeds``), validated like
    the settings (same test images, validation seed 0): ``export_onnx`` seeds calibration and validation with one
    seed, so the draw is changed through :func:`~export.quantize.quantize_int8` and the model validated by
    :func:`~export.validate.validate_onnx` directly."""
    from robust_student.attacks import make_threat
    from robust_student.export import validate_onnx
    from robust_student.export.metadata import build_metadata, write_metadata
    from robust_student.export.quantize import quantize_int8
    from robust_student.students.io import student_config

    import onnx

    opset = next(o.version for o in onnx.load(str(fp32)).opset_import if o.domain in ("", "ai.onnx"))
    rows = []
    for seed in args.calibration_seeds:
        for n in args.draw_images:
            path = workdir / f"draw_{seed}_{n}.int8.onnx"
            metadata = build_metadata(student, config=student_config(student), outputs=("logits",),
                                      threat={"norm": "linf", "eps": EPS, "eps_text": str(EPS)}, method=None,
                                      exporter="torch.onnx dynamo", opset=opset)
            metadata["quantization"] = quantize_int8(fp32, path, train, n_images=n, seed=seed)
            write_metadata(path, metadata)
            r = validate_onnx(path, student, test, threat=make_threat("linf", EPS), n_examples=args.n_val,
                              square_queries=args.square_queries, threads=1)
            pgd = r.adversarial["pgd20"]
            rows.append({"calibration_seed": seed, "n_images": n, "passed": r.passed,
                         "clean_top1_agreement": r.clean["top1_agreement"],
                         "pgd20_drop": pgd["accuracy_torch"] - pgd["accuracy_onnx"],
                         "worst_drop": r.worst_case["accuracy_torch"] - r.worst_case["accuracy_onnx"]})
            print(rows[-1], flush=True)
    return rows


def throughput(paths: dict[str, Path], batch: int, repeats: int) -> dict[str, float]:
    """Images per second of each artifact at ``batch`` on one onnxruntime thread: repetitions interleave the
    artifacts (order rotated each time), median over repetitions."""
    x = np.random.default_rng(0).random((batch, 3, 28, 28), dtype=np.float32)
    runners = {k: OnnxStudent(p, threads=1) for k, p in paths.items()}
    for runner in runners.values():
        runner.logits(x)  # warm-up
    times: dict[str, list[float]] = {k: [] for k in runners}
    order = list(runners)
    for r in range(repeats):
        for k in order[r % len(order):] + order[:r % len(order)]:
            start = time.perf_counter()
            runners[k].logits(x)
            times[k].append(time.perf_counter() - start)
    return {k: batch / statistics.median(t) for k, t in times.items()}


def summarise(name: str, exported: dict[str, Any], rate: float, fp32_rate: float, fp32_bytes: int) -> dict[str, Any]:
    """One row: clean agreement, PGD-20 torch vs INT8, worst-case drop, pass/fail, speed and size ratios."""
    r = exported["report"]
    pgd = r["adversarial"]["pgd20"]
    size = Path(exported["path"]).stat().st_size
    return {"setting": name, "passed": r["passed"], "failed_checks": [c["detail"] for c in r["checks"]
                                                                       if c.get("passed") is False],
            "clean_top1_agreement": r["clean"]["top1_agreement"], "clean_torch": r["clean"]["accuracy_torch"],
            "clean_int8": r["clean"]["accuracy_onnx"], "pgd20_torch": pgd["accuracy_torch"],
            "pgd20_int8": pgd["accuracy_onnx"], "pgd20_drop": pgd["accuracy_torch"] - pgd["accuracy_onnx"],
            "pgd20_top1_agreement": pgd["top1_agreement"], "clean_max_logit_diff": r["clean"]["max_logit_diff"],
            "apgd_ce_drop": r["adversarial"]["apgd-ce"]["accuracy_torch"] - r["adversarial"]["apgd-ce"]["accuracy_onnx"],
            "square_int8": r["black_box"]["accuracy_onnx"], "worst_torch": r["worst_case"]["accuracy_torch"],
            "worst_int8": r["worst_case"]["accuracy_onnx"],
            "worst_drop": r["worst_case"]["accuracy_torch"] - r["worst_case"]["accuracy_onnx"],
            "images_per_second": round(rate, 1), "speedup_vs_fp32": round(rate / fp32_rate, 2),
            "bytes": size, "size_vs_fp32": round(size / fp32_bytes, 3),
            "float_nodes": (exported["quantization"] or {}).get("float_nodes"),
            "validation_seconds": exported["seconds"]}


def _student_name(folder: Path) -> str:
    """The zoo entry's name, or the folder as given (another student)."""
    return folder.name if folder.resolve() == STUDENT.resolve() else str(folder)


def pts(v: float) -> str:
    return f"{100 * v:+.1f}"


def to_markdown(res: dict[str, Any]) -> str:
    m, t = res["machine"], res["thresholds"]
    out = ["# INT8 settings that keep a robust student's robustness (`benchmarks/int8_settings.py`)", "",
           f"Student `{res['student']}` (resnet_tiny, 28 px), Fashion-MNIST; each INT8 model is exported and "
           f"validated by the library (`export_onnx(..., quantize='int8', validate=...)`) on the same "
           f"{res['n_val']} seeded test images, L-inf eps {EPS}: PGD-20 and APGD-CE crafted on the FP32 torch "
           f"student, Square ({res['square_queries']} queries) on the INT8 session. Gates: clean and robust drops "
           f"<= {100 * t['max_int8_robust_drop']:.0f} points (worst case includes Square), top-1 agreement >= "
           f"{100 * t['min_int8_label_agreement']:.0f} %. Calibration images drawn (seed 0) from "
           f"{'the first ' + str(res['train_limit']) if res['train_limit'] else 'all'} training images. Drops are "
           "FP32 torch - INT8 ONNX in points (positive = INT8 worse); one example = "
           f"{100 / res['n_val']:.1f} points. Speed: batch {res['batch']}, onnxruntime on 1 thread, median of "
           f"{res['repeats']} interleaved repetitions, in the same run; FP32 ONNX "
           f"{res['fp32']['images_per_second']:.0f} images/s, {res['fp32']['bytes'] / 1024:.0f} KiB.", "",
           "| setting | gates | clean agreement | clean torch / INT8 | max logit diff | PGD-20 torch / INT8 | PGD-20 drop "
           "| PGD-20 agreement | APGD-CE drop | worst torch / INT8 | worst drop | INT8 / FP32 speed | size (KiB) |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        out.append(f"| {r['setting']} | {'pass' if r['passed'] else '**FAIL**'} | "
                   f"{100 * r['clean_top1_agreement']:.1f} | {100 * r['clean_torch']:.1f} / {100 * r['clean_int8']:.1f} | "
                   f"{r['clean_max_logit_diff']:.3f} | {100 * r['pgd20_torch']:.1f} / {100 * r['pgd20_int8']:.1f} | "
                   f"{pts(r['pgd20_drop'])} | {100 * r['pgd20_top1_agreement']:.1f} | "
                   f"{pts(r['apgd_ce_drop'])} | {100 * r['worst_torch']:.1f} / {100 * r['worst_int8']:.1f} | "
                   f"{pts(r['worst_drop'])} | {r['speedup_vs_fp32']:.2f}x | {r['bytes'] / 1024:.0f} |")
    if res.get("calibration_draws"):
        out += ["", "Other calibration draws (MinMax; the table above is draw 0), validated on the same images:", "",
                "| calibration seed | images | gates | clean agreement | PGD-20 drop | worst drop |",
                "|---:|---:|---|---:|---:|---:|"]
        out += [f"| {d['calibration_seed']} | {d['n_images']} | {'pass' if d['passed'] else '**FAIL**'} | "
                f"{100 * d['clean_top1_agreement']:.1f} | {pts(d['pgd20_drop'])} | {pts(d['worst_drop'])} |"
                for d in res["calibration_draws"]]
    out += ["", "Float nodes per setting: " + "; ".join(
        f"{r['setting']}: {', '.join((r['float_nodes'] or {}).get('nodes') or []) or 'none'}" for r in res["rows"]), ""]
    out += [f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs (shared with a training run; 1-min load "
            f"{m.get('load_average_1min_at_start')} at start), niced; {m['platform']}; Python {m['python']}; torch "
            f"{m['torch']}; onnxruntime {res['onnxruntime']}. Wall time {res['wall_minutes']:.1f} min.", "",
            f"Command: `{res['command']}`", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--student", type=Path, default=STUDENT, help="a saved student folder (default: the zoo's "
                   "fmnist-clip-robust)")
    p.add_argument("--train-limit", type=int, default=None, help="calibrate on images drawn from the first N "
                   "training images only, as a recipe's dataset.max_train_examples does (the quickstart: 4000)")
    p.add_argument("--n-val", type=int, default=200, help="test images each setting is validated on")
    p.add_argument("--square-queries", type=int, default=1000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--calibration-seeds", type=int, nargs="*", default=[],
                   help="also validate MinMax on these other calibration draws")
    p.add_argument("--draw-images", type=int, nargs="*", default=[256, 1024],
                   help="calibration image counts for --calibration-seeds")
    p.add_argument("--only", nargs="*", help="setting names to run (default: all)")
    p.add_argument("--quick", action="store_true", help="2 settings, 40 images, 100 Square queries (smoke run)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/int8_settings"),
                   help="where the artifacts and the per-setting caches go")
    p.add_argument("--out", type=Path, default=RESULTS / "int8_settings")
    args = p.parse_args(argv)
    if args.quick:
        args.n_val, args.square_queries, args.repeats, args.only = 40, 100, 5, list(QUICK)
        args.out = args.workdir / "quick"
    start_all = time.perf_counter()
    torch.set_num_threads(1)
    pin_onnxruntime_threads(1)
    args.workdir.mkdir(parents=True, exist_ok=True)
    machine = machine_description(torch.device("cpu"))
    student = load_student(args.student).eval()
    train = build_dataset(DataConfig(name="fashion-mnist", image_size=28, max_train_examples=args.train_limit), "train")
    test = build_dataset(DataConfig(name="fashion-mnist", image_size=28), "test")
    fp32 = args.workdir / "fp32.onnx"
    export_onnx(student, fp32, overwrite=True)
    names = args.only or list(SETTINGS)
    exported = {n: export_setting(n, SETTINGS[n], student, train, test, args.workdir, args) for n in names}
    rates = throughput({"fp32": fp32, **{n: Path(e["path"]) for n, e in exported.items()}}, args.batch, args.repeats)
    fp32_bytes = fp32.stat().st_size
    draws = calibration_draws(student, fp32, train, test, args.workdir, args)
    import onnxruntime

    res = {"student": _student_name(args.student), "train_limit": args.train_limit, "n_val": args.n_val, "square_queries": args.square_queries, "batch": args.batch, "repeats": args.repeats,
           "thresholds": Thresholds().to_dict(), "fp32": {"images_per_second": round(rates["fp32"], 1),
                                                          "bytes": fp32_bytes},
           "rows": [summarise(n, exported[n], rates[n], rates["fp32"], fp32_bytes) for n in names],
           "settings": {n: SETTINGS[n] for n in names}, "calibration_draws": draws, "machine": machine, "onnxruntime": onnxruntime.__version__,
           "wall_minutes": (time.perf_counter() - start_all) / 60,
           "command": "nice -n 15 env OMP_NUM_THREADS=1 python benchmarks/int8_settings.py "
                      + " ".join(sys.argv[1:] if argv is None else argv)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(to_markdown(res))
    print(to_markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
