"""Attacks: threat models, the one PGD, per-sample objectives, named evaluation attacks and masking checks.

``from robust_student import attacks``; ``attacks.pgd(attacks.objectives.ce(model, y), x, attacks.LinfBall(8/255))``;
``attacks.get_attack("pgd20")(model, x, y, attacks.LinfBall(8/255))``; ``attacks.list_attacks()``.
AutoAttack and Square come from ``pyautoattack`` (imported only when they run).
"""

from __future__ import annotations

from . import checks, objectives
from .autoattack import autoattack_plan, run_autoattack, square_attack
from .named import ATTACKS, EvalAttack, get_attack, list_attacks, register_attack
from .pgd import fgsm, pgd
from .runtime import QueryFunction, as_logits_fn, attack_mode, eval_mode, frozen_parameters, seeded
from .threat import L2Ball, LinfBall, Threat, make_threat, threat_from_config

__all__ = ["pgd", "fgsm", "eval_mode", "attack_mode", "frozen_parameters", "seeded", "QueryFunction", "as_logits_fn",
           "objectives", "LinfBall", "L2Ball", "Threat", "make_threat",
           "threat_from_config", "autoattack_plan", "run_autoattack", "square_attack", "ATTACKS", "EvalAttack",
           "get_attack", "list_attacks", "register_attack", "checks"]
