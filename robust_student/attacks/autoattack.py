"""Adapters to Croce & Hein's AutoAttack and Square Attack from the ``pyautoattack`` package (never re-implemented).

* :func:`run_autoattack` runs AutoAttack on a [0, 1] -> logits model. The package's ``version="standard"``
  (APGD-CE, APGD-T, FAB-T, Square) assumes at least 10 classes and crashes below that, so
  :func:`autoattack_plan` picks the attack list from the number of classes and says exactly what ran.
* :func:`square_attack` runs the score-based Square Attack on *any* callable mapping [0, 1] images to logits:
  an ``nn.Module``, a function on tensors, or a numpy function such as an ONNX Runtime session wrapper.

``pyautoattack`` is imported lazily (the ``[eval]`` extra), so ``import robust_student`` never needs it.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator

import torch
from torch import Tensor

from .runtime import QueryFunction, attack_mode, seeded
from .threat import Threat

logger = logging.getLogger(__name__)

AA_NORMS = {"linf": "Linf", "l2": "L2"}
STANDARD_SQUARE_QUERIES = 5000
_INSTALL_HINT = ("AutoAttack needs the pyautoattack package: pip install 'robust-student[eval]' "
                 "(or pip install pyautoattack)")


def _import_pyautoattack() -> Any:
    try:
        import pyautoattack
    except ImportError as err:
        raise ImportError(_INSTALL_HINT) from err
    return pyautoattack


def pyautoattack_version() -> str | None:
    """The installed pyautoattack version, or None when it is not installed."""
    try:
        return _import_pyautoattack().__version__
    except ImportError:
        return None


# -- the package's own log ---------------------------------------------------------------------------------

@contextlib.contextmanager
def captured_warnings(logger_name: str = "auto-attack") -> Iterator[list[str]]:
    """Collect the WARNING records of a logger (pyautoattack's sanity checks log there) into a list."""
    messages: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = _Collect(level=logging.WARNING)
    target = logging.getLogger(logger_name)
    target.addHandler(handler)
    try:
        yield messages
    finally:
        target.removeHandler(handler)


# -- AutoAttack ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AutoAttackPlan:
    """What AutoAttack runs for a given number of classes (recorded verbatim in every report)."""

    version: str
    attacks: tuple[str, ...]
    n_target_classes: int
    square_queries: int
    note: str

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["attacks"] = list(self.attacks)
        return out


def autoattack_plan(num_classes: int, square_queries: int = STANDARD_SQUARE_QUERIES) -> AutoAttackPlan:
    """Choose the AutoAttack configuration for ``num_classes``.

    * C >= 10: the package's ``standard`` version unchanged (APGD-CE, APGD-T and FAB-T with 9 targets, Square).
    * 4 <= C < 10: ``standard`` with APGD-T and FAB-T over the C-1 other classes (all that exist).
    * C == 3: the targeted DLR loss needs 4 classes, so APGD-T is replaced by untargeted APGD-DLR (defined
      for 3 classes): ``apgd-ce, apgd-dlr, fab-t (2 targets), square``, one restart each as in ``standard``.
    * C == 2: DLR is undefined: ``apgd-ce, fab-t (1 target = the other class), square``.
    """
    if num_classes < 2:
        raise ValueError(f"AutoAttack needs at least 2 classes, got {num_classes}")
    reduced = "" if square_queries == STANDARD_SQUARE_QUERIES else f"; Square reduced to {square_queries} queries"
    if num_classes >= 10:
        return AutoAttackPlan("standard", ("apgd-ce", "apgd-t", "fab-t", "square"), 9, square_queries,
                              "AutoAttack standard" + reduced)
    if num_classes >= 4:
        return AutoAttackPlan("standard", ("apgd-ce", "apgd-t", "fab-t", "square"), num_classes - 1,
                              square_queries, f"AutoAttack standard with {num_classes - 1} target classes "
                              f"(all other classes; the package default of 9 needs 10 classes)" + reduced)
    if num_classes == 3:
        return AutoAttackPlan("custom", ("apgd-ce", "apgd-dlr", "fab-t", "square"), 2, square_queries,
                              "3 classes: targeted DLR (APGD-T) is undefined, untargeted APGD-DLR runs instead; "
                              "FAB-T over both other classes" + reduced)
    return AutoAttackPlan("custom", ("apgd-ce", "fab-t", "square"), 1, square_queries,
                          "2 classes: the DLR losses (APGD-T, APGD-DLR) are undefined; APGD-CE, FAB-T towards "
                          "the other class, Square" + reduced)


def _check_square_input(x: Tensor, threat: Threat) -> None:
    """The package's L2 Square Attack tiles the image in 5 x 5 blocks and divides by zero below 5 px."""
    if threat.norm == "l2" and min(x.shape[-2:]) < 5:
        raise ValueError(f"Square (also inside AutoAttack) needs images of at least 5x5 px for L2, got "
                         f"{tuple(x.shape[-2:])}")


# Warnings the package's class-count check emits for a plan we chose on purpose (see autoattack_plan).
_EXPECTED_WARNINGS = {3: "with only 3 classes it is not possible to use the targeted DLR loss"}


@contextlib.contextmanager
def _dropped(prefix: str | None, logger_name: str = "auto-attack") -> Iterator[None]:
    """Drop the package's log records that start with ``prefix`` (a warning about a choice we made on purpose)."""
    def keep(record: logging.LogRecord) -> bool:
        return not (prefix and record.getMessage().startswith(prefix))

    target = logging.getLogger(logger_name)
    target.addFilter(keep)
    try:
        yield
    finally:
        target.removeFilter(keep)


def build_autoattack(model: Callable[[Tensor], Tensor], threat: Threat, plan: AutoAttackPlan, *, seed: int = 0,
                     device: torch.device | str = "cpu") -> Any:
    """Construct ``pyautoattack.AutoAttack`` configured by ``plan`` (package defaults otherwise)."""
    pyautoattack = _import_pyautoattack()
    if threat.norm not in AA_NORMS:
        raise ValueError(f"AutoAttack supports norms {list(AA_NORMS)}, got {threat.norm!r}")
    kwargs: dict[str, Any] = dict(eps=float(threat.eps), norm=AA_NORMS[threat.norm], seed=seed, device=device)
    if plan.version == "standard":
        aa = pyautoattack.AutoAttack(model, version="standard", **kwargs)
    else:
        aa = pyautoattack.AutoAttack(model, version="custom", attacks=list(plan.attacks), **kwargs)
        aa.apgd.n_restarts = 1  # as in standard (the constructor's default is 5)
        aa.fab.n_restarts = 1
    aa.apgd_targeted.n_target_classes = plan.n_target_classes
    aa.fab.n_target_classes = plan.n_target_classes
    aa.square.n_queries = plan.square_queries
    return aa


def run_autoattack(model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, threat: Threat, *, seed: int = 0,
                   batch_size: int = 256, square_queries: int = STANDARD_SQUARE_QUERIES,
                   num_classes: int | None = None) -> tuple[Tensor, dict[str, Any]]:
    """AutoAttack ``x`` (labels ``y``) inside ``threat``; returns ``(x_adv, info)``.

    ``x_adv`` is the package's pointwise worst case over its attacks. ``info`` holds the plan, the seed and
    the package's own sanity warnings (randomised / dynamic defences, zero gradients, Square stronger than
    the gradient attacks), which belong in the report. The model runs frozen; the caller's RNG is untouched.
    """
    device = x.device
    _check_square_input(x, threat)
    if num_classes is None:
        with attack_mode(model), torch.no_grad():
            num_classes = int(model(x[:1]).shape[1])
    plan = autoattack_plan(num_classes, square_queries)

    def logits(inputs: Tensor) -> Tensor:
        return model(inputs).float()

    with attack_mode(model), seeded(seed, device), _dropped(_EXPECTED_WARNINGS.get(num_classes)), \
            captured_warnings() as warnings:
        aa = build_autoattack(logits, threat, plan, seed=seed, device=device)
        x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=batch_size)
    info = {"package": f"pyautoattack {pyautoattack_version()}", **plan.to_dict(), "seed": seed,
            "warnings": warnings}
    return threat.project(x_adv.to(device).float(), x.float()), info


