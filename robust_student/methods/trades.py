"""TRADES (no teacher): clean cross-entropy plus a KL that keeps the adversarial prediction near the clean one.

Zhang et al., "Theoretically Principled Trade-off between Robustness and Accuracy", ICML 2019,
https://arxiv.org/abs/1901.08573; reference code yaodongyu/TRADES (``trades.py``).

    x' = argmax KL(S(x) || S(x'))                     L = CE(S(x), y) + beta * KL(S(x) || S(x'))

As in the reference code, the student is in eval mode during the attack, the attack starts at
``x + 0.001 * N(0, 1)``, and the outer KL is ``sum / B`` (``batchmean``) with gradients flowing through both
``S(x)`` and ``S(x')``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks import eval_mode, objectives
from ..losses import check_reduction, kl_div
from .base import Batch, Method, MethodConfig, Paper, TrainState, register_method


@dataclass
class TRADESConfig(MethodConfig):
    """Hyper-parameters of TRADES.

    Attributes:
        beta: weight of the robustness KL (6 in the paper's CIFAR-10 setting).
        reduction: outer KL reduction (``"batchmean"`` = the reference code's ``(1/B) * KL_sum``).
    """

    beta: float = 6.0
    reduction: str = "batchmean"

    def validate(self) -> None:
        check_reduction(self.reduction)


PAPER = Paper(
    "Theoretically Principled Trade-off between Robustness and Accuracy",
    ("Hongyang Zhang", "Yaodong Yu", "Jiantao Jiao", "Eric P. Xing", "Laurent El Ghaoui", "Michael I. Jordan"),
    "ICML",
    2019,
    "https://arxiv.org/abs/1901.08573",
)


@register_method("trades", paper=PAPER)
class TRADES(Method):
    """Trade clean accuracy against smoothness of the student's own predictions; uses no teacher."""

    Config = TRADESConfig
    teacher_roles = ()

    def loss(self, batch: Batch, student: nn.Module, teachers: Mapping[str, nn.Module],
             state: TrainState) -> dict[str, Tensor]:
        cfg = self.config
        x, y = batch["image"], batch["label"]
        with eval_mode(*self.attack_modules(student)), torch.no_grad():  # the target, in the attack's BN mode
            clean_probs = F.softmax(student(x).float(), dim=1)
        x_adv = self.attack(objectives.kl_to(student, clean_probs), x, student)
        logits = student(x)
        ce = F.cross_entropy(logits.float(), y)
        robust = kl_div(F.softmax(logits.float(), dim=1), student(x_adv), reduction=cfg.reduction)
        return {"loss": ce + cfg.beta * robust, "ce": ce.detach(), "kl_robust": robust.detach()}
