"""PACS node memory over a long ``pacs run --watch``: the node's resident memory (RSS) while it reports 2,000
instances that keep arriving in a real Orthanc, sampled after each wave; it must stay flat.

Cheap on purpose: the instances are 64x64 16-bit CR images and the model is the runtime tests' tiny linear
classifier (16 px, torch-free), so the run measures what the node holds per instance and per poll (job state,
SR builder, DICOMweb client, prefetch and store threads, onnxruntime's arena), not a large model's activations.
The node runs as a deployment runs it: ``robust-student-runtime pacs run --watch`` in its own process (its RSS
read from /proc), against a fresh Debian Orthanc on loopback with basic auth, started by this script. Instances
are uploaded in waves (Orthanc's REST API, from this process); after each wave is reported (every instance has
its result line) the node's RSS is sampled.

    python benchmarks/pacs_memory.py --instances 2000 --wave 100   # -> benchmarks/results/pacs_memory.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "runtime" / "tests"))
import orthanc_server  # noqa: E402  (the tests' loopback Orthanc harness)
import runtime_fixtures as fx  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PASSWORD_ENV = "ROBUST_STUDENT_PACS_PASSWORD"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "load_average_1min_at_start": round(os.getloadavg()[0], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--wave", type=int, default=100, help="instances uploaded between two samples")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--interval", type=float, default=1.0, help="the node's --interval (seconds)")
    parser.add_argument("--warmup", type=int, default=500, help="instances before the baseline sample")
    parser.add_argument("--out", type=Path, default=RESULTS / "pacs_memory")
    args = parser.parse_args()
    started = time.perf_counter()
    info = machine()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        model = fx.make_model(work / "model.onnx")
        server = orthanc_server.Orthanc(work / "orthanc").start()
        job = work / "job"
        node = None
        samples = []
        try:
            env = {**os.environ, PASSWORD_ENV: orthanc_server.PASSWORD}
            log = open(work / "node.log", "w")  # a file, not a pipe: one line per instance would fill a pipe
            node = subprocess.Popen(
                [sys.executable, "-m", "robust_student_runtime", "pacs", "run", "--url", server.dicomweb, "--user",
                 orthanc_server.USER, "--model", str(model), "--modality", "CR", "--out", str(job), "--watch",
                 "--interval", str(args.interval), "--batch-size", "16", "--threads", "1"],
                env=env, stdout=subprocess.DEVNULL, stderr=log)
            rng = np.random.default_rng(0)
            uploaded = 0
            from pydicom.uid import generate_uid

            while uploaded < args.instances:
                study, series = generate_uid(), generate_uid()  # one study per wave, as a modality sends them
                for k in range(min(args.wave, args.instances - uploaded)):
                    ds = fx.image_dataset(rng.integers(0, 4096, (args.size, args.size)), study=study,
                                          series=series, window=(2048.0, 4096.0),
                                          patient=f"PAT-{uploaded // args.wave}")
                    ds.InstanceNumber = k + 1
                    buffer = __import__("io").BytesIO()
                    ds.save_as(buffer, enforce_file_format=True)
                    server.upload(buffer.getvalue())
                    uploaded += 1
                deadline = time.monotonic() + 600
                while lines(job / "results.jsonl") < uploaded:
                    if node.poll() is not None:
                        raise RuntimeError(f"the node exited ({node.returncode}): "
                                           f"{(work / 'node.log').read_text()[-2000:]}")
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the node did not report {uploaded} instances in time")
                    time.sleep(0.2)
                samples.append({"reported": uploaded, "node_rss_mb": round(rss_mb(node.pid), 2),
                                "orthanc_rss_mb": round(rss_mb(server.process.pid), 2),
                                "seconds": round(time.perf_counter() - started, 1)})
                print(samples[-1], flush=True)
            node.send_signal(signal.SIGTERM)
            code = node.wait(timeout=120)
            err = (work / "node.log").read_text()
            results = [json.loads(line) for line in (job / "results.jsonl").read_text().splitlines()]
        finally:
            if node is not None and node.poll() is None:
                node.kill()
            server.close()
    stored = sum(r["status"] == "stored" for r in results)
    base = next(s for s in samples if s["reported"] >= min(args.warmup, args.instances))
    last = samples[-1]
    growth = last["node_rss_mb"] - base["node_rss_mb"]
    per_instance_kb = growth * 1024 / max(1, last["reported"] - base["reported"])
    result = {
        "machine": info, "instances": args.instances, "wave": args.wave, "image": f"{args.size}x{args.size} 16-bit CR",
        "model": "the runtime tests' tiny linear classifier (16 px, 3 classes)", "interval_s": args.interval,
        "node_exit_status": code, "srs_stored": stored, "result_lines": len(results),
        "baseline": base, "final": last, "node_rss_growth_mb_after_warmup": round(growth, 2),
        "node_rss_growth_kb_per_instance": round(per_instance_kb, 3),
        "node_rss_peak_mb": max(s["node_rss_mb"] for s in samples), "samples": samples,
        "orthanc": "Debian orthanc 1.10 + orthanc-dicomweb, loopback, basic auth",
        "seconds": round(time.perf_counter() - started, 1),
    }
    assert code == 0 and stored == args.instances == len(results), (code, stored, len(results), err[-2000:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    rows = [f"| {s['reported']} | {s['node_rss_mb']:.1f} | {s['orthanc_rss_mb']:.1f} | {s['seconds']:.0f} |"
            for s in samples]
    text = ["# PACS node memory over a --watch run (benchmarks/pacs_memory.py)", "",
            f"Machine: {info}", "",
            f"`pacs run --watch --interval {args.interval}` in its own process against Orthanc; {args.instances} "
            f"instances ({result['image']}) uploaded in waves of {args.wave}; {result['model']}. Every instance "
            f"got its SR ({stored} stored, exit status {code} after SIGTERM).", "",
            "| instances reported | node RSS (MB) | Orthanc RSS (MB) | seconds |", "|---|---|---|---|", *rows, "",
            f"Node RSS from {base['reported']} to {last['reported']} instances: {base['node_rss_mb']:.1f} -> "
            f"{last['node_rss_mb']:.1f} MB ({growth:+.1f} MB, {per_instance_kb:+.2f} KB per instance); peak "
            f"{result['node_rss_peak_mb']:.1f} MB."]
    args.out.with_suffix(".md").write_text("\n".join(text) + "\n")
    print("\n".join(text))


if __name__ == "__main__":
    main()