# -- APGD-CE ---------------------------------------------------------------------------------------------------

APGD_ITERATIONS = 100  # AutoAttack standard's APGD-CE: 100 iterations, one restart, rho 0.75


def apgd_ce(model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, threat: Threat, *, seed: int = 0,
            n_iter: int = APGD_ITERATIONS, n_restarts: int = 1) -> Tensor:
    """AutoAttack's first attack, APGD on cross-entropy (Croce & Hein 2020), through the package's
    ``APGDAttack`` with AutoAttack standard's settings; returns the adversarial examples (the clean image where
    the attack failed). The model runs frozen; the caller's RNG is untouched."""
    _import_pyautoattack()
    from pyautoattack.autopgd_base import APGDAttack

    if threat.norm not in AA_NORMS:
        raise ValueError(f"APGD-CE supports norms {list(AA_NORMS)}, got {threat.norm!r}")

    def logits(inputs: Tensor) -> Tensor:
        return model(inputs).float()

    attack = APGDAttack(logits, n_iter=n_iter, norm=AA_NORMS[threat.norm], n_restarts=n_restarts,
                        eps=float(threat.eps), seed=seed, loss="ce", eot_iter=1, rho=0.75, device=x.device)
    x0 = x.detach().float()
    with attack_mode(model), seeded(seed, x.device):
        x_adv = attack.perturb(x0, y.to(x.device))
    return threat.project(x_adv.float(), x0)


