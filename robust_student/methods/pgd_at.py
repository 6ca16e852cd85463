"""PGD adversarial training (no teacher): the classic robust baseline.

Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018,
https://arxiv.org/abs/1706.06083.

    x' = argmax_{x' in B(x, eps)} CE(S(x'), y)        L = CE(S(x'), y)

The student sits in eval mode during the attack (AdaAD's "Plain_Madry" baseline and the shared default);
``attack.student_mode="train"`` gives Madry's original train-mode attack.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks import objectives
from .base import Batch, Method, MethodConfig, Paper, TrainState, register_method


@dataclass
class PGDATConfig(MethodConfig):
    """PGD-AT has no hyper-parameters of its own: the threat and the attack loop are the run's."""


PAPER = Paper(
    "Towards Deep Learning Models Resistant to Adversarial Attacks",
    ("Aleksander Madry", "Aleksandar Makelov", "Ludwig Schmidt", "Dimitris Tsipras", "Adrian Vladu"),
    "ICLR",
    2018,
    "https://arxiv.org/abs/1706.06083",
)


@register_method("pgd-at", paper=PAPER)
class PGDAT(Method):
    """Train the student on its own CE-PGD adversarial examples; uses no teacher."""

    Config = PGDATConfig
    teacher_roles = ()

    def loss(self, batch: Batch, student: nn.Module, teachers: Mapping[str, nn.Module],
             state: TrainState) -> dict[str, Tensor]:
        x, y = batch["image"], batch["label"]
        x_adv = self.attack(objectives.ce(student, y), x, student)
        ce_adv = F.cross_entropy(student(x_adv).float(), y)
        return {"loss": ce_adv, "ce_adv": ce_adv.detach()}
