"""DGHFA: each equation against hand-computed values, L_PAG against a per-sample brute force, the double
backward on ResNet and ViT students, the class-weight update, the ablation switches and the recipes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from robust_student.config import AttackConfig, DistillConfig
from robust_student.methods import TrainState, create_method
from robust_student.methods.dghfa import (
    ABLATIONS, DGHFA, DGHFAConfig, dwga_loss, hpfa_steps, hpfa_weights, input_gradient, pag_loss,
    sample_weights, update_class_weights,
)
from robust_student.students import create_student

RECIPES = Path(__file__).resolve().parents[1] / "robust_student" / "recipes"
FAST = AttackConfig(steps=3)  # 3 PGD steps keep the tests quick; HPFA then uses 3 iterates


def make(num_intermediate: int = 3, attack: AttackConfig = FAST, **args) -> DGHFA:
    return create_method("dghfa", {"num_intermediate": num_intermediate, **args}, attack=attack, num_classes=3)


# -- eq. 2, sample weight -------------------------------------------------------------------------------------

def test_sample_weight_is_one_minus_teacher_confidence():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0], [0.0, 50.0]])  # max probs 1/2, 3/4, ~1
    assert torch.allclose(sample_weights(logits), torch.tensor([0.5, 0.25, 0.0]), atol=1e-6)


# -- eq. 3, class weights ---------------------------------------------------------------------------------------

def test_class_weight_update_hand_computed():
    tau = torch.ones(3)
    risk_sum, risk_count = torch.tensor([2.0, 6.0, 4.0]), torch.tensor([2.0, 2.0, 2.0])  # R = 1, 3, 2; R_bar 2
    new = update_class_weights(tau, risk_sum, risk_count, gamma=0.1)
    assert torch.allclose(new, torch.tensor([0.9, 1.1, 1.0]))  # the most vulnerable class (1) gains weight
    printed = update_class_weights(tau, risk_sum, risk_count, gamma=0.1, sign=-1)
    assert torch.allclose(printed, torch.tensor([1.1, 0.9, 1.0]))  # eq. 3 as printed: the opposite


def test_class_weights_stay_non_negative_and_unseen_classes_keep_theirs():
    tau = torch.tensor([0.05, 1.0, 1.0, 0.7])
    new = update_class_weights(tau, torch.tensor([0.0, 5.0, 3.0, 0.0]), torch.tensor([1.0, 1.0, 1.0, 0.0]),
                               gamma=0.1)
    # R = 0, 5, 3 (class 3 unseen); R_bar = 8/3; spread = 8/3 -> class 0 moves by -0.1 and is clamped at 0.
    assert new[0] == 0.0 and new[3] == pytest.approx(0.7)
    assert new[1] == pytest.approx(1.0 + 0.1 * (5 - 8 / 3) / (8 / 3))
    assert (new >= 0).all()
    same = update_class_weights(tau, torch.tensor([2.0, 2.0, 0.0, 0.0]), torch.tensor([1.0, 1.0, 0.0, 0.0]), 0.1)
    assert torch.equal(same, tau)  # equal risks: no change (and no division by zero)


def test_method_accumulates_risk_and_updates_tau_once_per_epoch(tiny_teacher, tiny_student, batch):
    method = make(hpfa=False)
    method.loss(batch, tiny_student, {"teacher": tiny_teacher}, TrainState())
    assert torch.equal(method.risk_count, torch.bincount(batch["label"], minlength=3).float())
    assert (method.risk_sum > 0).all()
    method.eval()  # evaluation-time calls do not count towards the epoch's risk
    method.loss(batch, tiny_student, {"teacher": tiny_teacher}, TrainState())
    assert torch.equal(method.risk_count, torch.tensor([2.0, 2.0, 2.0]))

    method.risk_sum.copy_(torch.tensor([1.0, 9.0, 2.0]))  # class 1 is the most vulnerable
    method.risk_count.fill_(1.0)
    method.on_epoch_end(TrainState(epoch=0))
    assert method.tau.argmax() == 1 and method.tau[1] > 1.0 and (method.tau >= 0).all()
    assert method.risk_sum.sum() == 0 and method.risk_count.sum() == 0  # reset for the next epoch

    state = method.state_dict()
    assert {"tau", "risk_sum", "risk_count"} <= set(state)
    fresh = make(hpfa=False)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.tau, method.tau)


def test_risk_sums_are_all_reduced_when_distributed(tiny_teacher, tiny_student, batch, tmp_path):
    """With torch.distributed initialised (a one-process gloo group here) the per-batch sums go through
    all_reduce before they are added; the totals stay those of the batch."""
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        method = make(hpfa=False)
        calls = []
        original = dist.all_reduce
        dist.all_reduce = lambda tensor, *a, **k: calls.append(tensor.clone()) or original(tensor, *a, **k)
        try:
            method.loss(batch, tiny_student, {"teacher": tiny_teacher}, TrainState())
        finally:
            dist.all_reduce = original
    finally:
        dist.destroy_process_group()
    assert len(calls) == 1 and calls[0].shape == (2, 3)
    assert torch.equal(method.risk_count, torch.tensor([2.0, 2.0, 2.0]))
    assert torch.allclose(method.risk_sum, calls[0][0])


# -- eq. 6, HPFA weights and iterates ----------------------------------------------------------------------------

def test_hpfa_weights_uniform_at_start_and_sharp_at_the_end():
    assert torch.allclose(hpfa_weights(6, epoch=0, total_epochs=50, beta=2.0), torch.full((6,), 1 / 6))
    end = hpfa_weights(3, epoch=50, total_epochs=50, beta=2.0)  # exp(2s) / sum_s' exp(2s')
    assert torch.allclose(end, torch.tensor([0.0158762, 0.1173104, 0.8668133]), atol=1e-6)
    mid = hpfa_weights(6, epoch=10, total_epochs=50, beta=2.0)
    assert torch.all(mid[1:] > mid[:-1]) and mid.sum() == pytest.approx(1.0)


def test_hpfa_steps_are_evenly_spaced_and_end_at_the_final_iterate():
    assert hpfa_steps(10, 6) == [2, 3, 5, 7, 8, 10]
    assert hpfa_steps(10, 10) == list(range(1, 11))
    assert hpfa_steps(10, 1) == [10]
    assert hpfa_steps(5, 2) == [3, 5]  # halves round up
    with pytest.raises(ValueError, match="num_intermediate"):
        hpfa_steps(3, 6)
    with pytest.raises(ValueError, match="num_intermediate"):
        make(num_intermediate=6)  # 6 iterates from a 3-step PGD: refused at construction


def test_hpfa_term_aligns_clean_and_each_iterate_with_epoch_weights(tiny_teacher, tiny_student, batch):
    """Eq. 5 wiring: the method's L_HPFA equals sum_s w_{s,t} mean ||E(x) - E(x'_s)||^2 on the PGD iterates."""
    method = make(gradient_alignment="none")
    x = batch["image"]
    iterates = [(x + 0.02 * s * torch.randn_like(x)).clamp(0, 1) for s in (1, 2, 3)]
    seen = {}

    def fake_attack(objective, images, student, **kwargs):
        seen.update(kwargs, student=student)
        for step, iterate in enumerate(iterates, start=1):
            kwargs["on_step"](step, iterate)
        return iterates[-1]

    method.attack = fake_attack
    tiny_student.eval()  # per-sample embeddings, so the reference below needs no batch-norm bookkeeping
    state = TrainState(epoch=2, total_epochs=4)
    out = method.loss(batch, tiny_student, {"teacher": tiny_teacher}, state)
    assert seen["student"] is tiny_student and method.attack_modules(tiny_student) == (tiny_student,)
    with torch.no_grad():
        clean = tiny_student.encode_image(x)
        distances = torch.stack([(clean - tiny_student.encode_image(xs)).pow(2).sum(1).mean() for xs in iterates])
    expected = (hpfa_weights(3, 2, 4, beta=2.0) * distances).sum()
    assert out["hpfa"].item() == pytest.approx(expected.item(), rel=1e-5)
    ce_adv = F.cross_entropy(tiny_student(iterates[-1]), batch["label"])
    assert out["ce_adv"].item() == pytest.approx(ce_adv.item(), rel=1e-5)  # CE(S(x')) on the last iterate


# -- eqs. 1 and 4, PAG and DWGA -----------------------------------------------------------------------------------

def test_pag_loss_hand_computed():
    g_s = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    g_t = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    assert torch.allclose(pag_loss(g_s, g_t, normalize=False), torch.tensor([25.0, 5.0]))
    # unit vectors: [0.6, 0.8] vs 0 -> 1; [1, 0] vs [0, 1] -> 2
    assert torch.allclose(pag_loss(g_s, g_t, normalize=True), torch.tensor([1.0, 2.0]))


def test_dwga_loss_hand_computed():
    pag = torch.tensor([1.0, 2.0, 3.0, 4.0])
    alpha = torch.tensor([0.5, 0.0, 0.0, 0.5])
    tau = torch.tensor([1.0, 2.0, 0.0])
    labels = torch.tensor([0, 0, 0, 1])
    # weights alpha + 2 tau_y = 2.5, 2, 2, 4.5; class 0: (2.5 + 4 + 6) / 3; class 1: 18; class 2 absent.
    # Classes count equally whatever their size (a plain sample mean would be 30.5 / 4).
    assert dwga_loss(pag, alpha, tau, labels, phi=2.0).item() == pytest.approx((12.5 / 3 + 18) / 2)


@pytest.mark.parametrize("normalize", [False, True])
def test_pag_matches_a_per_sample_brute_force(tiny_teacher, tiny_student, batch, normalize):
    x, y = batch["image"], batch["label"]
    tiny_student.eval()
    batched = pag_loss(input_gradient(tiny_student, x, y, create_graph=True),
                       input_gradient(tiny_teacher, x, y, create_graph=False), normalize=normalize)
    for i in range(x.shape[0]):
        xi = x[i:i + 1].clone().requires_grad_(True)
        (g_s,) = torch.autograd.grad(F.cross_entropy(tiny_student(xi), y[i:i + 1]), xi)
        xi = x[i:i + 1].clone().requires_grad_(True)
        (g_t,) = torch.autograd.grad(F.cross_entropy(tiny_teacher(xi), y[i:i + 1]), xi)
        if normalize:
            g_s, g_t = g_s / g_s.norm(), g_t / g_t.norm()
        assert batched[i].item() == pytest.approx((g_s - g_t).pow(2).sum().item(), rel=1e-4)


def test_pag_double_backward_matches_finite_differences(tiny_teacher, batch):
    """d L_PAG / d theta through the double backward equals a central difference (float64)."""
    torch.manual_seed(0)
    student = create_student("resnet_tiny", tiny_teacher, image_size=16, width=8).double().eval()
    x, y = batch["image"].double(), batch["label"]
    g_t = input_gradient(tiny_teacher, batch["image"], y, create_graph=False).double()

    def objective() -> torch.Tensor:
        return pag_loss(input_gradient(student, x, y, create_graph=True), g_t, normalize=True).sum()

    param = student.head.weight
    (analytic,) = torch.autograd.grad(objective(), param)
    direction = torch.randn_like(param)
    h = 1e-6
    with torch.no_grad():
        param.add_(h * direction)
        up = objective().item()
        param.sub_(2 * h * direction)
        down = objective().item()
        param.add_(h * direction)
    assert (analytic * direction).sum().item() == pytest.approx((up - down) / (2 * h), rel=1e-4)


@pytest.mark.parametrize("student_name,kwargs", [("resnet_tiny", {"width": 8}), ("vit_tiny", {"depth": 2})])
def test_gradient_alignment_reaches_student_parameters(tiny_teacher, batch, student_name, kwargs):
    """The full loss back-propagates, and L_PAG alone gives the student's parameters a gradient.

    vit_tiny checks the math-kernel double backward: on CPU PyTorch's default SDPA kernel has none.
    """
    torch.manual_seed(0)
    student = create_student(student_name, tiny_teacher, image_size=16, **kwargs)
    method = make()
    out = method.loss(batch, student, {"teacher": tiny_teacher}, TrainState())
    out["loss"].backward()
    trainable = [p for p in student.parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)
    assert all(p.grad is None for p in tiny_teacher.parameters())

    student.zero_grad()
    pag_only = make(gradient_alignment="pag", hpfa=False, ce_clean_weight=0.0, ce_adv_weight=0.0, kl_weight=0.0)
    pag_only.loss(batch, student, {"teacher": tiny_teacher}, TrainState())["loss"].backward()
    grads = [p.grad for p in student.backbone.parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum() for g in grads) > 0


# -- the whole loss -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("step", list(ABLATIONS))
def test_ablation_switches_choose_the_terms(tiny_teacher, tiny_student, batch, step):
    method = create_method("dghfa", {**ABLATIONS[step], "num_intermediate": 3}, attack=FAST, num_classes=3)
    out = method.loss(batch, tiny_student, {"teacher": tiny_teacher}, TrainState(epoch=1, total_epochs=4))
    expected = {"loss", "ce_clean", "ce_adv", "kl"}
    expected |= {"ad": set(), "ad+pag": {"pag", "grad_cos"}, "ad+dwga": {"pag", "grad_cos", "dwga"},
                 "dghfa": {"pag", "grad_cos", "dwga", "hpfa"}}[step]
    assert set(out) == expected
    assert out["loss"].ndim == 0 and out["loss"].requires_grad and torch.isfinite(out["loss"])
    for name, value in out.items():
        if name != "loss":
            assert value.ndim == 0 and not value.requires_grad and torch.isfinite(value), name
    # eq. 9: the total is the logged terms with their weights (lambda1 = lambda2 = 1)
    terms = out["ce_clean"] + out["ce_adv"] + out["kl"]
    terms = terms + {"ad": 0, "ad+pag": out.get("pag", 0), "ad+dwga": out.get("dwga", 0),
                     "dghfa": out.get("dwga", 0) + out.get("hpfa", 0)}[step]
    assert out["loss"].item() == pytest.approx(float(terms), rel=1e-5)


def test_config_validation():
    with pytest.raises(ValueError, match="gradient_alignment"):
        DGHFAConfig(gradient_alignment="grad")
    with pytest.raises(ValueError, match="class_weight_sign"):
        DGHFAConfig(class_weight_sign=0.5)
    with pytest.raises(ValueError, match="Valid keys"):
        create_method("dghfa", {"lambda_1": 1.0})
    assert DGHFAConfig.from_dict(DGHFAConfig().to_dict()) == DGHFAConfig()


# -- recipes ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("recipe", sorted(RECIPES.glob("dghfa_*.yaml")), ids=lambda p: p.name)
def test_recipes_parse_and_build_the_method(recipe):
    config = DistillConfig.from_yaml(recipe)
    assert config.method == "dghfa"
    method = create_method(config.method, config.method_args, threat=config.threat, attack=config.attack,
                           num_classes=2)
    assert isinstance(method, DGHFA) and method.threat_config.eps > 0 and method.attack_config.steps == 10
    if config.teacher != "fmnist-clip":  # the paper's settings
        assert (config.threat.eps, config.train.epochs, config.train.batch_size, config.train.lr) == \
            (pytest.approx(8 / 255), 50, 128, 0.1)
        assert config.dataset.image_size == 224 and config.eval.eps == pytest.approx(8 / 255)


def test_paper_recipes_exist():
    names = {p.name for p in RECIPES.glob("dghfa_*.yaml")}
    assert {"dghfa_conch_crc100k.yaml", "dghfa_cxrclip_rsna.yaml", "dghfa_fmnist.yaml"} <= names
