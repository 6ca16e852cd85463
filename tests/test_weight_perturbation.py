"""Adversarial weight perturbation (AWP): the perturbation's size and direction, exact restore, and that PGD-AT's
``awp_gamma`` trains on the gradient at the perturbed weights while the trainer only ever keeps unperturbed ones."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from robust_student.attacks import objectives
from robust_student.config import AttackConfig, ConfigError, DistillConfig
from robust_student.data import build_dataset
from robust_student.methods import TrainState, create_method
from robust_student.students import create_student
from robust_student.training import Trainer
from robust_student.weight_perturbation import WeightPerturbation

GAMMA = 5e-3


@pytest.fixture
def student(tiny_student):
    """The tiny student with every norm scale non-zero (timm zero-initialises the last one of each residual block,
    which leaves the block's convolutions without a gradient, hence unperturbed, at the start)."""
    with torch.no_grad():
        for module in tiny_student.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
    return tiny_student


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_each_weight_moves_by_gamma_of_its_norm_and_restore_is_exact(student, batch):
    student.train()
    before = _snapshot(student)
    awp = WeightPerturbation(student, GAMMA)
    awp.apply(lambda: F.cross_entropy(student(batch["image"]), batch["label"]))
    after = student.state_dict()
    names = {n for n, p in student.named_parameters() if p.dim() > 1}
    assert names, "the student has conv / linear weights to perturb"
    for key, value in after.items():
        if key in names:
            ratio = (value - before[key]).norm() / before[key].norm()
            assert ratio == pytest.approx(GAMMA, rel=1e-3), key
        else:  # biases, norm parameters and the BatchNorm running statistics are left alone
            assert torch.equal(value, before[key]), key
    awp.restore()
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())


def test_the_perturbation_ascends_the_loss(student, batch):
    student.eval()
    def loss():
        return F.cross_entropy(student(batch["image"]), batch["label"])
    with torch.no_grad():
        at_w = loss()
    awp = WeightPerturbation(student, 1e-3)
    awp.apply(loss)
    with torch.no_grad():
        at_w_plus_v = loss()
    awp.restore()
    assert at_w_plus_v > at_w


def test_apply_twice_without_restore_is_refused(tiny_student, batch):
    awp = WeightPerturbation(tiny_student, GAMMA)
    loss = lambda: F.cross_entropy(tiny_student(batch["image"]), batch["label"])  # noqa: E731
    awp.apply(loss)
    with pytest.raises(RuntimeError, match="restore"):
        awp.apply(loss)


def test_pgd_at_with_awp_takes_the_gradient_at_the_perturbed_weights(student, batch):
    attack = AttackConfig(steps=3, random_start="none")  # deterministic, so both paths attack the same way
    twin = copy.deepcopy(student)
    method = create_method("pgd-at", {"awp_gamma": GAMMA}, attack=attack)
    before = _snapshot(student)
    out = method.loss(batch, student.train(), {}, TrainState())
    out["loss"].backward()
    method.after_backward()
    # the weights are back, exactly; the gradient is the one taken at w + v
    assert all(torch.equal(before[k], p) for k, p in student.named_parameters())

    plain = create_method("pgd-at", attack=attack)
    x_adv = plain.attack(objectives.ce(twin, batch["label"]), batch["image"], twin)
    twin.train()
    awp = WeightPerturbation(twin, GAMMA)
    awp.apply(lambda: F.cross_entropy(twin(x_adv), batch["label"]))
    expected = torch.autograd.grad(F.cross_entropy(twin(x_adv), batch["label"]), list(twin.parameters()))
    awp.restore()
    unperturbed = torch.autograd.grad(F.cross_entropy(twin(x_adv), batch["label"]), list(twin.parameters()))
    for param, want in zip(student.parameters(), expected):
        assert torch.allclose(param.grad, want, atol=1e-6)
    assert any(not torch.allclose(want, without, atol=1e-6) for want, without in zip(expected, unperturbed))


def test_the_trainer_steps_from_the_unperturbed_weights(tmp_path, tiny_teacher):
    # A vanishing learning rate: whatever the trainer keeps after its steps must be the initial weights, not
    # weights still carrying a perturbation of gamma * ||w|| (5e-3 of each weight's norm).
    cfg = DistillConfig(method="pgd-at", dataset="synthetic:3", method_args={"awp_gamma": GAMMA}).with_overrides(
        {"train.epochs": 1, "train.batch_size": 8, "train.output_dir": str(tmp_path / "run"), "train.lr": 1e-12,
         "train.weight_decay": 0.0, "train.optimizer": "sgd", "train.eval_examples": 8, "attack.steps": 2})
    train, val = build_dataset(cfg.dataset, "train", n=24), build_dataset(cfg.dataset, "val", n=8)
    tiny_teacher.set_classes(train.prompts.classnames, train.prompts.templates)
    torch.manual_seed(0)
    student = create_student("resnet_tiny", tiny_teacher, image_size=16, width=8)
    initial = {n: p.detach().clone() for n, p in student.named_parameters()}
    method = create_method(cfg.method, cfg.method_args, threat=cfg.threat, attack=cfg.attack)
    result = Trainer(cfg, student, {}, method, train, val).fit()
    assert result.steps == 3
    for name, param in result.student.named_parameters():
        assert torch.allclose(param.detach(), initial[name], rtol=0, atol=1e-9), name


@pytest.mark.parametrize("gamma", [-0.1, 1.0])
def test_an_awp_gamma_outside_zero_one_is_refused(gamma):
    with pytest.raises(ConfigError, match="method_args.awp_gamma"):
        create_method("pgd-at", {"awp_gamma": gamma})
