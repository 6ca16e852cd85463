"""AdaAD: adaptive adversarial distillation, where the teacher is queried at the adversarial point too.

Huang et al., "Boosting Accuracy and Robustness of Student Models via Adaptive Adversarial Distillation",
CVPR 2023, https://openaccess.thecvf.com/content/CVPR2023/html/Huang_Boosting_Accuracy_and_Robustness_of_Student_Models_via_Adaptive_Adversarial_Distillation_CVPR_2023_paper.html;
reference code boyellow/AdaAD (``AT_helper.adaad_inner_loss``, ``main.py``).

    x' = argmax KL(T(x') || S(x'))     (gradients flow through teacher AND student; student in eval mode)
    L  = alpha * KL(T(x') || S(x')) + (1 - alpha) * KL(T(x) || S(x))            alpha 1

The reference code's reduction differs by dataset (mean over B x C on CIFAR-10, sum / B on CIFAR-100);
we use ``batchmean``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch.nn.functional as F
from torch import Tensor, nn

from ..config import require_between
from ..losses import check_reduction, kl_div, soft_targets
from .base import Batch, Method, MethodConfig, Paper, TrainState, clean_teacher_logits, no_grad_outputs, register_method


@dataclass
class AdaADConfig(MethodConfig):
    """Hyper-parameters of AdaAD.

    Attributes:
        alpha: weight of ``KL(T(x') || S(x'))``; ``1 - alpha`` goes to ``KL(T(x) || S(x))``.
        reduction: KL reduction (``"batchmean"`` or ``"sum"``).
    """

    alpha: float = 1.0
    reduction: str = "batchmean"

    def validate(self) -> None:
        check_reduction(self.reduction)
        require_between("alpha", self.alpha, 0.0, 1.0)


def teacher_student_kl(teacher: nn.Module, student: nn.Module) -> Callable[[Tensor], Tensor]:
    """Per-sample ``KL(T(x') || S(x'))``, differentiable through both models (AdaAD's inner objective)."""
    return lambda x: kl_div(F.softmax(teacher(x).float(), dim=1), student(x), reduction="none")


PAPER = Paper(
    "Boosting Accuracy and Robustness of Student Models via Adaptive Adversarial Distillation",
    ("Bo Huang", "Mingyang Chen", "Yi Wang", "Junda Lu", "Minhao Cheng", "Wei Wang"),
    "CVPR",
    2023,
    "https://openaccess.thecvf.com/content/CVPR2023/html/Huang_Boosting_Accuracy_and_Robustness"
    "_of_Student_Models_via_Adaptive_Adversarial_Distillation_CVPR_2023_paper.html",
)


@register_method("adaad", paper=PAPER)
class AdaAD(Method):
    """Find where teacher and student disagree most, then match the student to the teacher there.

    The student is in eval mode while ``x'`` is crafted (the reference ``BN_eval=True``).
    """

    Config = AdaADConfig

    def loss(self, batch: Batch, student: nn.Module, teachers: Mapping[str, nn.Module],
             state: TrainState) -> dict[str, Tensor]:
        cfg = self.config
        x = batch["image"]
        teacher = teachers["teacher"]
        x_adv = self.attack(teacher_student_kl(teacher, student), x, student)
        kl_adv = kl_div(soft_targets(no_grad_outputs(teacher, x_adv)), student(x_adv), reduction=cfg.reduction)
        out = {"kl_adv": kl_adv.detach()}
        loss = cfg.alpha * kl_adv
        if cfg.alpha < 1.0:
            kl_nat = kl_div(soft_targets(clean_teacher_logits(batch, teachers)), student(x),
                            reduction=cfg.reduction)
            loss = loss + (1.0 - cfg.alpha) * kl_nat
            out["kl_nat"] = kl_nat.detach()
        return {"loss": loss, **out}
