"""The Method contract for every registered method, plus the baselines' formulas, reductions and BN modes.

The contract tests are parametrised over ``list_methods()``, so a method is covered the moment it registers.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robust_student.config import AttackConfig
from robust_student.methods import Method, TrainState, create_method, list_methods
from robust_student.methods.adaad import teacher_student_kl
from robust_student.methods.base import cached_logits_key
from robust_student.training.checkpoint import read_part, write_part

STEPS = 6  # enough PGD iterates for every method's defaults (DGHFA aligns 6 of them)
BASELINES = ["kd", "pgd-at", "trades", "ard", "rslad", "adaad"]


# Method arguments for the contract tests with the tiny conv teacher and resnet_tiny student: FARE and TeCoA start
# from an open_clip teacher's own tower by default (tests/test_fare_tecoa.py covers that), which the tiny pair lacks.
CONTRACT_ARGS = {"fare": {"init_from_teacher": False}, "tecoa": {"init_from_teacher": False}}


def make(name: str, student, teacher=None, **attack) -> Method:
    """The method as the trainer builds it; with ``teacher``, also ``setup`` (every role gets that teacher)."""
    attack_cfg = AttackConfig(**{"steps": STEPS, **attack})
    method = create_method(name, CONTRACT_ARGS.get(name), attack=attack_cfg, num_classes=student.num_classes,
                           embed_dim=student.embed_dim)
    if teacher is not None:
        method.setup(student, teachers_for(method, teacher))
    return method


def teachers_for(method: Method, teacher) -> dict[str, nn.Module]:
    return {role: teacher for role in method.teacher_roles}


def test_the_baselines_are_registered():
    assert set(BASELINES) <= set(list_methods())


# -- the contract, for every registered method ------------------------------------------------------------

@pytest.mark.parametrize("name", list_methods())
def test_loss_is_a_finite_scalar_with_detached_terms(name, tiny_student, tiny_teacher, batch):
    torch.manual_seed(0)
    method = make(name, tiny_student, tiny_teacher)
    out = method.loss(batch, tiny_student.train(), teachers_for(method, tiny_teacher), TrainState(total_steps=10))
    loss = out["loss"]
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.requires_grad
    for key, value in out.items():
        if key != "loss":
            assert value.ndim == 0 and not value.requires_grad and torch.isfinite(value), key


@pytest.mark.parametrize("name", list_methods())
def test_gradients_reach_every_trainable_student_parameter(name, tiny_student, tiny_teacher, batch):
    torch.manual_seed(0)
    method = make(name, tiny_student, tiny_teacher)
    method.loss(batch, tiny_student.train(), teachers_for(method, tiny_teacher), TrainState())["loss"].backward()
    params = {n: p for n, p in tiny_student.named_parameters() if p.requires_grad}
    missing = [n for n, p in params.items() if p.grad is None]
    assert not missing, f"no gradient reached {missing}"
    assert all(torch.isfinite(p.grad).all() for p in params.values())
    assert sum(p.grad.abs().sum() for p in params.values()) > 0


@pytest.mark.parametrize("name", list_methods())
def test_frozen_teachers_get_no_gradient_and_stay_in_eval_mode(name, tiny_student, tiny_teacher, batch):
    torch.manual_seed(0)
    method = make(name, tiny_student, tiny_teacher)
    image = batch["image"].clone()
    before = {k: v.clone() for k, v in tiny_teacher.state_dict().items()}
    method.loss(batch, tiny_student.train(), teachers_for(method, tiny_teacher), TrainState())["loss"].backward()
    assert all(p.grad is None and not p.requires_grad for p in tiny_teacher.parameters())
    assert not any(m.training for m in tiny_teacher.modules())
    assert all(torch.equal(before[k], v) for k, v in tiny_teacher.state_dict().items())
    # the method hands the student back in train mode and never edits the batch
    assert all(m.training for m in tiny_student.modules())
    assert torch.equal(batch["image"], image)


@pytest.mark.parametrize("name", list_methods())
def test_method_state_round_trips_through_a_checkpoint(name, tiny_student, tiny_teacher, batch, tmp_path):
    torch.manual_seed(0)
    method = make(name, tiny_student, tiny_teacher)
    teachers = teachers_for(method, tiny_teacher)
    state = TrainState(step=0, epoch=0, total_steps=4, total_epochs=2)
    for _ in range(2):  # let adaptive methods move their buffers away from the initial values
        out = method.loss(batch, tiny_student.train(), teachers, state)
        method.on_step_end({k: v.detach() for k, v in out.items()}, state)
    method.on_epoch_end(state)

    write_part(tmp_path, "method", method.state_dict())
    restored = make(name, tiny_student, tiny_teacher)
    restored.load_state_dict(read_part(tmp_path, "method")[0], strict=True)
    saved = method.state_dict()
    assert saved.keys() == restored.state_dict().keys()
    assert all(torch.equal(saved[k], v) for k, v in restored.state_dict().items())

    # same state + same RNG -> same loss
    torch.manual_seed(1)
    a = method.loss(batch, tiny_student.eval(), teachers, state)["loss"]
    torch.manual_seed(1)
    b = restored.loss(batch, tiny_student.eval(), teachers, state)["loss"]
    assert torch.equal(a, b)


# -- the baselines' outer losses, against torch's own KL and CE (reductions matter) -------------------------

def _kl_batchmean(target_logits, pred_logits, t=1.0):
    """KL(softmax(target/t) || softmax(pred/t)), summed over classes and averaged over the batch."""
    return F.kl_div(F.log_softmax(pred_logits / t, 1), F.softmax(target_logits / t, 1), reduction="batchmean")


@pytest.mark.parametrize("name", BASELINES)
def test_outer_loss_matches_the_formula(name, tiny_student, tiny_teacher, batch, monkeypatch):
    x, y = batch["image"], batch["label"]
    x_adv = (x + 0.03 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))).clamp(0, 1)
    monkeypatch.setattr(Method, "attack", lambda self, objective, x, student, **kw: x_adv)  # a fixed x'
    method = make(name, tiny_student)
    student, teacher = tiny_student.train(), tiny_teacher
    got = method.loss(batch, student, teachers_for(method, teacher), TrainState())["loss"]
    with torch.no_grad():
        s, s_adv, t, t_adv = student(x), student(x_adv), teacher(x), teacher(x_adv)
        expected = {
            "kd": _kl_batchmean(t, s),
            "pgd-at": F.cross_entropy(s_adv, y),
            "trades": F.cross_entropy(s, y) + 6.0 * _kl_batchmean(s, s_adv),
            "ard": 30.0**2 * _kl_batchmean(t, s_adv, t=30.0),
            "rslad": 5 / 6 * _kl_batchmean(t, s_adv) + 1 / 6 * _kl_batchmean(t, s),
            "adaad": _kl_batchmean(t_adv, s_adv),
        }[name]
    torch.testing.assert_close(got.detach(), expected, rtol=1e-4, atol=1e-6)  # ARD: t=30 KLs are tiny x 900


@pytest.mark.parametrize("name, reduction_factor", [("rslad", "sum"), ("kd", "sum"), ("trades", "sum")])
def test_sum_reduction_is_batch_size_times_batchmean(name, reduction_factor, tiny_student, tiny_teacher, batch,
                                                     monkeypatch):
    monkeypatch.setattr(Method, "attack", lambda self, objective, x, student, **kw: x)
    kwargs = dict(attack=AttackConfig(steps=1), num_classes=3, embed_dim=tiny_student.embed_dim)
    mean_method = create_method(name, {"reduction": "batchmean"}, **kwargs)
    sum_method = create_method(name, {"reduction": reduction_factor}, **kwargs)
    teachers = teachers_for(mean_method, tiny_teacher)
    student = tiny_student.eval()
    key = {"rslad": "kl_nat", "kd": "kl", "trades": "kl_robust"}[name]
    a = mean_method.loss(batch, student, teachers, TrainState())[key]
    b = sum_method.loss(batch, student, teachers, TrainState())[key]
    torch.testing.assert_close(b, a * batch["image"].shape[0])


def test_unknown_reduction_is_rejected():
    with pytest.raises(ValueError, match="reduction"):
        create_method("rslad", {"reduction": "mean"})


# -- batch-norm mode during the attack ---------------------------------------------------------------------

@pytest.mark.parametrize("name, train_forwards", [
    ("kd", 1), ("pgd-at", 1), ("trades", 2), ("rslad", 2), ("adaad", 1),
    ("ard", STEPS + 1),  # ARD attacks with the student in train mode: every PGD step updates BN statistics
])
def test_student_bn_mode_during_the_attack(name, train_forwards, tiny_student, tiny_teacher, batch):
    calls = {"train": 0, "eval": 0}
    bn = tiny_student.backbone.bn1
    bn.register_forward_hook(lambda m, i, o: calls.__setitem__("train" if m.training else "eval",
                                                               calls["train" if m.training else "eval"] + 1))
    method = make(name, tiny_student)
    method.loss(batch, tiny_student.train(), teachers_for(method, tiny_teacher), TrainState())
    assert calls["train"] == train_forwards
    attack_forwards = 0 if name == "kd" else STEPS
    assert calls["eval"] == (0 if name in ("kd", "ard") else attack_forwards + (name == "trades"))


@pytest.mark.parametrize("name, mode, outer_forwards", [("ard", "eval", 1), ("rslad", "train", STEPS + 2),
                                                       ("pgd-at", "train", STEPS + 1)])
def test_the_student_mode_during_the_attack_is_one_option(name, mode, outer_forwards, tiny_student, tiny_teacher,
                                                          batch):
    bn = tiny_student.backbone.bn1
    before = bn.num_batches_tracked.clone()
    method = create_method(name, attack=AttackConfig(steps=STEPS, student_mode=mode))
    assert method.student_mode == mode
    method.loss(batch, tiny_student.train(), teachers_for(method, tiny_teacher), TrainState())
    assert bn.num_batches_tracked - before == outer_forwards  # train-mode forwards update the running stats


# -- method-specific behaviour ------------------------------------------------------------------------------

def test_adaad_inner_objective_differentiates_through_the_teacher(tiny_teacher, batch):
    constant_student = lambda x: torch.zeros(x.shape[0], 3)  # noqa: E731 - no path from x through the student
    x = batch["image"].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(teacher_student_kl(tiny_teacher, constant_student)(x).sum(), x)
    assert grad.abs().sum() > 0


def test_paper_defaults():
    assert create_method("ard").config.temperature == 30 and create_method("ard").config.alpha == 1
    assert create_method("ard").student_mode == "train" and create_method("rslad").student_mode == "eval"
    assert create_method("trades").config.beta == 6
    assert create_method("rslad").config.adv_weight == pytest.approx(5 / 6)
    assert create_method("adaad").config.alpha == 1
    assert create_method("pgd-at").teacher_roles == () and create_method("trades").teacher_roles == ()


@pytest.mark.parametrize("name", ["kd", "ard", "rslad"])
def test_cached_teacher_logits_replace_the_teacher_call(name, tiny_student, tiny_teacher, batch):
    class Exploding(nn.Module):
        def forward(self, x):
            raise AssertionError("the teacher must not run when its clean logits are cached")

    cached = tiny_teacher(batch["image"]).detach()
    torch.manual_seed(0)
    reference = make(name, tiny_student).loss(batch, tiny_student.eval(), {"teacher": tiny_teacher}, TrainState())
    torch.manual_seed(0)
    with_cache = {**batch, cached_logits_key("teacher"): cached}
    got = make(name, tiny_student).loss(with_cache, tiny_student.eval(), {"teacher": Exploding()}, TrainState())
    torch.testing.assert_close(got["loss"], reference["loss"])


@pytest.mark.parametrize("name", list_methods())
def test_every_method_declares_the_paper_it_implements(name):
    from robust_student.methods import method_paper

    paper = method_paper(name)
    assert paper is not None and paper.title and paper.authors and paper.year >= 2014
    entry = paper.bibtex("key")
    assert entry.startswith(("@inproceedings{key,", "@misc{key,")) and paper.title in entry
