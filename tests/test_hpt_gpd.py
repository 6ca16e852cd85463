"""HPT-GPD: the frozen anchor built in ``setup``, the HPT loss, GPD's phase switch and the learning-rate schedule it
declares (through the trainer's per-group ``Method.lr_factor`` seam)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from robust_student.config import DistillConfig
from robust_student.data import build_dataset
from robust_student.methods import Method, MethodConfig, TrainState, create_method
from robust_student.methods.hpt_gpd import gpd_lr_factor, warmup_steps
from robust_student.students import create_student
from robust_student.training import Trainer
from robust_student.training.trainer import group_lr_factor

from conftest import TinyTeacher


def test_gpd_schedule_by_hand():
    # 10 steps, 20 % warm-up -> W = 2: linear (step+1)/W, then cosine over the remaining 8 steps
    assert warmup_steps(0.2, 10) == 2
    assert [gpd_lr_factor(s, 10, 0.2) for s in (0, 1, 2)] == [0.5, 1.0, 1.0]
    assert gpd_lr_factor(6, 10, 0.2) == pytest.approx(0.5)                         # 0.5 (1 + cos(pi/2))
    assert gpd_lr_factor(4, 10, 0.2) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert gpd_lr_factor(10, 10, 0.2) == pytest.approx(0.0)


def test_the_phase_switch_swaps_the_weights_of_the_two_terms():
    method = create_method("hpt-gpd", {"warmup_fraction": 0.2, "lambda_anchor": 0.001})
    states = [TrainState(step=s, total_steps=10) for s in range(4)]
    assert [method.phase(s) for s in states] == ["warmup", "warmup", "hpt", "hpt"]
    assert method.term_weights(states[1]) == (0.001, 1.0)  # generalisation-anchored: the anchor dominates
    assert method.term_weights(states[2]) == (1.0, 0.001)  # generalisation-pulled HPT
    code = create_method("hpt-gpd", {"warmup_fraction": 0.2, "warmup_loss": "hpt"})
    assert code.term_weights(states[0]) == code.term_weights(states[3]) == (1.0, 0.001)  # the released code
    assert method.lr_factor("student", states[0], default=0.7) == 0.5 and \
        method.lr_factor("teacher:proxy", states[0], default=0.7) == 0.7


def test_the_anchor_is_a_frozen_copy_of_the_students_initial_weights(tiny_student, tiny_teacher, batch):
    method = create_method("hpt-gpd")
    with pytest.raises(RuntimeError, match="setup"):
        method.loss(batch, tiny_student, {"target": tiny_teacher, "proxy": tiny_teacher}, TrainState())
    initial = {k: v.clone() for k, v in tiny_student.state_dict().items()}
    method.setup(tiny_student, {"target": tiny_teacher, "proxy": tiny_teacher})
    assert method.anchor is not tiny_student and not any(p.requires_grad for p in method.anchor.parameters())
    with torch.no_grad():
        for p in tiny_student.parameters():
            p.add_(1.0)  # training moves the student ...
    assert all(torch.equal(method.anchor.state_dict()[k], v) for k, v in initial.items())  # ... not the anchor
    method.train()
    assert not any(m.training for m in method.anchor.modules())
    assert set(method.state_dict()) == {f"anchor.{k}" for k in initial}


def _kl(target_logits, pred_logits):
    p = F.softmax(target_logits, 1)
    return (p * (p.log() - F.log_softmax(pred_logits, 1))).sum(1).mean()


@pytest.mark.parametrize("step, weights", [(0, (0.001, 1.0)), (5, (1.0, 0.001))])
def test_the_loss_is_the_proxy_term_plus_the_anchor_term(step, weights, tiny_student, tiny_teacher, batch,
                                                        monkeypatch):
    x = batch["image"]
    x_adv = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(4))).clamp(0, 1)
    monkeypatch.setattr(Method, "attack", lambda self, objective, x, student, **kw: x_adv)
    proxy = TinyTeacher(seed=7)
    proxy.set_classes(tiny_teacher.classnames, ["a photo of a {}."])
    method = create_method("hpt-gpd", {"warmup_fraction": 0.2})
    student = tiny_student.eval()
    method.setup(student, {"target": tiny_teacher, "proxy": proxy})
    with torch.no_grad():
        for p in student.parameters():
            p.mul_(1.1)  # the student has moved away from its anchor
    out = method.loss(batch, student, {"target": tiny_teacher, "proxy": proxy}, TrainState(step=step, total_steps=10))
    with torch.no_grad():
        proxy_term = _kl(proxy(x_adv), student(x_adv))           # KL(p_proxy(x') || p_S(x'))
        anchor_term = _kl(method.anchor(x), student(x_adv))      # KL(p_anchor(x) || p_S(x'))
    torch.testing.assert_close(out["kl_proxy"], proxy_term, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out["kl_anchor"], anchor_term, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out["loss"].detach(), weights[0] * proxy_term + weights[1] * anchor_term,
                               rtol=1e-5, atol=1e-7)
    assert out["warmup"].item() == (step == 0)


def _fit(tmp_path, method, **train):
    train_set, val_set = build_dataset("synthetic:3", "train", n=32), build_dataset("synthetic:3", "val", n=8)
    teacher = TinyTeacher()
    teacher.set_classes(train_set.prompts.classnames, train_set.prompts.templates)
    torch.manual_seed(0)
    student = create_student("resnet_tiny", teacher, image_size=16, width=8)
    overrides = {"train.epochs": 2, "train.batch_size": 8, "train.output_dir": str(tmp_path), "train.log_every": 1,
                 "train.eval_examples": 0, "train.lr": 0.05, "train.scheduler": "step", "train.milestones": [1],
                 "attack.steps": 1, **{f"train.{k}": v for k, v in train.items()}}
    config = DistillConfig(method=method.name or "kd", dataset="synthetic:3").with_overrides(overrides)
    teachers = {role: teacher for role in method.teacher_roles}
    Trainer(config, student, teachers, method, train_set, val_set).fit()
    return [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]


def test_the_trainer_follows_the_schedule_the_method_declares(tmp_path):
    method = create_method("hpt-gpd", {"warmup_fraction": 0.25})
    records = [r for r in _fit(tmp_path / "run", method) if r["kind"] == "train"]
    assert [r["step"] for r in records] == list(range(1, 9))
    # the lr logged after step k is the one of the next step: 0.05 * gpd(k); train.scheduler (step) is replaced
    assert [r["lr"] for r in records] == pytest.approx([0.05 * gpd_lr_factor(k, 8, 0.25) for k in range(1, 9)])
    assert [r["warmup"] for r in records] == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]


class Halves(Method):
    """A toy method whose lr factor halves the run's schedule for the student group only."""

    name = "halves"
    Config = MethodConfig

    def lr_factor(self, group, state, default):
        self.groups = getattr(self, "groups", set()) | {group}
        return default / 2 if group == "student" else default

    def loss(self, batch, student, teachers, state):
        loss = F.cross_entropy(student(batch["image"]), batch["label"])
        return {"loss": loss}


def test_group_lr_factor_defaults_to_the_runs_schedule_and_refuses_nonsense(tmp_path):
    method = Halves()
    records = [r for r in _fit(tmp_path / "run", method) if r["kind"] == "train"]
    # step schedule, gamma 0.1 at epoch 1 (4 steps per epoch), halved by the method
    assert [r["lr"] for r in records] == pytest.approx([0.025] * 3 + [0.0025] * 5)
    assert method.groups == {"student"}
    cfg = DistillConfig().train

    class Negative(Halves):
        def lr_factor(self, group, state, default):
            return -1.0

    with pytest.raises(ValueError, match="lr factor"):
        group_lr_factor(0, group="student", method=Negative(), cfg=cfg, steps_per_epoch=4)
