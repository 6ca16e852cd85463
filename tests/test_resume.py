"""Exact resume: a run killed with SIGKILL mid-epoch and resumed ends bit-identical to an uninterrupted one.

Each run is a fresh subprocess (one thread, deterministic algorithms) training a tiny student with RSLAD on
synthetic data: the attack's random start, the seeded data order, batch-norm statistics, SGD momentum and
the cosine schedule all have to be restored from the checkpoint for the final weights to match.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from robust_student.training.checkpoint import latest_checkpoint, read_trainer_state

TESTS = Path(__file__).resolve().parent

JOB = textwrap.dedent(
    """
    import sys, time
    import torch
    sys.path.insert(0, {tests!r})
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    from conftest import TinyTeacher
    from safetensors.torch import save_file
    from robust_student.config import DistillConfig
    from robust_student.data import build_dataset
    from robust_student.methods import create_method
    from robust_student.students import create_student
    from robust_student.training import Trainer

    output_dir, mode, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
    ema = None if sys.argv[4] == "none" else float(sys.argv[4])
    cfg = DistillConfig(method="rslad", dataset="synthetic:3").with_overrides({{
        "train.epochs": 2, "train.batch_size": 8, "train.output_dir": output_dir, "train.checkpoint_every": 3,
        "train.log_every": 2, "train.eval_examples": 16, "train.lr": 0.05, "attack.steps": 2,
        "train.ema_decay": ema,
    }})
    train, val = build_dataset(cfg.dataset, "train", n=96), build_dataset(cfg.dataset, "val", n=16)
    teacher = TinyTeacher()
    teacher.set_classes(train.prompts.classnames, train.prompts.templates)
    torch.manual_seed(0)
    student = create_student("resnet_tiny", teacher, image_size=16, width=8)
    method = create_method("rslad", cfg.method_args, threat=cfg.threat)
    loss = method.loss

    def slow_loss(batch, student, teachers, state):  # gives the parent time to kill us mid-epoch
        if state.step >= 6:
            time.sleep(delay)
        return loss(batch, student, teachers, state)

    method.loss = slow_loss
    result = Trainer(cfg, student, {{"teacher": teacher}}, method, train, val).fit(resume=(mode == "resume"))
    save_file({{k: v.contiguous() for k, v in result.student.state_dict().items()}}, output_dir + "/final.safetensors")
    """
)


def _run(script: Path, output_dir: Path, mode: str, delay: float = 0.0, ema: float | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(script), str(output_dir), mode, str(delay), str(ema or "none")],
                            env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]


@pytest.mark.parametrize("ema", [None, 0.9], ids=["plain", "weight-average"])
def test_sigkill_mid_epoch_then_resume_is_bitwise_identical(tmp_path: Path, ema: float | None) -> None:
    script = tmp_path / "job.py"
    script.write_text(JOB.format(tests=str(TESTS)), encoding="utf-8")

    reference = tmp_path / "reference"
    _finish(_run(script, reference, "fresh", ema=ema))

    interrupted = tmp_path / "interrupted"
    proc = _run(script, interrupted, "fresh", delay=0.5, ema=ema)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # wait for the step-6 checkpoint (epoch 0 has 12 batches)
        found = latest_checkpoint(interrupted)
        if found is not None and read_trainer_state(found)["step"] >= 6:
            break
        if proc.poll() is not None:
            pytest.fail(f"the job ended before it could be killed: {proc.stderr.read()[-2000:]}")
        time.sleep(0.02)
    else:
        proc.kill()
        pytest.fail("no mid-epoch checkpoint appeared")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    state = read_trainer_state(latest_checkpoint(interrupted))
    assert (state["epoch"], state["batch"], state["step"]) == (0, 6, 6), "the kill should land mid-epoch"
    assert not (interrupted / "final.safetensors").exists()

    _finish(_run(script, interrupted, "resume", ema=ema))

    expected = load_file(str(reference / "final.safetensors"))
    resumed = load_file(str(interrupted / "final.safetensors"))
    assert expected.keys() == resumed.keys()
    mismatched = [k for k in expected if not torch.equal(expected[k], resumed[k])]
    assert not mismatched, f"weights differ after resume: {mismatched[:5]}"
    # the metrics file of the resumed run reads like the uninterrupted one (no duplicated records)
    lines = [json.loads(x) for x in (interrupted / "metrics.jsonl").read_text().splitlines()]
    ref_lines = [json.loads(x) for x in (reference / "metrics.jsonl").read_text().splitlines()]
    clocks = ("train_seconds", "cpu_seconds")  # measurements: they continue across the resume, not equal
    assert [{k: v for k, v in r.items() if k not in clocks} for r in lines] == \
        [{k: v for k, v in r.items() if k not in clocks} for r in ref_lines]
    evals = [r for r in lines if r["kind"] == "eval"]
    assert evals and all(r["train_seconds"] > 0 and r["cpu_seconds"] > 0 for r in evals)
