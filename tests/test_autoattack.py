"""AutoAttack and Square through pyautoattack: class-count plans, runs with 2, 3 and 10 classes, any-callable Square.

Tiny linear models and a handful of examples; Square budgets are reduced so each test takes seconds.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("pyautoattack")

from robust_student.attacks import (L2Ball, LinfBall, autoattack_plan, get_attack, run_autoattack,  # noqa: E402
                                    square_attack)
from robust_student.attacks.autoattack import QueryFunction  # noqa: E402
from robust_student.attacks.named import predict_labels  # noqa: E402


def tiny_classifier(num_classes: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, num_classes))


def labelled_inputs(model: nn.Module, n: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images labelled by the model itself, so every example starts correctly classified."""
    x = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return x, model(x).argmax(dim=1)


def distance_to_boundary(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str = "linf") -> torch.Tensor:
    """Exact L-inf (or L2) distance to the decision boundary of a linear model, ignoring the [0, 1] box.

    A point farther than eps is provably robust (the box only makes attacks harder).
    """
    weight = model[1].weight.detach()
    with torch.no_grad():
        logits = model(x)
    margins = logits.gather(1, y[:, None]) - logits                      # [N, C]
    dual = 1 if norm == "linf" else 2                                     # the dual norm of the ball
    norms = (weight[y][:, None, :] - weight[None]).norm(p=dual, dim=-1)  # ||w_y - w_j||_dual, [N, C]
    dist = margins / norms.clamp_min(1e-12)
    return dist.masked_fill(torch.nn.functional.one_hot(y, logits.shape[1]).bool(), float("inf")).amin(1)


def test_plan_depends_on_class_count():
    assert autoattack_plan(10).version == "standard" and autoattack_plan(10).n_target_classes == 9
    assert autoattack_plan(1000).attacks == ("apgd-ce", "apgd-t", "fab-t", "square")
    assert autoattack_plan(5).version == "standard" and autoattack_plan(5).n_target_classes == 4
    assert autoattack_plan(3).attacks == ("apgd-ce", "apgd-dlr", "fab-t", "square")
    assert autoattack_plan(2).attacks == ("apgd-ce", "fab-t", "square") and autoattack_plan(2).n_target_classes == 1
    assert "reduced to 100" in autoattack_plan(10, square_queries=100).note
    with pytest.raises(ValueError, match="at least 2 classes"):
        autoattack_plan(1)


@pytest.mark.parametrize("num_classes", [2, 3, 10])
def test_autoattack_runs_for_few_and_many_classes(num_classes):
    model = tiny_classifier(num_classes)
    x, y = labelled_inputs(model.eval())
    dist = distance_to_boundary(model, x, y)
    threat = LinfBall(dist.median().item())  # about half the points can be broken, the rest go through every attack
    model.train()
    x_adv, info = run_autoattack(model, x, y, threat, seed=0, batch_size=8, square_queries=50)
    assert (x_adv - x).abs().max() <= threat.eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert list(info["attacks"]) == list(autoattack_plan(num_classes).attacks)
    assert info["square_queries"] == 50 and info["package"].startswith("pyautoattack")
    assert not any("not possible" in w or "target classes" in w for w in info["warnings"])
    robust = predict_labels(model, x_adv) == y
    assert robust[dist > threat.eps * 1.001].all()       # sound: provably robust points stay correct
    assert not robust[dist < threat.eps / 2].any()       # effective: clearly breakable points are broken
    pgd_robust = predict_labels(model, get_attack("pgd20")(model, x, y, threat)) == y
    assert robust.float().mean() <= pgd_robust.float().mean() + 1 / len(y)
    assert model.training and all(p.grad is None for p in model.parameters())  # FAB's backward left nothing
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("ball", [LinfBall, L2Ball], ids=["linf", "l2"])
def test_apgd_ce_is_sound_effective_seeded_and_records_its_settings(ball):
    model = tiny_classifier(4)
    x, y = labelled_inputs(model.eval(), n=8)
    dist = distance_to_boundary(model, x, y, ball.norm)
    threat = ball(dist.median().item())
    model.train()
    attack = get_attack("apgd-ce")
    torch.manual_seed(5)
    state = torch.get_rng_state()
    x_adv = attack(model, x, y, threat, seed=0)
    assert torch.equal(torch.get_rng_state(), state) and torch.equal(x_adv, attack(model, x, y, threat, seed=0))
    size = (x_adv - x).flatten(1)
    size = size.abs().amax(1) if threat.norm == "linf" else size.norm(dim=1)
    assert (size <= threat.eps + 1e-6).all() and x_adv.min() >= 0 and x_adv.max() <= 1
    robust = predict_labels(model, x_adv) == y
    assert robust[dist > threat.eps * 1.001].all() and not robust[dist < threat.eps / 2].any()
    assert model.training and all(p.grad is None and p.requires_grad for p in model.parameters())
    settings = attack.settings(threat, 4)
    assert settings["n_iter"] == 100 and settings["restarts"] == 1 and settings["loss"] == "ce"
    assert settings["package"].startswith("pyautoattack") and attack.kind == "white-box"


