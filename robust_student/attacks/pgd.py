"""The one PGD every inner maximisation and every gradient-based evaluation attack goes through.

``pgd(objective, x, threat, steps, step_size)`` maximises a *per-sample* objective (a callable mapping a
batch of [0, 1] images to losses of shape [B]) inside ``threat`` and returns the final iterate. Gradients are
taken with ``torch.autograd.grad`` with respect to the input only, so no parameter ever accumulates ``.grad``.
A caller that needs the intermediate iterates (DGHFA's hierarchy of perturbation strengths) passes
``on_step``, which sees every iterate; the return type never changes.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from .runtime import eval_mode
from .threat import LinfBall, Threat

Objective = Callable[[Tensor], Tensor]
StepCallback = Callable[[int, Tensor], None]


def pgd(
    objective: Objective,
    x: Tensor,
    threat: Threat = LinfBall(),
    steps: int = 10,
    step_size: float = 2 / 255,
    random_start: bool | str = True,
    momentum: float | None = None,
    *,
    init_std: float = 0.001,
    eval_modules: Sequence[nn.Module] = (),
    on_step: StepCallback | None = None,
) -> Tensor:
    """Projected gradient ascent on ``objective`` within ``threat`` around ``x``; returns detached ``x_adv``.

    Args:
        objective: per-sample loss, ``objective(x_adv) -> [B]``; higher is better for the attacker.
        random_start: ``True``/``"uniform"`` (uniform in the ball), ``"normal"`` (``x + init_std * N(0, 1)``,
            the ARD-family training convention), ``False``/``"none"`` (start at ``x``).
        momentum: MI-FGSM decay ``mu``: ``g <- mu * g + grad / mean|grad|`` (None = plain PGD).
        eval_modules: modules held in eval mode during the attack and restored afterwards (e.g. the student,
            so batch-norm statistics are not updated by adversarial batches).
        on_step: called as ``on_step(step, x_adv)`` after each step (1..steps) with the detached iterate.

    Works under autocast (the objective runs in the ambient precision; ``x_adv`` stays float32).
    """
    if steps < 0:
        raise ValueError("steps must be >= 0")
    x0 = x.detach().float()
    kind = {True: "uniform", False: "none"}.get(random_start, random_start)  # type: ignore[arg-type]
    if kind not in ("uniform", "normal", "none"):
        raise ValueError(f"random_start must be a bool, 'uniform', 'normal' or 'none', got {random_start!r}")
    x_adv = threat.random_init(x0, kind, init_std) if kind != "none" else x0.clone()
    velocity = torch.zeros_like(x0) if momentum is not None else None
    with eval_mode(*eval_modules), torch.enable_grad():
        for step in range(1, steps + 1):
            x_adv.requires_grad_(True)
            loss = objective(x_adv)
            if loss.ndim != 1 or loss.shape[0] != x0.shape[0]:
                raise ValueError(f"objective must return per-sample losses of shape [{x0.shape[0]}], "
                                 f"got {tuple(loss.shape)}")
            (grad,) = torch.autograd.grad(loss.float().sum(), x_adv)
            x_adv = x_adv.detach()
            if velocity is not None:
                scale = grad.abs().flatten(1).mean(1).clamp_min(1e-12).view(-1, *([1] * (grad.ndim - 1)))
                velocity = momentum * velocity + grad / scale
                grad = velocity
            x_adv = threat.project(threat.step(x_adv, grad, step_size), x0)
            if on_step is not None:
                on_step(step, x_adv.detach())  # a separate tensor: the next step flags x_adv for grad
    return x_adv.detach()


def fgsm(objective: Objective, x: Tensor, threat: Threat = LinfBall(), **kwargs) -> Tensor:
    """Fast gradient sign method: one PGD step of size ``eps`` from ``x`` itself."""
    return pgd(objective, x, threat, steps=1, step_size=threat.eps, random_start=False, **kwargs)
