"""TeCoA: text-guided contrastive adversarial fine-tuning of a CLIP image tower.

Mao, Geng, Yang, Wang & Vondrick, "Understanding Zero-Shot Adversarial Robustness for Large-Scale Models",
ICLR 2023, https://arxiv.org/abs/2212.07016; reference code cvlab-columbia/ZSRobust4FoundationModel
(``finetuning.py``) and the re-implementation in chs20/RobustVLM.

    x' = argmax CE(z(x'), y)          z = logit_scale * normalize(phi(x')) @ text_embeddings
    L  = CE(z(x'), y)

The zero-shot logits use the teacher's class text embeddings (the student's frozen classifier) at the
teacher's logit scale (CLIP: 100). The student starts as the teacher's own image tower
(``init_from_teacher``, as FARE), so the tuned tower pairs with the original text tower again
(``student:<run>/student``). Our PGD takes sign steps without RobustVLM's momentum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks import objectives
from ..students import start_from_teacher
from .base import Batch, Method, MethodConfig, Paper, TrainState, register_method


@dataclass
class TeCoAConfig(MethodConfig):
    """Hyper-parameters of TeCoA.

    Attributes:
        init_from_teacher: start the student as the teacher's image tower (copied in ``setup``, identity
            projection frozen); ``False`` keeps the student as built (then TeCoA is PGD-AT on zero-shot logits).
    """

    init_from_teacher: bool = True


PAPER = Paper(
    "Understanding Zero-Shot Adversarial Robustness for Large-Scale Models",
    ("Chengzhi Mao", "Scott Geng", "Junfeng Yang", "Xin Wang", "Carl Vondrick"),
    "ICLR",
    2023,
    "https://arxiv.org/abs/2212.07016",
)


@register_method("tecoa", paper=PAPER)
class TeCoA(Method):
    """Cross-entropy of the student's zero-shot logits on CE-PGD examples, from the teacher's own tower."""

    Config = TeCoAConfig

    def setup(self, student: nn.Module, teachers: Mapping[str, nn.Module]) -> None:
        if self.config.init_from_teacher:
            start_from_teacher(student, teachers["teacher"])

    def loss(self, batch: Batch, student: nn.Module, teachers: Mapping[str, nn.Module],
             state: TrainState) -> dict[str, Tensor]:
        x, y = batch["image"], batch["label"]
        x_adv = self.attack(objectives.ce(student, y), x, student)
        ce = F.cross_entropy(student(x_adv).float(), y)
        return {"loss": ce, "ce_adv": ce.detach()}
