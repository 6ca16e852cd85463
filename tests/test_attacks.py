"""Property tests of the threat models, the one PGD, the objectives and the named evaluation attacks.

These invariants hold for any correct implementation: adversarial examples stay in the ball and in [0, 1],
PGD increases its objective, FGSM is one PGD step of size eps, attacks never touch parameter gradients and
restore the model's mode, and all of it works for teachers and students.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robust_student.attacks import (L2Ball, LinfBall, eval_mode, fgsm, get_attack, list_attacks, make_threat,
                                    objectives, pgd)
from robust_student.attacks.named import check_in_threat, robust_correct

ATOL = 1e-6


def _size(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.flatten(1)
    return flat.abs().amax(dim=1) if norm == "linf" else flat.norm(dim=1)


def _assert_in_threat(x_adv: torch.Tensor, x: torch.Tensor, threat) -> None:
    assert x_adv.dtype == torch.float32
    assert x_adv.min() >= -ATOL and x_adv.max() <= 1 + ATOL
    assert (_size(x_adv - x, threat.norm) <= threat.eps + ATOL).all()


@pytest.fixture(params=["student", "teacher"])
def model(request, tiny_student, tiny_teacher):
    return tiny_student if request.param == "student" else tiny_teacher


@pytest.fixture
def edge_batch(batch):
    """The shared batch with saturated pixels, so clamping to [0, 1] matters."""
    x = batch["image"].clone()
    x[:, :, :4] = 0.0
    x[:, :, -4:] = 1.0
    return x, batch["label"]


THREATS = [LinfBall(8 / 255), L2Ball(0.5)]


@pytest.mark.parametrize("threat", THREATS, ids=["linf", "l2"])
@pytest.mark.parametrize("random_start", ["uniform", "normal", "none"])
def test_pgd_stays_in_ball_and_image_range(model, edge_batch, threat, random_start):
    x, y = edge_batch
    torch.manual_seed(0)
    x_adv = pgd(objectives.ce(model, y), x, threat, steps=5, step_size=threat.eps / 2, random_start=random_start)
    _assert_in_threat(x_adv, x, threat)
    assert not x_adv.requires_grad


@pytest.mark.parametrize("threat", THREATS, ids=["linf", "l2"])
def test_random_init_and_momentum_stay_in_ball(edge_batch, tiny_student, threat):
    x, y = edge_batch
    torch.manual_seed(0)
    _assert_in_threat(threat.random_init(x, "uniform"), x, threat)
    x_adv = pgd(objectives.ce(tiny_student, y), x, threat, steps=4, step_size=threat.eps, momentum=1.0)
    _assert_in_threat(x_adv, x, threat)


@pytest.mark.parametrize("threat", THREATS, ids=["linf", "l2"])
def test_pgd_increases_its_objective(model, batch, threat):
    x, y = batch["image"], batch["label"]
    objective = objectives.ce(model, y)
    torch.manual_seed(0)
    x_adv = pgd(objective, x, threat, steps=10, step_size=threat.eps / 4, random_start="none")
    with torch.no_grad():
        before, after = objective(x), objective(x_adv)
    assert after.mean() > before.mean() + 1e-4
    assert (after >= before - 1e-5).float().mean() >= 0.8  # nearly every example's loss goes up


def test_cw_and_kl_objectives_are_maximised(tiny_student, batch):
    x, y = batch["image"], batch["label"]
    with torch.no_grad():
        target = F.softmax(tiny_student(x), dim=1)
    for objective in (objectives.cw_margin(tiny_student, y, kappa=50.0), objectives.kl_to(tiny_student, target),
                      objectives.embedding_l2(tiny_student.encode_image, tiny_student.encode_image(x))):
        torch.manual_seed(0)
        x_adv = pgd(objective, x, LinfBall(8 / 255), steps=5, step_size=2 / 255, random_start="normal")
        with torch.no_grad():
            assert objective(x_adv).mean() > objective(x).mean()


def test_fgsm_equals_one_step_pgd(model, batch):
    x, y = batch["image"], batch["label"]
    model.eval()  # named attacks run the model in eval mode
    threat = LinfBall(8 / 255)
    a = fgsm(objectives.ce(model, y), x, threat)
    b = pgd(objectives.ce(model, y), x, threat, steps=1, step_size=threat.eps, random_start=False)
    assert torch.equal(a, b)
    assert torch.allclose((a - x).abs().amax(), torch.tensor(threat.eps), atol=ATOL)  # a full eps step
    named = get_attack("fgsm")(model, x, y, threat)
    assert torch.equal(named, a)


def test_no_parameter_gradients_and_mode_restored(tiny_student, batch):
    x, y = batch["image"], batch["label"]
    tiny_student.train()
    bn_stats = {k: v.clone() for k, v in tiny_student.state_dict().items() if "running" in k}
    pgd(objectives.ce(tiny_student, y), x, LinfBall(), steps=3, eval_modules=[tiny_student])
    assert all(p.grad is None for p in tiny_student.parameters())
    assert all(m.training for m in tiny_student.modules())
    # eval mode during the attack: batch-norm statistics were not updated by adversarial batches
    after = {k: v for k, v in tiny_student.state_dict().items() if "running" in k}
    assert all(torch.equal(bn_stats[k], after[k]) for k in bn_stats)


@pytest.mark.parametrize("name", ["clean", "fgsm", "pgd20", "cw20", "square:20"])
def test_named_attacks_restore_mode_and_leave_no_grads(tiny_student, batch, name):
    x, y = batch["image"], batch["label"]
    tiny_student.train()
    flags = [p.requires_grad for p in tiny_student.parameters()]
    x_adv = get_attack(name)(tiny_student, x, y, LinfBall(8 / 255), seed=0)
    _assert_in_threat(x_adv, x, LinfBall(8 / 255))
    assert all(m.training for m in tiny_student.modules())
    assert all(p.grad is None for p in tiny_student.parameters())
    assert [p.requires_grad for p in tiny_student.parameters()] == flags


def test_eval_mode_restores_mixed_modes(tiny_student):
    tiny_student.train()
    tiny_student.head.eval()
    with eval_mode(tiny_student):
        assert not any(m.training for m in tiny_student.modules())
    assert tiny_student.training and not tiny_student.head.training


def test_pgd_under_autocast(tiny_student, batch):
    x, y = batch["image"], batch["label"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_adv = pgd(objectives.ce(tiny_student, y), x, LinfBall(), steps=2)
    _assert_in_threat(x_adv, x, LinfBall())


def test_on_step_sees_every_iterate_and_the_return_type_never_changes(tiny_student, batch):
    x, y = batch["image"], batch["label"]
    torch.manual_seed(0)
    seen: list[tuple[int, torch.Tensor]] = []
    x_adv = pgd(objectives.ce(tiny_student, y), x, LinfBall(), steps=4, on_step=lambda s, z: seen.append((s, z)))
    assert isinstance(x_adv, torch.Tensor) and [s for s, _ in seen] == [1, 2, 3, 4]
    assert torch.equal(seen[-1][1], x_adv) and not torch.equal(seen[0][1], seen[1][1])
    assert not any(z.requires_grad for _, z in seen)
    for _, z in seen:
        _assert_in_threat(z, x, LinfBall())


def test_pgd_rejects_non_per_sample_objective(tiny_student, batch):
    with pytest.raises(ValueError, match="per-sample"):
        pgd(lambda z: tiny_student(z).sum(), batch["image"], LinfBall(), steps=1)


def test_objective_formulas():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 5.0]])
    y = torch.tensor([0, 1])
    identity = nn.Identity()
    assert torch.allclose(objectives.margin(logits, y), torch.tensor([2.0, -3.0]))
    assert torch.allclose(objectives.cw_margin(identity, y, kappa=2.5)(logits), torch.tensor([-4.5, 0.0]))
    assert torch.allclose(objectives.dlr(identity, y)(logits), torch.tensor([-2.0 / 3.0, 3.0 / 5.0]))
    probs = F.softmax(logits, dim=1)
    assert torch.allclose(objectives.kl_to(identity, probs)(logits), torch.zeros(2), atol=1e-6)
    with pytest.raises(ValueError, match="3 classes"):
        objectives.dlr(identity, y)(logits[:, :2])


def test_registry_names_settings_and_errors():
    assert {"clean", "fgsm", "pgd20", "cw20", "apgd-ce", "autoattack", "square", "pgd"} <= set(list_attacks())
    assert get_attack("pgd:7").steps == 7 and get_attack("pgd:7").settings(LinfBall(0.1), 10)["steps"] == 7
    with pytest.raises(ValueError, match="positive integer number of steps"):
        get_attack("pgd:0")
    with pytest.raises(ValueError, match="Valid attack names"):
        get_attack("pgd200")
    with pytest.raises(ValueError, match="positive integer"):
        get_attack("square:many")
    pgd20 = get_attack("pgd20")
    assert pgd20.settings(LinfBall(8 / 255), 10)["step_size"] == "2/255"
    assert pgd20.settings(LinfBall(4 / 255), 10)["step_size"] == "1/255"
    cw = get_attack("cw20").settings(LinfBall(8 / 255), 10)
    assert cw["kappa"] == 50.0 and cw["steps"] == 20 and cw["objective"] == "cw_margin"
    assert get_attack("square:300").settings(LinfBall(), 10)["n_queries"] == 300
    assert make_threat("L2", 0.5) == L2Ball(0.5)


def test_named_attack_is_seeded_and_keeps_global_rng(tiny_student, batch):
    x, y = batch["image"], batch["label"]
    attack = get_attack("pgd20")
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = attack(tiny_student, x, y, LinfBall(), seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, attack(tiny_student, x, y, LinfBall(), seed=7))
    assert not torch.equal(a, attack(tiny_student, x, y, LinfBall(), seed=8))


def test_robust_correct_attacks_only_the_given_examples(tiny_student, batch):
    x, y = batch["image"], batch["label"]
    seen = []

    class Recorder(type(get_attack("clean"))):
        def _run(self, model, xb, yb, threat, seed):
            seen.append(xb.shape[0])
            return xb.clone()

    mask = torch.tensor([True, False, True, False, False, True])
    flags = robust_correct(Recorder(), tiny_student, x, y, LinfBall(), batch_size=2, attack_only=mask)
    assert seen == [2, 1] and not flags[~mask].any()


def test_check_in_threat_rejects_escaped_examples(batch):
    x = batch["image"]
    with pytest.raises(RuntimeError, match="left the threat model"):
        check_in_threat((x + 0.1).clamp(0, 1), x, LinfBall(8 / 255))
    with pytest.raises(RuntimeError, match="left the threat model"):
        check_in_threat(x + 1.5, x, L2Ball(1e6))
