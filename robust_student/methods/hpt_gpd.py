"""HPT-GPD: heterogeneous proxy transfer with generalization-pivot decoupling.

Fu, Huang & Zhang, "Proxy Robustness in Vision Language Models is Effortlessly Transferable", arXiv 2601.12865
(2026); reference code fxw13/HPT-GPD (``HPT-GPD.py``; the method's loss is only in commits 9fb0669 / 7a7ea96,
the released HEAD does not run).

Teachers: ``target`` - the CLIP being made robust (its text embeddings are the student's classifier, and
student ``clip`` starts as its image tower) - and ``proxy``, a vanilla CLIP of a *different* architecture
(no adversarial training: "proxy adversarial robustness"). ``setup`` builds ``anchor``, a frozen copy of the
student's initial weights (the released code's second copy of the original ViT-B/32).

    x'      = argmax CE(S(x'), y)                        (zero-shot logits; student in eval mode)
    L_HPT   = KL(p_proxy(x') || p_S(x')) + lambda_anchor * KL(p_anchor(x) || p_S(x'))      lambda_anchor 0.001

GPD, as implemented here: training is split at ``warmup_fraction`` of the optimiser steps into

1. a generalisation-anchored warm-up: the lr rises linearly from 0 to the base lr (the released code's
   ``cosine_lr`` warm-up, 1000 steps there), and with ``warmup_loss="anchor"`` (default) the loss is dominated
   by the anchor: ``KL(p_anchor(x) || p_S(x')) + lambda_anchor * KL(p_proxy(x') || p_S(x'))`` (the weights of
   the two terms swapped);
2. the generalisation-pulled HPT phase: cosine decay of the lr from the base lr to 0 and the HPT loss.

The schedule is declared through :meth:`lr_factor` for the student's (and the method's) param groups and
replaces ``train.scheduler`` / ``train.warmup_epochs`` for them. What is ours, not the authors': the paper text
was not available (only its abstract), and the released code shows GPD only as the linear-warm-up + cosine
schedule with the HPT loss from the first step; that is ``warmup_loss="hpt"``. The anchor-dominated warm-up
loss is our reading of "generalization-anchored warm-up"; the split point (10 %) is ours (the code: 1000 of
~2000 steps at CIFAR-100 / batch 256 / 10 epochs). Other departures from the code: KLs are ``batchmean`` (the
code: ``sum``, a factor B); logits keep each model's logit scale (the code's first commits re-normalise them
to temperature 1, its HEAD keeps 100); inputs are attacked in [0, 1] pixels with the model's own
normalisation inside (the code normalises with ImageNet statistics); no AMP; the proxy and anchor run without
gradients.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import Tensor, nn

from ..attacks import objectives
from ..config import require_at_least, require_between, require_choice
from ..losses import check_reduction, kl_div, soft_targets
from .base import Batch, Method, MethodConfig, Paper, TrainState, register_method


@dataclass
class HPTGPDConfig(MethodConfig):
    """Hyper-parameters of HPT-GPD.

    Attributes:
        lambda_anchor: weight of the anchor term in the HPT phase (the code: 0.001).
        warmup_fraction: fraction of the optimiser steps in the GPD warm-up phase.
        warmup_loss: ``"anchor"`` (anchor-dominated warm-up loss) or ``"hpt"`` (the HPT loss throughout, as the
            released code).
        reduction: KL reduction (``"batchmean"`` or ``"sum"``; the code: sum).
    """

    lambda_anchor: float = 0.001
    warmup_fraction: float = 0.1
    warmup_loss: str = "anchor"
    reduction: str = "batchmean"

    def validate(self) -> None:
        require_at_least("lambda_anchor", self.lambda_anchor, 0)
        require_between("warmup_fraction", self.warmup_fraction, 0.0, 1.0)
        require_choice("warmup_loss", self.warmup_loss, ("anchor", "hpt"))
        check_reduction(self.reduction)


def warmup_steps(fraction: float, total_steps: int) -> int:
    """Optimiser steps in the GPD warm-up phase."""
    return int(round(fraction * total_steps))


def gpd_lr_factor(step: int, total_steps: int, fraction: float) -> float:
    """GPD's schedule: linear warm-up ``(step + 1) / W`` over the first ``W`` steps, then cosine to 0."""
    w = warmup_steps(fraction, total_steps)
    if step < w:
        return (step + 1) / w
    span = max(1, total_steps - w)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - w) / span)))


PAPER = Paper(
    "Proxy Robustness in Vision Language Models is Effortlessly Transferable",
    ("Xiaowei Fu", "Fuxiang Huang", "Lei Zhang"),
    "arXiv 2601.12865",
    2026,
    "https://arxiv.org/abs/2601.12865",
)


@register_method("hpt-gpd", paper=PAPER)
class HPTGPD(Method):
    """Distil a heterogeneous vanilla proxy on x' while a frozen copy of the student's start anchors it."""

    Config = HPTGPDConfig
    teacher_roles = ("target", "proxy")

    def setup(self, student: nn.Module, teachers: Mapping[str, nn.Module]) -> None:
        self.anchor = copy.deepcopy(student).requires_grad_(False).eval()

    def train(self, mode: bool = True) -> "HPTGPD":
        super().train(mode)
        if hasattr(self, "anchor"):
            self.anchor.eval()  # the anchor is frozen: never batch statistics, never dropout
        return self

    def phase(self, state: TrainState) -> str:
        """``"warmup"`` (generalisation-anchored) or ``"hpt"`` (generalisation-pulled) at ``state.step``."""
        return "warmup" if state.step < warmup_steps(self.config.warmup_fraction, state.total_steps) else "hpt"

    def lr_factor(self, group: str, state: TrainState, default: float) -> float:
        if group.startswith("teacher:"):
            return default
        return gpd_lr_factor(state.step, state.total_steps, self.config.warmup_fraction)

    def term_weights(self, state: TrainState) -> tuple[float, float]:
        """``(proxy weight, anchor weight)`` of the loss at ``state``."""
        lam = self.config.lambda_anchor
        if self.phase(state) == "warmup" and self.config.warmup_loss == "anchor":
            return lam, 1.0
        return 1.0, lam

    def loss(self, batch: Batch, student: nn.Module, teachers: Mapping[str, nn.Module],
             state: TrainState) -> dict[str, Tensor]:
        if not hasattr(self, "anchor"):
            raise RuntimeError("hpt-gpd builds its anchor (a frozen copy of the student) in setup: call "
                               "method.setup(student, teachers) before the first loss")
        cfg = self.config
        x, y = batch["image"], batch["label"]
        x_adv = self.attack(objectives.ce(student, y), x, student)
        with torch.no_grad():
            proxy_adv = teachers["proxy"](x_adv).float()
            anchor_clean = self.anchor(x).float()
        s_adv = student(x_adv)
        kl_proxy = kl_div(soft_targets(proxy_adv), s_adv, reduction=cfg.reduction)
        kl_anchor = kl_div(soft_targets(anchor_clean), s_adv, reduction=cfg.reduction)
        w_proxy, w_anchor = self.term_weights(state)
        return {"loss": w_proxy * kl_proxy + w_anchor * kl_anchor, "kl_proxy": kl_proxy.detach(),
                "kl_anchor": kl_anchor.detach(), "warmup": torch.tensor(float(self.phase(state) == "warmup"))}
