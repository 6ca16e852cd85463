"""CIARD: the push set (incl. empty), magnitude matching, the entropy-balanced temperatures (buffers, clipped to
[1, 10]), the outer loss, and the adv teacher retrained through the trainable-teacher mechanism: it changes after
its warm-up, the nat teacher stays bit-identical, checkpoints carry both, and a SIGKILL + resume ends exactly
like the uninterrupted run."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from robust_student.config import DistillConfig
from robust_student.data import build_dataset
from robust_student.methods import Method, TrainState, create_method
from robust_student.methods.ciard import magnitude_weight, push_set, updated_temperatures
from robust_student.students import create_student
from robust_student.training import Trainer
from robust_student.training import checkpoint as ckpt
from robust_student.training.checkpoint import latest_checkpoint, read_trainer_state

from conftest import TinyTeacher

TESTS = Path(__file__).resolve().parent


def test_the_push_set_is_where_the_natural_teacher_is_wrong_at_x_adv():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0]])
    assert push_set(logits, torch.tensor([0, 0, 1])).tolist() == [False, True, True]
    assert push_set(logits, torch.tensor([0, 1, 0])).tolist() == [False, False, False]  # the empty set


def test_magnitude_matching_by_hand():
    # floor(log10): 0.5 -> -1, 0.03 -> -2, 0.0004 -> -4: 10^(min(-1, -2) - (-4)) = 100
    assert magnitude_weight(0.5, 0.03, 0.0004) == pytest.approx(100.0)
    assert magnitude_weight(20.0, 3.0, 5.0) == pytest.approx(1.0)
    assert magnitude_weight(2.5, 3.0, 0.0) == pytest.approx(1e7)  # the code's guard: ~0 counts as 1e-7


def test_temperature_updates_by_hand_and_clipped_to_1_10():
    # the more uncertain teacher (larger entropy) is sharpened, the other softened, by lr each step
    assert updated_temperatures(5.0, 5.0, 2.0, 1.0, 0.001, 1.0, 10.0) == pytest.approx((4.999, 5.001))
    assert updated_temperatures(5.0, 5.0, 1.0, 2.0, 0.001, 1.0, 10.0) == pytest.approx((5.001, 4.999))
    assert updated_temperatures(5.0, 6.0, 1.5, 1.5, 0.001, 1.0, 10.0) == (5.0, 6.0)  # balanced: unchanged
    assert updated_temperatures(1.0, 10.0, 2.0, 1.0, 0.5, 1.0, 10.0) == (1.0, 10.0)  # clipped at both ends
    assert updated_temperatures(1.0, 1.0, 2.0, 1.0, 0.001, 1.0, 10.0) == pytest.approx((1.0, 1.001))


def test_temperatures_are_buffers_updated_after_each_step_with_the_codes_decay():
    method = create_method("ciard")
    assert {k: v.item() for k, v in method.state_dict().items()} == {"tau_adv": 1.0, "tau_nat": 1.0}
    outputs = {"entropy_adv": torch.tensor(1.0), "entropy_nat": torch.tensor(2.0)}
    method.on_step_end(outputs, TrainState(step=0, total_steps=300))
    assert (method.tau_adv.item(), method.tau_nat.item()) == pytest.approx((1.001, 1.0))
    method.on_step_end(outputs, TrainState(step=270, total_steps=300))  # after 215 and 260 of 300: lr x 0.01
    assert method.tau_adv.item() == pytest.approx(1.001 + 0.001 * 0.01)


def _kl(target_probs, pred_logits, t=1.0):
    return (target_probs * (target_probs.log() - F.log_softmax(pred_logits / t, 1))).sum(1).mean()


@pytest.mark.parametrize("nat_always_right", [False, True])
def test_outer_loss_matches_the_formula(nat_always_right, tiny_student, tiny_teacher, batch, monkeypatch):
    x, y = batch["image"], batch["label"]
    x_adv = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    monkeypatch.setattr(Method, "attack", lambda self, objective, x, student, **kw: x_adv)
    adv = TinyTeacher(seed=3)
    adv.set_classes(tiny_teacher.classnames, ["a photo of a {}."])

    class Oracle(torch.nn.Module):  # a natural teacher that is right on every image (empty push set)
        def forward(self, images):
            return 10.0 * F.one_hot(y, 3).float()

    nat = Oracle() if nat_always_right else tiny_teacher
    method = create_method("ciard")
    method.tau_adv.fill_(2.0)
    method.tau_nat.fill_(1.5)
    student = tiny_student.train()
    out = method.loss(batch, student, {"adv": adv, "nat": nat}, TrainState())
    with torch.no_grad():
        s_adv, s = student(x_adv), student(x)
        l1 = _kl(F.softmax(adv(x_adv) / 2.0, 1), s_adv)
        l2 = _kl(F.softmax(nat(x) / 1.5, 1), s)
        mask = nat(x_adv).argmax(1) != y
        if mask.any():
            l3 = _kl(F.softmax(nat(x_adv)[mask], 1), s_adv[mask], t=5.0)
            w = 10.0 ** (min(math.floor(math.log10(l1)), math.floor(math.log10(l2))) - math.floor(math.log10(l3)))
        else:
            l3, w = torch.tensor(0.0), 0.0
        expected = l1 + l2 - w * l3
    assert mask.any() != nat_always_right
    torch.testing.assert_close(out["loss"].detach(), expected, rtol=1e-4, atol=1e-6)
    assert out["push"].item() == pytest.approx(float(l3), rel=1e-4, abs=1e-7)
    assert out["push_weight"].item() == w and "adv_teacher_ce" not in out  # a frozen adv teacher: no CE


def test_the_adv_teachers_schedule_is_zero_during_the_warmup_then_the_codes_decay():
    method = create_method("ciard", {"teacher_warmup_fraction": 0.25})
    at = lambda p: method.lr_factor("teacher:adv", TrainState(step=round(p * 1000), total_steps=1000), 1.0)  # noqa
    assert at(0.0) == at(0.24) == 0.0
    assert at(0.25) == pytest.approx(1.0)
    assert at(0.625) == pytest.approx(0.5 * math.exp(-0.01 * 0.25))  # u = 0.5
    assert method.lr_factor("student", TrainState(step=3, total_steps=100), 0.3) == 0.3
    assert method.teacher_optimizer_options("adv") == {"lr": 1e-4, "momentum": 0.1, "weight_decay": 2e-4}


# -- through the trainer -----------------------------------------------------------------------------------

def _fit(out: Path, *, resume: bool = False, warmup: float = 0.5, trainable: str | None = None):
    train, val = build_dataset("synthetic:3", "train", n=32), build_dataset("synthetic:3", "val", n=8)
    adv, nat = TinyTeacher(seed=1), TinyTeacher(seed=2)
    for teacher in (adv, nat):
        teacher.set_classes(train.prompts.classnames, train.prompts.templates)
    config = DistillConfig(method="ciard", dataset="synthetic:3").with_overrides({
        "train.epochs": 2, "train.batch_size": 8, "train.output_dir": str(out), "train.checkpoint_every": 3,
        "train.eval_examples": 0, "train.lr": 0.05, "attack.steps": 1,
        "method_args": {"teacher_warmup_fraction": warmup, "teacher_lr": 0.05},
        "teachers": {"adv": {"name": "tiny", "trainable": trainable}, "nat": "tiny"}})
    method = create_method("ciard", config.method_args, threat=config.threat, attack=config.attack)
    torch.manual_seed(0)
    student = create_student("resnet_tiny", nat, image_size=16, width=8)
    result = Trainer(config, student, {"adv": adv, "nat": nat}, method, train, val).fit(resume)
    return result, adv, nat, method


def test_the_adv_teacher_retrains_after_its_warmup_and_the_nat_teacher_stays_bit_identical(tmp_path):
    adv0, nat0 = TinyTeacher(seed=1).state_dict(), TinyTeacher(seed=2).state_dict()
    result, adv, nat, method = _fit(tmp_path / "run", warmup=0.5)
    checkpoints = ckpt.list_checkpoints(tmp_path / "run")
    changed = {k for k, v in adv.state_dict().items() if not torch.equal(v, adv0[k])}
    assert changed == {"image_tower.6.weight", "image_tower.6.bias"}  # its head (the default), after the warm-up
    assert all(torch.equal(v, nat0[k]) for k, v in nat.state_dict().items())
    model, _ = ckpt.read_part(checkpoints[-1], "model")
    assert torch.equal(model["teachers.adv.image_tower.6.weight"], adv.state_dict()["image_tower.6.weight"])
    assert not any(k.startswith("teachers.nat") for k in model)
    assert model["method.tau_adv"].item() == method.tau_adv.item() and "method.tau_nat" in model
    assert (method.tau_adv.item(), method.tau_nat.item()) != (1.0, 1.0)  # the temperatures moved
    _, optimizer = ckpt.read_part(checkpoints[-1], "optimizer")
    teacher_group = optimizer["param_groups"][-1]
    assert (teacher_group["name"], teacher_group["momentum"], teacher_group["weight_decay"]) == \
        ("teacher:adv", 0.1, 2e-4)


def test_during_the_warmup_the_adv_teacher_does_not_move(tmp_path):
    adv0 = TinyTeacher(seed=1).state_dict()
    _, adv, _, _ = _fit(tmp_path / "run", warmup=1.0, trainable="all")
    assert all(torch.equal(v, adv0[k]) for k, v in adv.state_dict().items())


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
    cfg = DistillConfig(method="ciard", dataset="synthetic:3").with_overrides({{
        "train.epochs": 2, "train.batch_size": 8, "train.output_dir": output_dir, "train.checkpoint_every": 3,
        "train.log_every": 2, "train.eval_examples": 0, "train.lr": 0.05, "attack.steps": 2,
        "method_args": {{"teacher_warmup_fraction": 0.25, "teacher_lr": 0.05}},
        "teachers": {{"adv": "tiny", "nat": "tiny"}},
    }})
    train = build_dataset(cfg.dataset, "train", n=64)
    adv, nat = TinyTeacher(seed=1), TinyTeacher(seed=2)
    for t in (adv, nat):
        t.set_classes(train.prompts.classnames, train.prompts.templates)
    torch.manual_seed(0)
    student = create_student("resnet_tiny", nat, image_size=16, width=8)
    method = create_method("ciard", cfg.method_args, threat=cfg.threat, attack=cfg.attack)
    loss = method.loss

    def slow_loss(batch, student, teachers, state):  # gives the parent time to kill us mid-epoch
        if state.step >= 6:
            time.sleep(delay)
        return loss(batch, student, teachers, state)

    method.loss = slow_loss
    result = Trainer(cfg, student, {{"adv": adv, "nat": nat}}, method, train, None).fit(resume=(mode == "resume"))
    state = {{f"student.{{k}}": v for k, v in result.student.state_dict().items()}}
    state.update({{f"adv.{{k}}": v for k, v in adv.state_dict().items()}})
    state.update({{f"method.{{k}}": v for k, v in method.state_dict().items()}})
    save_file({{k: v.contiguous() for k, v in state.items()}}, output_dir + "/final.safetensors")
    """
)