def test_named_autoattack_records_its_settings():
    model = tiny_classifier(5).eval()
    x, y = labelled_inputs(model, n=4)
    aa = get_attack("autoattack", square_queries=50)
    x_adv = aa(model, x, y, LinfBall(0.5), seed=0)  # everything breaks at once: APGD-CE alone runs
    assert (predict_labels(model, x_adv) != y).all()
    settings = aa.settings(LinfBall(0.5), 5)
    assert settings["version"] == "standard" and settings["n_target_classes"] == 4
    assert settings["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"] and settings["square_queries"] == 50


@pytest.mark.parametrize("ball", [LinfBall, L2Ball], ids=["linf", "l2"])
def test_square_on_module_numpy_and_onnx_style_callables_agree(ball):
    model = tiny_classifier(3).eval()
    x, y = labelled_inputs(model, n=4)
    threat = ball(4 * distance_to_boundary(model, x, y, ball.norm).max().item())  # every point is breakable

    def numpy_fn(a: np.ndarray) -> np.ndarray:  # what an onnxruntime wrapper looks like
        assert isinstance(a, np.ndarray) and a.dtype == np.float32
        with torch.no_grad():
            return model(torch.from_numpy(a)).numpy()

    def session_run(a: np.ndarray) -> list[np.ndarray]:  # session.run(None, {...}) returns a list of outputs
        return [numpy_fn(a)]

    results = [square_attack(fn, x, y, threat, n_queries=100, seed=0) for fn in (model, numpy_fn, session_run)]
    for x_adv in results:
        size = (x_adv - x).flatten(1)
        size = size.abs().amax(1) if threat.norm == "linf" else size.norm(dim=1)
        assert (size <= threat.eps + 1e-6).all() and x_adv.min() >= 0 and x_adv.max() <= 1
        assert torch.equal(x_adv, results[0])  # same seed, same queries -> same result whatever the callable
    assert (predict_labels(model, results[0]) == y).float().mean() < 1.0  # it attacks: something broke


def test_query_function_formats_and_errors():
    model = tiny_classifier(3).eval()
    x = torch.rand(2, 3, 8, 8)
    query = QueryFunction(lambda a: model(torch.as_tensor(a)).detach().numpy(), input_format="numpy")
    assert query(x).shape == (2, 3) and query.queries == 2
    with pytest.raises(ValueError, match="logits"):
        QueryFunction(lambda a: model(a)[:, 0])(x)
    with pytest.raises(ValueError, match="input_format"):
        QueryFunction(model, input_format="jax")


def test_missing_package_explains_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyautoattack", None)
    model = tiny_classifier(2).eval()
    x, y = labelled_inputs(model, n=2)
    with pytest.raises(ImportError, match="pip install"):
        run_autoattack(model, x, y, LinfBall(), square_queries=10)
