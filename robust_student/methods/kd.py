"""Plain knowledge distillation (no attack): the non-robust baseline every robust method is compared with.

Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network", NeurIPS workshop 2014,
https://arxiv.org/abs/1503.02531.

    L = alpha * t^2 * KL(T(x)/t || S(x)/t) + (1 - alpha) * CE(S(x), y)

With the defaults (t 1, alpha 1) this is ``KL(T(x) || S(x))`` on the teacher's zero-shot soft labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch.nn.functional as F
from torch import Tensor, nn

from ..config import require_between, require_positive
from ..losses import check_reduction, kl_div, soft_targets
from .base import Batch, Method, MethodConfig, Paper, TrainState, clean_teacher_logits, register_method


@dataclass
class KDConfig(MethodConfig):
    """Hyper-parameters of plain KD.

    Attributes:
        temperature: ``t``, softens teacher and student alike; the KL is scaled by ``t^2`` (Hinton et al.).
        alpha: weight of the distillation term; ``1 - alpha`` goes to cross-entropy on the labels.
        reduction: KL reduction, ``"batchmean"`` (true KL per sample, averaged) or ``"sum"``.
    """

    temperature: float = 1.0
    alpha: float = 1.0
    reduction: str = "batchmean"

    def validate(self) -> None:
        check_reduction(self.reduction)
        require_positive("temperature", self.temperature)
        require_between("alpha", self.alpha, 0.0, 1.0)


PAPER = Paper(
    "Distilling the Knowledge in a Neural Network",
    ("Geoffrey Hinton", "Oriol Vinyals", "Jeff Dean"),
    "NIPS Deep Learning and Representation Learning Workshop",
    2014,
    "https://arxiv.org/abs/1503.02531",
)


@register_method("kd", paper=PAPER)
class KD(Method):
    """Distil the teacher's soft labels on clean images; no adversarial examples (not robust)."""

    Config = KDConfig

    def loss(self, batch: Batch, student: nn.Module, teachers: Mapping[str, nn.Module],
             state: TrainState) -> dict[str, Tensor]:
        cfg = self.config
        t = cfg.temperature
        logits = student(batch["image"])
        target = soft_targets(clean_teacher_logits(batch, teachers), t)
        kl = kl_div(target, logits, reduction=cfg.reduction, temperature=t) * t**2
        out = {"kl": kl.detach()}
        loss = cfg.alpha * kl
        if cfg.alpha < 1.0:
            ce = F.cross_entropy(logits.float(), batch["label"])
            loss = loss + (1.0 - cfg.alpha) * ce
            out["ce"] = ce.detach()
        return {"loss": loss, **out}
