"""ARD: adversarially robust distillation of a teacher's temperature-softened outputs.

Goldblum et al., "Adversarially Robust Distillation", AAAI 2020, https://arxiv.org/abs/1905.09747;
reference code goldblum/AdversariallyRobustDistillation (``main.py``).

    x' = argmax CE(S(x'), y)      (student in TRAIN mode, as in the reference code)
    L  = alpha * t^2 * KL(T(x)/t || S(x')/t) + (1 - alpha) * CE(S(x), y)        t 30, alpha 1

With alpha 1 the CE term vanishes. The reference code uses ``nn.KLDivLoss()`` (mean over B x C); we use
``batchmean`` (the true per-sample KL), which is C times larger — scale ``alpha`` or the lr to match.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks import objectives
from ..config import require_between, require_positive
from ..losses import check_reduction, kl_div, soft_targets
from .base import Batch, Method, MethodConfig, Paper, TrainState, clean_teacher_logits, register_method


@dataclass
class ARDConfig(MethodConfig):
    """Hyper-parameters of ARD.

    Attributes:
        temperature: ``t`` applied to teacher and student logits; the KL is scaled by ``t^2``.
        alpha: weight of the distillation term; ``1 - alpha`` goes to clean cross-entropy.
        reduction: KL reduction (``"batchmean"`` or ``"sum"``).
    """

    temperature: float = 30.0
    alpha: float = 1.0
    reduction: str = "batchmean"

    def validate(self) -> None:
        check_reduction(self.reduction)
        require_positive("temperature", self.temperature)
        require_between("alpha", self.alpha, 0.0, 1.0)


PAPER = Paper(
    "Adversarially Robust Distillation",
    ("Micah Goldblum", "Liam Fowl", "Soheil Feizi", "Tom Goldstein"),
    "AAAI",
    2020,
    "https://arxiv.org/abs/1905.09747",
)


@register_method("ard", paper=PAPER)
class ARD(Method):
    """Match the student on CE-PGD examples to the teacher's softened clean predictions.

    The attack runs with the student in TRAIN mode (batch statistics, running stats updated by the attack's
    forwards), as the reference code does; ``attack.student_mode="eval"`` changes it.
    """

    Config = ARDConfig
    attack_student_mode = "train"

    def loss(self, batch: Batch, student: nn.Module, teachers: Mapping[str, nn.Module],
             state: TrainState) -> dict[str, Tensor]:
        cfg = self.config
        x, y = batch["image"], batch["label"]
        t = cfg.temperature
        x_adv = self.attack(objectives.ce(student, y), x, student)
        target = soft_targets(clean_teacher_logits(batch, teachers), t)
        kl = kl_div(target, student(x_adv), reduction=cfg.reduction, temperature=t) * t**2
        out = {"kl_adv": kl.detach()}
        loss = cfg.alpha * kl
        if cfg.alpha < 1.0:  # the reference code always runs S(x); skipped here when its term has weight 0
            ce = F.cross_entropy(student(x).float(), y)
            loss = loss + (1.0 - cfg.alpha) * ce
            out["ce"] = ce.detach()
        return {"loss": loss, **out}