def _run(script: Path, output_dir: Path, mode: str, delay: float = 0.0) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(script), str(output_dir), mode, str(delay)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]


def test_sigkill_mid_run_then_resume_reproduces_student_teacher_and_temperatures(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(JOB.format(tests=str(TESTS)), encoding="utf-8")
    reference = tmp_path / "reference"
    _finish(_run(script, reference, "fresh"))

    interrupted = tmp_path / "interrupted"
    proc = _run(script, interrupted, "fresh", delay=0.5)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # the step-6 checkpoint: after the adv teacher's warm-up (4 of 16 steps)
        found = latest_checkpoint(interrupted)
        if found is not None and read_trainer_state(found)["step"] >= 6:
            break
        if proc.poll() is not None:
            pytest.fail(f"the job ended before it could be killed: {proc.stderr.read()[-2000:]}")
        time.sleep(0.02)
    else:
        proc.kill()
        pytest.fail("no mid-run checkpoint appeared")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert read_trainer_state(latest_checkpoint(interrupted))["step"] == 6
    _finish(_run(script, interrupted, "resume"))

    expected = load_file(str(reference / "final.safetensors"))
    resumed = load_file(str(interrupted / "final.safetensors"))
    assert expected.keys() == resumed.keys() and any(k.startswith("adv.") for k in expected)
    mismatched = [k for k in expected if not torch.equal(expected[k], resumed[k])]
    assert not mismatched, f"differ after resume: {mismatched[:5]}"
    assert not torch.equal(expected["method.tau_adv"], torch.tensor(1.0))
