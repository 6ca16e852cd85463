"""PACS node throughput: instances per second end to end through a real Orthanc (QIDO search + WADO retrieve +
predict + TID 1500 SR + STOW store) against ``OnnxStudent.predict`` on the same files from disk, in one run.

The model is an exported ResNet-18 student at 224 px (random weights: speed does not depend on them); the
instances are 512x512 16-bit CR images made with pydicom, uploaded to a fresh Orthanc (Debian's orthanc +
orthanc-dicomweb, loopback, basic auth) started by this script. Both sides use batch 16 and the same
onnxruntime thread count; the disk side reads and predicts the files, the node side does everything a
deployment does, including one SR per instance. Target (issue 32): node >= 0.7x disk at batch 16.

Both are timed after warm-up (an onnxruntime run; one SR built, which loads highdicom's and pydicom's tables
once per process, as a running node has). Besides wall time it records CPU seconds (this process, and the
Orthanc process during the node run) and where the node's wall time went (search, SR lookup, retrieve in a
prefetch thread, predict, SR build, store in a store thread), so a ratio below target can be explained.

    python benchmarks/pacs_throughput.py --instances 64 --threads 2   # -> benchmarks/results/pacs_throughput.{json,md}
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "runtime" / "tests"))
from attack_speed import machine_description  # noqa: E402

import orthanc_server  # noqa: E402  (the tests' loopback Orthanc harness)
import runtime_fixtures as fx  # noqa: E402
from robust_student import create_student  # noqa: E402
from robust_student.export import export_onnx  # noqa: E402
from robust_student_runtime import OnnxStudent  # noqa: E402
from robust_student_runtime.pacs.dicomweb import Archive  # noqa: E402
from robust_student_runtime.pacs.node import run_job  # noqa: E402
from robust_student_runtime.pacs.report import ReportBuilder  # noqa: E402
from robust_student_runtime.pacs.state import JobState  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of this process (with its threads), or of process ``pid`` (from /proc)."""
    if pid is None:
        times = os.times()
        return times.user + times.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _timed(stages: dict, owner: object, name: str, key: str) -> None:
    """Wrap ``owner.name`` so that its wall seconds add up in ``stages[key]`` (negligible overhead)."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            stages[key] += time.perf_counter() - start

    setattr(owner, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        student = create_student("resnet18", embed_dim=512, num_classes=4, image_size=224).eval()
        model_path = work / "model.onnx"
        export_onnx(student, model_path)
        model = OnnxStudent(model_path, threads=args.threads)
        rng = np.random.default_rng(0)
        from pydicom.uid import generate_uid

        study, series = generate_uid(), generate_uid()
        files = []
        for k in range(args.instances):
            ds = fx.image_dataset(rng.integers(0, 4096, (args.size, args.size)), study=study, series=series,
                                  window=(2048.0, 4096.0))
            ds.InstanceNumber = k + 1
            files.append(fx.save(ds, work / f"{k}.dcm"))

        warm = model.predict([str(files[0])], errors="skip")  # onnxruntime's first run
        ReportBuilder(model).build(fx.image_dataset(window=(2048.0, 4096.0)), warm[0])  # the tables, once
        cpu = _cpu_seconds()
        start = time.perf_counter()
        disk = model.predict([str(p) for p in files], batch_size=args.batch_size, errors="skip")
        disk_seconds = time.perf_counter() - start
        disk_cpu = _cpu_seconds() - cpu
        assert all(r.ok for r in disk)

        server = orthanc_server.Orthanc(work / "orthanc").start()
        try:
            for path in files:
                server.upload(path.read_bytes())
            archive = Archive(server.dicomweb, orthanc_server.USER, orthanc_server.PASSWORD)
            state = JobState(work / "job", model.metadata["weights_sha256"], archive_user=orthanc_server.USER)
            stages: dict = collections.defaultdict(float)
            for name in ("search", "exists", "retrieve", "store"):
                _timed(stages, Archive, name, name)
            _timed(stages, ReportBuilder, "build", "sr_build")
            _timed(stages, OnnxStudent, "predict", "predict")
            cpu, orthanc_cpu = _cpu_seconds(), _cpu_seconds(server.process.pid)
            start = time.perf_counter()
            counts = run_job(archive, model, state, study=study, batch_size=args.batch_size,
                             stop=threading.Event(), log=lambda message: None)
            node_seconds = time.perf_counter() - start
            node_cpu, orthanc_cpu = _cpu_seconds() - cpu, _cpu_seconds(server.process.pid) - orthanc_cpu
            assert counts.stored == args.instances, counts.line()
        finally:
            server.close()
    disk_rate, node_rate = args.instances / disk_seconds, args.instances / node_seconds
    result = {
        "machine": machine_description(torch.device("cpu")), "instances": args.instances,
        "image": f"{args.size}x{args.size} 16-bit CR", "model": "resnet18 224 px fp32 (random weights)",
        "batch_size": args.batch_size, "threads": args.threads,
        "disk_instances_per_s": round(disk_rate, 2), "node_instances_per_s": round(node_rate, 2),
        "ratio_node_over_disk": round(node_rate / disk_rate, 3), "target_ratio": 0.7,
        "orthanc": "Debian orthanc 1.10 + orthanc-dicomweb, loopback, basic auth",
        "disk_seconds": round(disk_seconds, 3), "node_seconds": round(node_seconds, 3),
        "cpu_seconds": {"disk": round(disk_cpu, 2), "node_process": round(node_cpu, 2),
                        "orthanc_during_node": round(orthanc_cpu, 2)},
        "node_wall_seconds_by_stage": {k: round(v, 3) for k, v in sorted(stages.items())},
        "stage_note": "wall seconds summed per stage; the stages overlap: retrieve runs in a prefetch thread, "
                      "store in a store thread, search, SR lookup, predict and SR build in the job's thread",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "pacs_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# PACS node throughput (benchmarks/pacs_throughput.py)", "",
             f"Machine: {result['machine']}", "",
             "| path | instances/s |", "|---|---|",
             f"| OnnxStudent.predict on the files from disk (batch {args.batch_size}) | {disk_rate:.2f} |",
             f"| pacs run through Orthanc: QIDO + WADO + predict + SR + STOW (batch {args.batch_size}) | "
             f"{node_rate:.2f} |",
             "", f"Ratio node / disk: **{node_rate / disk_rate:.2f}x** (target >= 0.7x); {args.instances} "
             f"instances of {result['image']}, {result['model']}, {args.threads} onnxruntime thread(s).", "",
             f"CPU seconds: disk {disk_cpu:.2f}; node {node_cpu:.2f} in the node's process + {orthanc_cpu:.2f} in "
             "Orthanc.", "",
             "Node wall seconds summed by stage (they overlap: retrieve in a prefetch thread, store in a store "
             "thread, the rest in the job's thread): " +
             ", ".join(f"{k} {v:.2f}" for k, v in sorted(stages.items())) + "."]
    (RESULTS / "pacs_throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
