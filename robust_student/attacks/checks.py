"""Gradient-masking sanity checks (Carlini et al. 2019, "On evaluating adversarial robustness"; Croce & Hein 2020).

A model whose gradients are useless (shattered, saturated, quantised inputs) looks robust to gradient attacks
without being robust. These checks, run with every :class:`~robust_student.evaluation.RobustnessReport`, catch
the usual symptoms:

1. ``accuracy_decreases_with_eps``: robust accuracy is non-increasing as eps grows;
2. ``pgd_not_weaker_than_fgsm``: PGD-20 <= FGSM (an iterative attack is at least as strong as one step);
3. ``autoattack_not_weaker_than_pgd``: AutoAttack <= PGD-20;
4. ``large_eps_breaks_model``: at a large eps (L-inf 0.5 reaches the grey image from any image) accuracy ~0
   (PGD-20's fixed steps can stall at such an eps, so APGD-CE attacks what it leaves before the check fails:
   a masked gradient misleads both);
5. ``black_box_not_stronger``: the query-only Square attack is not stronger than the white-box attacks.

Each check is a pure function on accuracies returning a :class:`Check`; :func:`gradient_masking_checks` runs
the attacks they need (an eps sweep and Square on a subset) and assembles them. Comparisons allow a tolerance
of two examples (at least one percentage point), because random starts make single examples flip.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

from ..formatting import format_eps, format_percent
from .autoattack import AA_NORMS
from .named import get_attack, predict_labels, robust_correct
from .threat import Threat, make_threat

logger = logging.getLogger(__name__)

WHITE_BOX = ("fgsm", "pgd20", "cw20")
DEFAULT_MAX_LARGE_EPS_ACCURACY = 0.05


@dataclass(frozen=True)
class Check:
    """One check's outcome: ``passed`` is True, False, or None when it could not run (``detail`` says why)."""

    name: str
    passed: bool | None
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def tolerance(n: int) -> float:
    """Accuracy slack for comparing two attacks on ``n`` examples: two examples, at least 1 point."""
    return max(0.01, 2.0 / max(n, 1))


def check_accuracy_decreases(eps: Sequence[float], accuracy: Sequence[float], tol: float,
                             norm: str = "linf") -> Check:
    """Robust accuracy must not increase (beyond ``tol``) as eps grows."""
    name = "accuracy_decreases_with_eps"
    if len(eps) < 2:
        return Check(name, None, "needs accuracies at two or more eps")
    pairs = sorted(zip(eps, accuracy))
    show = ", ".join(f"{format_eps(e, norm)}: {format_percent(a)}" for e, a in pairs)
    rises = [(e0, e1) for (e0, a0), (e1, a1) in zip(pairs, pairs[1:]) if a1 > a0 + tol]
    if rises:
        where = "; ".join(f"{format_eps(e0, norm)} -> {format_eps(e1, norm)}" for e0, e1 in rises)
        return Check(name, False, f"accuracy rises with eps ({where}); {show}")
    return Check(name, True, show)


def check_stronger(name: str, strong: str, weak: str, accuracy: Mapping[str, float], tol: float) -> Check:
    """``accuracy[strong] <= accuracy[weak] + tol`` (the stronger attack must not do worse)."""
    if strong not in accuracy or weak not in accuracy:
        missing = [a for a in (strong, weak) if a not in accuracy]
        return Check(name, None, f"not run: needs {strong} and {weak} ({', '.join(missing)} missing)")
    a_strong, a_weak = accuracy[strong], accuracy[weak]
    detail = f"{strong} {format_percent(a_strong)} vs {weak} {format_percent(a_weak)} (tolerance {format_percent(tol)})"
    return Check(name, a_strong <= a_weak + tol, detail)


def check_large_eps(eps: float, accuracy: float, max_accuracy: float = DEFAULT_MAX_LARGE_EPS_ACCURACY,
                    norm: str = "linf", *, stronger: tuple[str, float] | None = None) -> Check:
    """At a large eps an attack that follows the gradient must break (almost) every example.

    ``accuracy`` is PGD-20's; ``stronger`` is ``(attack, accuracy)`` of a stronger gradient attack run on what
    PGD-20 left, which then decides the check (the detail states both)."""
    detail = f"accuracy {format_percent(accuracy)} at eps {format_eps(eps, norm)}"
    final = accuracy
    if stronger is not None:
        name, final = stronger
        detail += f" (pgd20), {format_percent(final)} after {name} on the examples it left"
    return Check("large_eps_breaks_model", final <= max_accuracy, f"{detail} (must be <= {format_percent(max_accuracy)})")


def check_black_box(black_box: float, white_box: float, tol: float, *, black_name: str = "square",
                    white_name: str = "white-box") -> Check:
    """A query-only attack must not beat the gradient attacks (if it does, the gradients are masked)."""
    detail = (f"{black_name} {format_percent(black_box)} vs {white_name} {format_percent(white_box)} "
              f"(tolerance {format_percent(tol)})")
    return Check("black_box_not_stronger", black_box >= white_box - tol, detail)


