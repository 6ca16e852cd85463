"""MMT-ARD: multimodal multi-teacher adversarial robust distillation from an adversarial and a clean teacher.

Li, Dong, Yang, Wen, Koniusz, Huang, Tian & Ong, "MMT-ARD: Multimodal Multi-Teacher Adversarial Distillation for
Robust Vision-Language Models", arXiv 2511.17448 (2025); reference code itsnotacie/MMT-ARD
(``train/adversarial_distill_clip_ddp.py``).

Teachers: ``adv`` (an adversarially fine-tuned CLIP: FARE, TeCoA ...) and ``clean`` (the original CLIP).

    x'      = argmax || E_S(x') - E_clean(x) ||_2^2                      (eq. 2; attack_objective="kl": the code's
                                                                           KL(p_clean(x) || p_S(x')))
    conf_T  = max softmax(T)                                             (eq. 3)
    rho     = conf_adv(x') / (conf_clean(x) + 1e-5)                     (eq. 4)
    w_adv   = sigmoid(slope * (rho - offset)),  w_clean = 1 - w_adv      (eqs. 5-6; slope 5, offset 1)
    L       = mean_b [ lambda_adv * w_adv * KL(p_adv(x') || p_S(x')) + lambda_clean * w_clean * KL(p_clean(x) || p_S(x)) ]

lambda_adv : lambda_clean = 3 : 0.5 (table 4's sweet spot). The weights are detached (computed from teacher
outputs only). Each model's logits use its own logit scale (the teacher's: CLIP 100; the student's is the
teacher's). ``weighting="code"``: the released code has no sigmoid; it weights each sample by the raw cosine
of the teacher's image embedding to the true class's text embedding (``cos(E_adv(x'), t_y)``,
``cos(E_clean(x), t_y)``) with constants 50 and 5 and a mean over B x C; with this option the cosines replace
``w_adv`` / ``w_clean``, and ``lambda_adv=50/C, lambda_clean=5/C`` reproduce the code's scale under
``batchmean``. Our PGD takes sign steps; the code's attack uses momentum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import Tensor, nn

from ..attacks import objectives
from ..config import require_at_least, require_choice
from ..losses import check_reduction, kl_div, soft_targets
from .base import (Batch, Method, MethodConfig, Paper, TrainState, clean_teacher_embeddings, clean_teacher_logits,
                   register_method)

CONFIDENCE_EPS = 1e-5  # eq. 4's denominator guard


@dataclass
class MMTARDConfig(MethodConfig):
    """Hyper-parameters of MMT-ARD.

    Attributes:
        attack_objective: ``"embedding"`` (eq. 2: squared L2 from the clean teacher's embedding of x) or
            ``"kl"`` (the released code: KL from the clean teacher's soft labels).
        weighting: ``"paper"`` (confidence ratio through a sigmoid, eqs. 3-6) or ``"code"`` (raw cosines to the
            true class's text embedding, as released).
        lambda_adv / lambda_clean: weights of the adversarial and clean distillation terms (3 : 0.5).
        slope / offset: the sigmoid of eq. 5 (equal confidences give 0.5 at offset 1).
        reduction: ``"batchmean"`` (the weighted per-sample loss averaged) or ``"sum"``.
    """

    attack_objective: str = "embedding"
    weighting: str = "paper"
    lambda_adv: float = 3.0
    lambda_clean: float = 0.5
    slope: float = 5.0
    offset: float = 1.0
    reduction: str = "batchmean"

    def validate(self) -> None:
        require_choice("attack_objective", self.attack_objective, ("embedding", "kl"))
        require_choice("weighting", self.weighting, ("paper", "code"))
        require_at_least("lambda_adv", self.lambda_adv, 0)
        require_at_least("lambda_clean", self.lambda_clean, 0)
        check_reduction(self.reduction)


def confidence_ratio(adv_logits: Tensor, clean_logits: Tensor) -> Tensor:
    """Eqs. 3-4: ``max softmax(adv) / (max softmax(clean) + 1e-5)`` per sample [B]."""
    conf_adv = adv_logits.float().softmax(dim=1).amax(dim=1)
    conf_clean = clean_logits.float().softmax(dim=1).amax(dim=1)
    return conf_adv / (conf_clean + CONFIDENCE_EPS)


def sigmoid_weights(rho: Tensor, slope: float, offset: float) -> tuple[Tensor, Tensor]:
    """Eqs. 5-6: ``w_adv = sigmoid(slope * (rho - offset))`` and ``w_clean = 1 - w_adv``."""
    w_adv = torch.sigmoid(slope * (rho - offset))
    return w_adv, 1.0 - w_adv


def true_class_cosine(embeddings: Tensor, classifier: Tensor, labels: Tensor) -> Tensor:
    """The released code's weight: cosine of each (L2-normalised) image embedding to its true class's text
    embedding (a column of the [D, C] classifier) [B]."""
    return (embeddings.float() * classifier.float()[:, labels].t()).sum(dim=1)


PAPER = Paper(
    "MMT-ARD: Multimodal Multi-Teacher Adversarial Distillation for Robust Vision-Language Models",
    ("Yuqi Li", "Junhao Dong", "Chuanguang Yang", "Shiping Wen", "Piotr Koniusz", "Tingwen Huang", "Yingli Tian",
     "Yew-Soon Ong"),
    "arXiv 2511.17448",
    2025,
    "https://arxiv.org/abs/2511.17448",
)


@register_method("mmt-ard", paper=PAPER)
class MMTARD(Method):
    """Distil an adversarial teacher on x' and a clean teacher on x, weighted per sample by their confidence."""

    Config = MMTARDConfig
    teacher_roles = ("adv", "clean")

    def setup(self, student: nn.Module, teachers: Mapping[str, nn.Module]) -> None:
        clean = teachers["clean"]
        dims = (getattr(student, "embed_dim", None), getattr(clean, "embed_dim", None))
        if self.config.attack_objective == "embedding" and None not in dims and dims[0] != dims[1]:
            raise ValueError(f"mmt-ard's embedding-space attack compares the student's embedding ({dims[0]}-d) "
                             f"with the clean teacher's ({dims[1]}-d); give teachers of the student's embedding "
                             "space, or method_args.attack_objective='kl'")

    def teacher_weights(self, batch: Batch, teachers: Mapping[str, nn.Module], adv_logits: Tensor,
                        adv_embeddings: Tensor | None, clean_logits: Tensor) -> tuple[Tensor, Tensor]:
        """``(w_adv, w_clean)`` per sample, detached: eqs. 3-6, or the code's true-class cosines."""
        if self.config.weighting == "paper":
            return sigmoid_weights(confidence_ratio(adv_logits, clean_logits), self.config.slope, self.config.offset)
        y = batch["label"]
        clean_embeddings = clean_teacher_embeddings(batch, teachers, "clean")
        return (true_class_cosine(adv_embeddings, teachers["adv"].classifier, y),
                true_class_cosine(clean_embeddings, teachers["clean"].classifier, y))

    def loss(self, batch: Batch, student: nn.Module, teachers: Mapping[str, nn.Module],
             state: TrainState) -> dict[str, Tensor]:
        cfg = self.config
        x = batch["image"]
        clean_logits = clean_teacher_logits(batch, teachers, "clean")
        if cfg.attack_objective == "embedding":
            objective = objectives.embedding_l2(student.encode_image, clean_teacher_embeddings(batch, teachers, "clean"))
        else:
            objective = objectives.kl_to(student, soft_targets(clean_logits))
        x_adv = self.attack(objective, x, student)
        adv_teacher = teachers["adv"]
        with torch.no_grad():
            if cfg.weighting == "code":
                adv_embeddings = adv_teacher.encode_image(x_adv).float()
                adv_logits = adv_teacher.classify(adv_embeddings).float()
            else:
                adv_embeddings, adv_logits = None, adv_teacher(x_adv).float()
            w_adv, w_clean = self.teacher_weights(batch, teachers, adv_logits, adv_embeddings, clean_logits)
        kl_adv = kl_div(soft_targets(adv_logits), student(x_adv), reduction="none")
        kl_clean = kl_div(soft_targets(clean_logits), student(x), reduction="none")
        per_sample = cfg.lambda_adv * w_adv * kl_adv + cfg.lambda_clean * w_clean * kl_clean
        loss = per_sample.sum() if cfg.reduction == "sum" else per_sample.mean()
        return {"loss": loss, "kl_adv": kl_adv.mean().detach(), "kl_clean": kl_clean.mean().detach(),
                "w_adv": w_adv.mean().detach(), "w_clean": w_clean.mean().detach()}
