"""Named evaluation attacks: ``clean``, ``fgsm``, ``pgd20``, ``cw20``, ``apgd-ce``, ``autoattack``, ``square[:QUERIES]``.

Each is an :class:`EvalAttack`: ``attack(model, x, y, threat, seed) -> x_adv`` plus ``attack.settings(threat,
num_classes)``, the exact settings it runs with (recorded in every report). Gradient attacks go through the one
:func:`~robust_student.attacks.pgd.pgd`; AutoAttack and Square come from ``pyautoattack``. Every attack runs
the model in eval mode with frozen parameters and restores both; seeds make a run reproducible.

    attack = get_attack("pgd20")
    x_adv = attack(model, x, y, LinfBall(8 / 255), seed=0)
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import torch
from torch import Tensor

from ..formatting import format_eps
from ..registry import Registry
from . import objectives
from .autoattack import (APGD_ITERATIONS, STANDARD_SQUARE_QUERIES, apgd_ce, autoattack_plan, run_autoattack,
                         square_attack)
from .pgd import fgsm, pgd
from .runtime import as_logits_fn, attack_mode, seeded
from .threat import Threat

Model = Callable[[Tensor], Tensor]


class EvalAttack:
    """Base class: subclasses set ``name``/``kind`` and implement :meth:`_run` and :meth:`settings`.

    ``kind`` is ``"none"`` (clean), ``"white-box"`` (gradients), ``"black-box"`` (queries only) or
    ``"ensemble"`` (AutoAttack); the gradient-masking checks compare kinds.
    """

    name: str = ""
    kind: ClassVar[str] = "white-box"

    def settings(self, threat: Threat, num_classes: int) -> dict[str, Any]:
        raise NotImplementedError

    def _run(self, model: Model, x: Tensor, y: Tensor, threat: Threat, seed: int) -> Tensor:
        raise NotImplementedError

    def __call__(self, model: Model, x: Tensor, y: Tensor, threat: Threat, seed: int = 0) -> Tensor:
        """Return adversarial examples for ``(x, y)`` inside ``threat`` (detached, float32, in [0, 1])."""
        with attack_mode(model), seeded(seed, x.device):
            return self._run(model, x.detach().float(), y, threat, seed).detach()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class Clean(EvalAttack):
    """No attack: the clean images themselves."""

    name = "clean"
    kind = "none"

    def settings(self, threat: Threat, num_classes: int) -> dict[str, Any]:
        return {}

    def _run(self, model: Model, x: Tensor, y: Tensor, threat: Threat, seed: int) -> Tensor:
        return x.clone()


class FGSM(EvalAttack):
    """Fast gradient sign method (Goodfellow et al. 2015): one PGD step of size eps on CE, from x."""

    name = "fgsm"

    def settings(self, threat: Threat, num_classes: int) -> dict[str, Any]:
        return {"objective": "ce", "steps": 1, "step_size": format_eps(threat.eps, threat.norm), "random_start": "none"}

    def _run(self, model: Model, x: Tensor, y: Tensor, threat: Threat, seed: int) -> Tensor:
        return fgsm(objectives.ce(model, y), x, threat)


class PGD(EvalAttack):
    """PGD (Madry et al. 2018) on CE, or CW-inf (Carlini & Wagner's margin loss inside PGD) with ``kappa``.

    ``step_size`` defaults to ``eps / 4`` (2/255 at eps 8/255, the literature's PGD-20 / CW-20 setting).
    """

    def __init__(self, name: str, *, steps: int = 20, objective: str = "ce", kappa: float = 50.0,
                 step_size: float | None = None, random_start: str = "uniform") -> None:
        if objective not in ("ce", "cw"):
            raise ValueError(f"objective must be 'ce' or 'cw', got {objective!r}")
        self.name = name
        self.steps = int(steps)
        self.objective = objective
        self.kappa = float(kappa)
        self.step_size = step_size
        self.random_start = random_start

    def _step(self, threat: Threat) -> float:
        return self.step_size if self.step_size is not None else threat.eps / 4

    def settings(self, threat: Threat, num_classes: int) -> dict[str, Any]:
        out: dict[str, Any] = {"objective": "cw_margin" if self.objective == "cw" else "ce"}
        if self.objective == "cw":
            out["kappa"] = self.kappa
        out.update(steps=self.steps, step_size=format_eps(self._step(threat), threat.norm),
                   step_rule="given" if self.step_size is not None else "eps/4", random_start=self.random_start,
                   restarts=1)
        return out

    def _run(self, model: Model, x: Tensor, y: Tensor, threat: Threat, seed: int) -> Tensor:
        objective = objectives.cw_margin(model, y, self.kappa) if self.objective == "cw" else objectives.ce(model, y)
        return pgd(objective, x, threat, steps=self.steps, step_size=self._step(threat),
                   random_start=self.random_start)


class AutoAttackEval(EvalAttack):
    """AutoAttack (Croce & Hein 2020) from ``pyautoattack``; the attack list adapts to the class count."""

    name = "autoattack"
    kind = "ensemble"

    def __init__(self, *, square_queries: int = STANDARD_SQUARE_QUERIES, batch_size: int = 256) -> None:
        self.square_queries = int(square_queries)
        self.batch_size = int(batch_size)

    def settings(self, threat: Threat, num_classes: int) -> dict[str, Any]:
        from .autoattack import pyautoattack_version

        plan = autoattack_plan(num_classes, self.square_queries)
        return {"package": f"pyautoattack {pyautoattack_version()}", "norm": threat.norm, **plan.to_dict()}

    def _run(self, model: Model, x: Tensor, y: Tensor, threat: Threat, seed: int) -> Tensor:
        x_adv, _ = run_autoattack(model, x, y, threat, seed=seed, batch_size=self.batch_size,
                                  square_queries=self.square_queries)
        return x_adv


class APGDCE(EvalAttack):
    """AutoAttack's APGD-CE alone (Croce & Hein 2020) from ``pyautoattack``: step-size-free PGD on CE."""

    name = "apgd-ce"

    def __init__(self, *, n_iter: int = APGD_ITERATIONS) -> None:
        self.n_iter = int(n_iter)

    def settings(self, threat: Threat, num_classes: int) -> dict[str, Any]:
        from .autoattack import pyautoattack_version

        return {"package": f"pyautoattack {pyautoattack_version()} APGDAttack", "loss": "ce", "n_iter": self.n_iter,
                "restarts": 1, "rho": 0.75}

    def _run(self, model: Model, x: Tensor, y: Tensor, threat: Threat, seed: int) -> Tensor:
        return apgd_ce(model, x, y, threat, seed=seed, n_iter=self.n_iter)


class Square(EvalAttack):
    """Square Attack (Andriushchenko et al. 2020): score-based black box; works on any logits callable."""

    name = "square"
    kind = "black-box"

    def __init__(self, *, n_queries: int = STANDARD_SQUARE_QUERIES, p_init: float = 0.8,
                 input_format: str = "auto") -> None:
        self.n_queries = int(n_queries)
        self.p_init = float(p_init)
        self.input_format = input_format

    def settings(self, threat: Threat, num_classes: int) -> dict[str, Any]:
        return {"package": "pyautoattack SquareAttack", "n_queries": self.n_queries, "p_init": self.p_init,
                "loss": "margin", "restarts": 1}

    def _run(self, model: Model, x: Tensor, y: Tensor, threat: Threat, seed: int) -> Tensor:
        return square_attack(model, x, y, threat, n_queries=self.n_queries, seed=seed, p_init=self.p_init,
                             input_format=self.input_format)


# -- the registry ----------------------------------------------------------------------------------------------

ATTACKS: Registry[Callable[..., EvalAttack]] = Registry("attack")


def register_attack(name: str, *, takes_arg: bool | str = False, usage: str | None = None):
    """Register a factory ``f(arg, **options) -> EvalAttack`` (``arg`` is the text after ``name:``)."""
    return ATTACKS.register(name, takes_arg=takes_arg, usage=usage)


@register_attack("clean")
def _clean(arg: None) -> EvalAttack:
    """No attack: clean accuracy."""
    return Clean()


@register_attack("fgsm")
def _fgsm(arg: None) -> EvalAttack:
    """FGSM: one signed-gradient step of size eps on CE."""
    return FGSM()


@register_attack("pgd20")
def _pgd20(arg: None, step_size: float | None = None) -> EvalAttack:
    """PGD-20 on CE, step eps/4, uniform random start (the literature's PGD-20)."""
    return PGD("pgd20", steps=20, objective="ce", step_size=step_size)


@register_attack("pgd", takes_arg=True, usage="pgd:STEPS")
def _pgd_steps(arg: str, step_size: float | None = None) -> EvalAttack:
    """PGD on CE with any number of steps (``pgd:10``); same step rule and start as ``pgd20``."""
    if not arg.isdigit() or int(arg) < 1:
        raise ValueError(f"pgd:STEPS needs a positive integer number of steps, got {arg!r}")
    return PGD(f"pgd:{arg}", steps=int(arg), objective="ce", step_size=step_size)


@register_attack("cw20")
def _cw20(arg: None, kappa: float = 50.0, step_size: float | None = None) -> EvalAttack:
    """CW-inf-20: the Carlini-Wagner margin loss (kappa 50) inside PGD-20."""
    return PGD("cw20", steps=20, objective="cw", kappa=kappa, step_size=step_size)


@register_attack("autoattack")
def _autoattack(arg: None, square_queries: int = STANDARD_SQUARE_QUERIES, batch_size: int = 256) -> EvalAttack:
    """AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square) via pyautoattack."""
    return AutoAttackEval(square_queries=square_queries, batch_size=batch_size)


@register_attack("apgd-ce")
def _apgd_ce(arg: None, n_iter: int = APGD_ITERATIONS) -> EvalAttack:
    return APGDCE(n_iter=n_iter)


@register_attack("square", takes_arg="optional", usage="square[:QUERIES]")
def _square(arg: str | None, n_queries: int | None = None, p_init: float = 0.8,
            input_format: str = "auto") -> EvalAttack:
    """Square Attack, score-based black box (default 5000 queries)."""
    if arg is not None:
        if not arg.isdigit() or int(arg) < 1:
            raise ValueError(f"square:QUERIES needs a positive integer query budget, got {arg!r}")
        n_queries = int(arg)
    return Square(n_queries=n_queries or STANDARD_SQUARE_QUERIES, p_init=p_init, input_format=input_format)


def get_attack(spec: str, **options: Any) -> EvalAttack:
    """Build a named attack (``"pgd20"``, ``"square:1000"``); ``options`` go to its factory."""
    factory, arg = ATTACKS.resolve(spec)
    try:
        attack = factory(arg, **options)
    except TypeError as err:
        raise ValueError(f"attack {spec!r}: bad options {sorted(options)} ({err})") from None
    attack.name = spec
    return attack


def list_attacks() -> list[str]:
    """Names of the registered evaluation attacks (``square[:QUERIES]`` takes an optional query budget)."""
    return ATTACKS.names()


# -- running an attack over many examples ------------------------------------------------------------------

def predict_labels(model: Model, x: Tensor, *, batch_size: int = 256, device: torch.device | str = "cpu") -> Tensor:
    """Top-1 predictions for ``x`` (any device) in batches, returned on the CPU."""
    out = []
    forward = as_logits_fn(model)
    with attack_mode(model), torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            out.append(forward(x[start:start + batch_size].to(device)).argmax(dim=1).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def check_in_threat(x_adv: Tensor, x: Tensor, threat: Threat, atol: float = 1e-6) -> None:
    """Raise if any adversarial example leaves the threat ball or [0, 1] (it would inflate attack success)."""
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(dim=1) if threat.norm == "linf" else delta.norm(dim=1)
    if (size > threat.eps + atol).any() or x_adv.min() < -atol or x_adv.max() > 1 + atol:
        raise RuntimeError(f"attack left the threat model ({threat}): max size {size.max().item():.6g}, "
                           f"range [{x_adv.min().item():.4g}, {x_adv.max().item():.4g}]")


def robust_correct(attack: EvalAttack, model: Model, x: Tensor, y: Tensor, threat: Threat, *,
                   batch_size: int = 256, seed: int = 0, device: torch.device | str = "cpu",
                   attack_only: Tensor | None = None, on_batch: Callable[[], None] | None = None) -> Tensor:
    """Per-example correctness under ``attack`` (bool [N], CPU).

    Only examples in ``attack_only`` (default: all) are attacked; the others count as not robust (standard
    practice: a misclassified clean example is never robust). Batch ``i`` is attacked with seed ``seed + i``.
    ``on_batch`` is called after each batch (progress bars).
    """
    correct = torch.zeros(x.shape[0], dtype=torch.bool)
    forward = as_logits_fn(model)
    todo = torch.arange(x.shape[0]) if attack_only is None else attack_only.nonzero().flatten()
    for i, start in enumerate(range(0, todo.numel(), batch_size)):
        idx = todo[start:start + batch_size]
        xb, yb = x[idx].to(device), y[idx].to(device)
        x_adv = attack(model, xb, yb, threat, seed=seed + i)
        check_in_threat(x_adv, xb.float(), threat)
        with attack_mode(model), torch.no_grad():
            correct[idx] = (forward(x_adv).argmax(dim=1) == yb).cpu()
        if on_batch is not None:
            on_batch()
    return correct


__all__ = ["EvalAttack", "Clean", "FGSM", "PGD", "APGDCE", "AutoAttackEval", "Square", "ATTACKS", "register_attack",
           "get_attack", "list_attacks", "as_logits_fn", "predict_labels", "robust_correct", "check_in_threat"]
