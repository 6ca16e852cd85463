"""RSLAD: robust soft label adversarial distillation.

Zi et al., "Revisiting Adversarial Robustness Distillation: Robust Soft Labels Make Student Better",
ICCV 2021, https://arxiv.org/abs/2108.07969; reference code zibojia/RSLAD (``rslad_loss.py``).

    x' = argmax KL(T(x) || S(x'))      (student in eval mode, start x + 0.001 * N(0, 1))
    L  = 5/6 * KL(T(x) || S(x')) + 1/6 * KL(T(x) || S(x))

The teacher's soft labels on the CLEAN image are the target of both terms. The reference code averages its
KL over B x C (``torch.mean``); we use ``batchmean``, which is C times larger.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from torch import Tensor, nn

from ..attacks import objectives
from ..config import require_between
from ..losses import check_reduction, kl_div, soft_targets
from .base import Batch, Method, MethodConfig, Paper, TrainState, clean_teacher_logits, register_method


@dataclass
class RSLADConfig(MethodConfig):
    """Hyper-parameters of RSLAD.

    Attributes:
        adv_weight: weight of ``KL(T(x) || S(x'))``; ``1 - adv_weight`` goes to ``KL(T(x) || S(x))``.
        reduction: KL reduction (``"batchmean"`` or ``"sum"``).
    """

    adv_weight: float = 5 / 6
    reduction: str = "batchmean"

    def validate(self) -> None:
        check_reduction(self.reduction)
        require_between("adv_weight", self.adv_weight, 0.0, 1.0)


PAPER = Paper(
    "Revisiting Adversarial Robustness Distillation: Robust Soft Labels Make Student Better",
    ("Bojia Zi", "Shihao Zhao", "Xingjun Ma", "Yu-Gang Jiang"),
    "ICCV",
    2021,
    "https://arxiv.org/abs/2108.07969",
)


@register_method("rslad", paper=PAPER)
class RSLAD(Method):
    """Distil the teacher's clean soft labels into the student on clean and adversarial inputs.

    The student is in eval mode while ``x'`` is crafted (the reference code does; ``attack.student_mode``).
    """

    Config = RSLADConfig

    def loss(self, batch: Batch, student: nn.Module, teachers: Mapping[str, nn.Module],
             state: TrainState) -> dict[str, Tensor]:
        cfg = self.config
        x = batch["image"]
        soft = soft_targets(clean_teacher_logits(batch, teachers))
        x_adv = self.attack(objectives.kl_to(student, soft), x, student)
        kl_adv = kl_div(soft, student(x_adv), reduction=cfg.reduction)
        kl_nat = kl_div(soft, student(x), reduction=cfg.reduction)
        w = cfg.adv_weight
        return {"loss": w * kl_adv + (1 - w) * kl_nat, "kl_adv": kl_adv.detach(), "kl_nat": kl_nat.detach()}