# -- Square Attack ---------------------------------------------------------------------------------------------

def square_attack(predict: Callable[[Any], Any], x: Tensor, y: Tensor, threat: Threat, *,
                  n_queries: int = STANDARD_SQUARE_QUERIES, seed: int = 0, p_init: float = 0.8,
                  n_restarts: int = 1, rescale_schedule: bool = False, input_format: str = "auto") -> Tensor:
    """Score-based Square Attack (Andriushchenko et al. 2020) through the package's ``SquareAttack``.

    ``predict`` maps [0, 1] images to logits and is only queried (no gradients): a module, a tensor function
    or a numpy function (``input_format``, see :class:`QueryFunction`). ``n_queries`` is the budget per
    image; the defaults (5000 queries, p_init 0.8, margin loss, fixed schedule) are AutoAttack's.
    """
    _import_pyautoattack()
    from pyautoattack.square import SquareAttack

    if threat.norm not in AA_NORMS:
        raise ValueError(f"Square supports norms {list(AA_NORMS)}, got {threat.norm!r}")
    _check_square_input(x, threat)
    query = QueryFunction(predict, input_format)
    attack = SquareAttack(query, norm=AA_NORMS[threat.norm], n_queries=n_queries, eps=float(threat.eps),
                          p_init=p_init, n_restarts=n_restarts, seed=seed, verbose=False, loss="margin",
                          resc_schedule=rescale_schedule, device=x.device)
    x0 = x.detach().float()
    with attack_mode(predict), seeded(seed, x.device), torch.no_grad():
        x_adv = attack.perturb(x0, y.to(x.device))
    logger.debug("square: %d queries for %d images", query.queries, x.shape[0])
    return threat.project(x_adv.float(), x0)


__all__ = ["AutoAttackPlan", "autoattack_plan", "build_autoattack", "run_autoattack", "apgd_ce", "square_attack",
           "captured_warnings", "pyautoattack_version"]