def default_large_eps(threat: Threat, image_shape: Sequence[int]) -> float:
    """L-inf 0.5; L2 0.5 * sqrt(C*H*W). Both contain the mid-grey image around every [0, 1] image."""
    if threat.norm == "linf":
        return 0.5
    return 0.5 * math.sqrt(math.prod(image_shape))


@dataclass
class CheckRun:
    """The checks plus the measurements behind them (stored in the report)."""

    checks: list[Check]
    sweep: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.passed is False]


def gradient_masking_checks(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    threat: Threat,
    robust_accuracy: Mapping[str, float],
    *,
    n_main: int | None = None,
    batch_size: int = 256,
    seed: int = 0,
    device: torch.device | str = "cpu",
    large_eps: float | None = None,
    max_large_eps_accuracy: float = DEFAULT_MAX_LARGE_EPS_ACCURACY,
    square_queries: int = 1000,
    on_batch: Callable[[], None] | None = None,
) -> CheckRun:
    """Run the five checks. ``x, y`` is the check subset; ``robust_accuracy`` the main results (on ``n_main``).

    On the subset: PGD-20 at eps/2, eps, 2 eps and a large eps (the sweep, with clean accuracy at eps 0), APGD-CE
    at the large eps on what PGD-20 left there when that is too much, and Square with ``square_queries`` unless
    Square and a white-box attack are already among the main results.
    """
    n = int(x.shape[0])
    tol_sub, tol_main = tolerance(n), tolerance(n_main or n)
    large = large_eps if large_eps is not None else default_large_eps(threat, x.shape[1:])
    eps_list = sorted({threat.eps / 2, threat.eps, 2 * threat.eps, large} - {0.0})
    eps_list = [e for e in eps_list if e <= large]
    pgd20 = get_attack("pgd20")
    clean = predict_labels(model, x, batch_size=batch_size, device=device) == y
    accuracy_at = {0.0: clean.float().mean().item()}
    correct_at = {0.0: clean}
    for eps in eps_list:
        correct_at[eps] = robust_correct(pgd20, model, x, y, make_threat(threat.norm, eps), batch_size=batch_size,
                                         seed=seed, device=device, attack_only=clean, on_batch=on_batch)
        accuracy_at[eps] = correct_at[eps].float().mean().item()
    correct_at_eps = correct_at.get(threat.eps, clean)
    sweep: dict[str, Any] = {"attack": "pgd20", "n_examples": n, "eps": list(accuracy_at),
                             "accuracy": list(accuracy_at.values())}
    large_check = check_large_eps(large, accuracy_at[large], max_large_eps_accuracy, threat.norm)
    if large_check.passed is False and threat.norm in AA_NORMS:
        survivors = robust_correct(get_attack("apgd-ce"), model, x, y, make_threat(threat.norm, large),
                                   batch_size=batch_size, seed=seed, device=device, attack_only=correct_at[large],
                                   on_batch=on_batch)
        sweep["large_eps_apgd_ce"] = survivors.float().mean().item()
        large_check = check_large_eps(large, accuracy_at[large], max_large_eps_accuracy, threat.norm,
                                      stronger=("apgd-ce", sweep["large_eps_apgd_ce"]))
    checks = [
        check_accuracy_decreases(list(accuracy_at), list(accuracy_at.values()), tol_sub, threat.norm),
        check_stronger("pgd_not_weaker_than_fgsm", "pgd20", "fgsm", robust_accuracy, tol_main),
        check_stronger("autoattack_not_weaker_than_pgd", "autoattack", "pgd20", robust_accuracy, tol_main),
        large_check,
    ]
    white = {k: v for k, v in robust_accuracy.items() if k in WHITE_BOX}
    square_main = [k for k in robust_accuracy if k == "square" or k.startswith("square:")]
    if square_main and white:
        best = min(white, key=white.get)
        checks.append(check_black_box(robust_accuracy[square_main[0]], white[best], tol_main,
                                      black_name=square_main[0], white_name=best))
    elif clean.any():
        square = get_attack("square", n_queries=square_queries)
        black = robust_correct(square, model, x, y, threat, batch_size=batch_size, seed=seed, device=device,
                               attack_only=clean, on_batch=on_batch).float().mean().item()
        sweep["square"] = {"n_queries": square_queries, "accuracy": black}
        checks.append(check_black_box(black, correct_at_eps.float().mean().item(), tol_sub,
                                      black_name=f"square ({square_queries} queries, {n} examples)",
                                      white_name=f"pgd20 ({n} examples)"))
    else:
        checks.append(Check("black_box_not_stronger", None, "no correctly classified example to attack"))
    run = CheckRun(checks, sweep)
    for check in run.failed:
        logger.warning("gradient-masking check FAILED: %s: %s", check.name, check.detail)
    return run


__all__ = ["Check", "CheckRun", "gradient_masking_checks", "check_accuracy_decreases", "check_stronger",
           "check_large_eps", "check_black_box", "default_large_eps", "tolerance"]
