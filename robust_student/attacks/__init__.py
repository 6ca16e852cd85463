"""Attacks: threat models, the one PGD, per-sample objectives (and, with the evaluation work, named attacks).

``from robust_student import attacks``; ``attacks.pgd(attacks.objectives.ce(model, y), x, attacks.LinfBall(8/255))``.
"""

from __future__ import annotations

from . import objectives
from .pgd import eval_mode, fgsm, pgd
from .threat import L2Ball, LinfBall, Threat, make_threat, threat_from_config

__all__ = ["pgd", "fgsm", "eval_mode", "objectives", "LinfBall", "L2Ball", "Threat", "make_threat",
           "threat_from_config"]
