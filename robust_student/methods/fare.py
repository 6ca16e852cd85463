"""FARE: unsupervised adversarial fine-tuning of a CLIP image tower against its own original embeddings.

Schlarmann, Singh, Croce & Hein, "Robust CLIP: Unsupervised Adversarial Fine-Tuning of Vision Embeddings for
Robust Large Vision-Language Models", ICML 2024, https://arxiv.org/abs/2402.12336; reference code
chs20/RobustVLM (``train/adversarial_training_clip.py``).

    x' = argmax_{||x' - x|| <= eps} || phi(x') - phi_orig(x) ||_2^2
    L  = mean_b || phi(x') - phi_orig(x) ||_2^2          (summed over embedding dimensions)

``phi`` is the student, ``phi_orig`` the frozen original tower (the teacher). No labels are used. The student
starts as the teacher's own image tower (``init_from_teacher``: :func:`start_from_teacher` copies it in
``setup`` and freezes the identity projection), so the tuned tower can be paired with the original text tower
again: save the run and use ``student:<run>/student`` as a teacher. With a compact student and
``init_from_teacher=False`` the same loss is robust embedding distillation (the projection then trains).

Deviations from the reference code: our one PGD takes sign steps without the code's momentum; embeddings are
raw (``output_normalize=False``, as the code) unless ``normalize_embeddings``; the code's ``--clean_weight``
is ``clean_weight``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import Tensor, nn

from ..attacks import objectives
from ..config import require_between
from ..students import start_from_teacher
from .base import Batch, Method, MethodConfig, Paper, TrainState, clean_teacher_embeddings, register_method


@dataclass
class FAREConfig(MethodConfig):
    """Hyper-parameters of FARE.

    Attributes:
        init_from_teacher: start the student as the teacher's image tower (copied in ``setup``; the projection
            is fixed to the identity) - FARE proper. ``False``: keep the student as built (distillation).
        normalize_embeddings: match L2-normalised embeddings instead of raw ones (the code: raw).
        clean_weight: weight of the clean term ``||phi(x) - phi_orig(x)||^2``; ``1 - clean_weight`` goes to the
            adversarial one (the code's ``--clean_weight``, default 0).
    """

    init_from_teacher: bool = True
    normalize_embeddings: bool = False
    clean_weight: float = 0.0

    def validate(self) -> None:
        require_between("clean_weight", self.clean_weight, 0.0, 1.0)


def squared_distance(a: Tensor, b: Tensor) -> Tensor:
    """``||a - b||_2^2`` per row [B], in float32."""
    return (a.float() - b.float()).pow(2).sum(dim=1)


PAPER = Paper(
    "Robust CLIP: Unsupervised Adversarial Fine-Tuning of Vision Embeddings for Robust Large Vision-Language Models",
    ("Christian Schlarmann", "Naman Deep Singh", "Francesco Croce", "Matthias Hein"),
    "ICML",
    2024,
    "https://arxiv.org/abs/2402.12336",
)


@register_method("fare", paper=PAPER)
class FARE(Method):
    """Fine-tune the student's image tower so that its embedding of x' stays at the original's embedding of x."""

    Config = FAREConfig

    def setup(self, student: nn.Module, teachers: Mapping[str, nn.Module]) -> None:
        if self.config.init_from_teacher:
            start_from_teacher(student, teachers["teacher"])

    def _encoder(self, student: nn.Module) -> Callable[[Tensor], Tensor]:
        normalize = self.config.normalize_embeddings
        return lambda x: student.encode_image(x, normalize=normalize)

    def target_embeddings(self, batch: Batch, teachers: Mapping[str, nn.Module]) -> Tensor:
        """The frozen original tower's embeddings of the clean images (raw, or normalised and cacheable)."""
        if self.config.normalize_embeddings:
            return clean_teacher_embeddings(batch, teachers)
        with torch.no_grad():
            return teachers["teacher"].encode_image(batch["image"], normalize=False).float()

    def loss(self, batch: Batch, student: nn.Module, teachers: Mapping[str, nn.Module],
             state: TrainState) -> dict[str, Tensor]:
        x = batch["image"]
        target = self.target_embeddings(batch, teachers)
        encode = self._encoder(student)
        x_adv = self.attack(objectives.embedding_l2(encode, target), x, student)
        adv = squared_distance(encode(x_adv), target).mean()
        w = self.config.clean_weight
        if w == 0:
            return {"loss": adv, "l2_adv": adv.detach()}
        clean = squared_distance(encode(x), target).mean()
        return {"loss": (1 - w) * adv + w * clean, "l2_adv": adv.detach(), "l2_clean": clean.detach()}
