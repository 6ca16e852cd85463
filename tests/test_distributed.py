"""Two CPU processes through ``accelerate launch`` (gloo): an adversarial method trains under DDP.

On a machine without GPUs, ``accelerate launch --multi_gpu`` spawns the processes with torchrun and
``ACCELERATE_USE_CPU=true`` makes accelerate use the gloo backend (``--cpu`` alone would need MPI).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

JOB = textwrap.dedent(
    """
    import hashlib, json, sys
    import torch
    sys.path.insert(0, {tests!r})
    from accelerate import PartialState
    from conftest import TinyTeacher
    from robust_student.config import DistillConfig
    from robust_student.data import build_dataset
    from robust_student.methods import create_method
    from robust_student.students import create_student
    from robust_student.training import Trainer

    out = sys.argv[1]
    cfg = DistillConfig(method="rslad", dataset="synthetic:3").with_overrides({{
        "train.epochs": 1, "train.batch_size": 8, "train.output_dir": out, "train.checkpoint_every": 2,
        "train.log_every": 1, "train.eval_examples": 16, "attack.steps": 2,
    }})
    train, val = build_dataset(cfg.dataset, "train", n=64), build_dataset(cfg.dataset, "val", n=16)
    teacher = TinyTeacher()
    teacher.set_classes(train.prompts.classnames, train.prompts.templates)
    torch.manual_seed(0)
    student = create_student("resnet_tiny", teacher, image_size=16, width=8)
    initial = {{k: v.clone() for k, v in student.state_dict().items()}}
    method = create_method("rslad", threat=cfg.threat)
    seen = []
    loss = method.loss

    def recording_loss(batch, student, teachers, state):
        seen.append(batch["image"].flatten(1)[:, :4].sum(1).tolist())  # a fingerprint of each example
        return loss(batch, student, teachers, state)

    method.loss = recording_loss
    result = Trainer(cfg, student, {{"teacher": teacher}}, method, train, val).fit()
    state = PartialState()
    digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in result.student.state_dict().values()))
    changed = any(not torch.equal(initial[k], v) for k, v in result.student.state_dict().items())
    report = {{"rank": state.process_index, "world": state.num_processes, "type": str(state.distributed_type),
              "steps": result.steps, "weights": digest.hexdigest(), "changed": changed, "seen": seen,
              "history": result.history, "teacher_frozen": not any(p.requires_grad for p in teacher.parameters())}}
    with open(f"{{out}}/rank{{state.process_index}}.json", "w") as fh:
        json.dump(report, fh)
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_process_gloo_run_keeps_replicas_in_sync(tmp_path: Path) -> None:
    launcher = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    if launcher is None:
        pytest.skip("the accelerate launcher is not installed")
    script = tmp_path / "job.py"
    script.write_text(JOB.format(tests=str(TESTS)), encoding="utf-8")
    out = tmp_path / "run"
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    cmd = [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           str(script), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]

    ranks = [json.loads((out / f"rank{i}.json").read_text()) for i in range(2)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world"] == 2 for r in ranks)
    assert all(r["type"] == "DistributedType.MULTI_CPU" for r in ranks)
    # 64 examples in batches of 8, sharded over two processes: 4 optimiser steps each, on disjoint data
    assert all(r["steps"] == 4 for r in ranks)
    fingerprints = [{x for batch in r["seen"] for x in batch} for r in ranks]
    assert len(fingerprints[0]) == len(fingerprints[1]) == 32 and not fingerprints[0] & fingerprints[1]
    # DDP kept the replicas identical, and they did train; the frozen teacher stayed frozen
    assert ranks[0]["weights"] == ranks[1]["weights"] and ranks[0]["changed"]
    assert all(r["teacher_frozen"] for r in ranks)
    # the main process validates and shares the record, so both ranks report the same numbers
    assert ranks[0]["history"] == ranks[1]["history"] and ranks[0]["history"][0]["val_examples"] == 16
    checkpoint = out / "checkpoints" / "step_00000004"
    assert {p.name for p in checkpoint.glob("rng_*.json")} == {"rng_0.json", "rng_1.json"}


def test_accelerate_launch_of_the_cli_fit_trains_one_run_over_two_processes(tmp_path: Path) -> None:
    """The README's scaling-out command (``accelerate launch ... -m robust_student.cli fit``) on two CPU
    processes: one run in one folder, both ranks in it (not two lone processes refusing each other)."""
    launcher = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    if launcher is None:
        pytest.skip("the accelerate launcher is not installed")
    out = tmp_path / "run"
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    cmd = [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           "-m", "robust_student.cli", "fit", "--recipe", "quickstart", "--set", "method=pgd-at", "method_args={}",
           "dataset.name=synthetic:3", "train.epochs=1", "train.batch_size=8",
           "dataset.max_train_examples=64", "train.eval_examples=16", "attack.steps=1",
           "student_args.width=8", "student_init=null", f"train.output_dir={out}", "--json"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 4  # 64 examples, batch 8 per process, two processes: 4 steps, not 8
    assert {p.name for p in (out / "checkpoints" / "step_00000004").glob("rng_*.json")} == {"rng_0.json",
                                                                                              "rng_1.json"}
