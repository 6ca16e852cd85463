"""PGD adversarial training (no teacher): the classic robust baseline.

Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018,
https://arxiv.org/abs/1706.06083.

    x' = argmax_{x' in B(x, eps)} CE(S(x'), y)        L = CE(S(x'), y)

The student sits in eval mode during the attack (AdaAD's "Plain_Madry" baseline and the shared default);
``attack.student_mode="train"`` gives Madry's original train-mode attack.

``awp_gamma > 0`` adds adversarial weight perturbation (AT-AWP, Wu et al., NeurIPS 2020; the reference code's
gamma for AT is 5e-3): L = CE(S_{w+v}(x'), y) with ``v`` from :mod:`robust_student.weight_perturbation`, one more
forward and backward per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks import objectives
from ..config import ConfigError
from ..weight_perturbation import WeightPerturbation
from .base import Batch, Method, MethodConfig, Paper, TrainState, register_method


@dataclass
class PGDATConfig(MethodConfig):
    """PGD-AT's only option; the threat and the attack loop are the run's.

    Attributes:
        awp_gamma: size of the adversarial weight perturbation relative to each layer's weight norm (0: plain
            PGD-AT, Madry et al.; 5e-3: AT-AWP's reference setting).
    """

    awp_gamma: float = 0.0

    def validate(self) -> None:
        if not 0 <= self.awp_gamma < 1:
            raise ConfigError("awp_gamma", f"must be in [0, 1), e.g. 0.005 (0 = off), got {self.awp_gamma}")


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
    _awp: WeightPerturbation | None = None

    def loss(self, batch: Batch, student: nn.Module, teachers: Mapping[str, nn.Module],
             state: TrainState) -> dict[str, Tensor]:
        x, y = batch["image"], batch["label"]
        x_adv = self.attack(objectives.ce(student, y), x, student)
        if self.config.awp_gamma:
            self._awp = WeightPerturbation(student, self.config.awp_gamma)
            self._awp.apply(lambda: F.cross_entropy(student(x_adv).float(), y))
        ce_adv = F.cross_entropy(student(x_adv).float(), y)
        return {"loss": ce_adv, "ce_adv": ce_adv.detach()}

    def after_backward(self) -> None:
        if self._awp is not None:
            self._awp.restore()
            self._awp = None
