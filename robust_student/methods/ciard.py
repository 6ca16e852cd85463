"""CIARD: cyclic iterative adversarial robustness distillation (dual teacher, push loss, teacher retraining).

Lu, Pang, Zheng, Gu, Du, Liu & Zhou, "CIARD: Cyclic Iterative Adversarial Robustness Distillation", ICCV 2025,
https://arxiv.org/abs/2509.12633; reference code eminentgu/CIARD (``CIARD.py``).

Teachers: ``adv`` (robust; it keeps training: "iterative teacher training") and ``nat`` (clean, frozen).

    x'     = argmax CE(S(x'), y)                                   (student in eval mode)
    L1     = KL(softmax(T_adv(x') / tau_adv) || S(x'))
    L2     = KL(softmax(T_nat(x) / tau_nat) || S(x))
    M      = { b : argmax T_nat(x')_b != y_b }                     (the natural teacher's mistakes at x')
    L_push = KL(softmax(T_nat(x')_M) || softmax(S(x')_M / 5))      (0 when M is empty)
    w      = 10^(min(floor log10 L1, floor log10 L2) - floor log10 L_push)      (magnitude matching, detached)
    L      = L1 + L2 - push_weight * w * L_push   (+ CE(T_adv(x'), y), which trains only the adv teacher)

Temperatures (MTARD's entropy balance, buffers, so checkpoints carry them): after each step
``tau_adv -= lr_tau * sign(H_adv / H_nat - 1)`` and ``tau_nat -= lr_tau * sign(H_nat / H_adv - 1)``, clipped to
[1, 10], where H is the mean entropy of each teacher's tempered soft labels; ``lr_tau`` 0.001, x0.1 at 215, 260
and 285 of 300 epochs (as fractions of training).

The adv teacher trains through the trainer's trainable-teacher mechanism (``trainable_teacher_roles``: by
default its head, ``TeacherSpec(trainable="all")`` for everything), in its own param group with the code's
SGD settings (lr 1e-4, momentum 0.1, weight decay 2e-4: :meth:`teacher_optimizer_options`, ``TeacherSpec.lr``
overrides the lr). Its schedule (:meth:`lr_factor`): 0 for the first ``teacher_warmup_fraction`` of training
(50 of the paper's 300 epochs), then the code's ``0.5 (1 + cos(pi u)) exp(-0.01 u^2)`` over the rest. During
the warm-up its CE still back-propagates at lr 0, so its weights stay bit-identical (and a multi-process run
has no unused parameters).

Deviations from the released code: KLs are ``batchmean`` (the code averages over B x C: a factor C; the
magnitude-matched push weight is unchanged by it); the code's MTARD loss weights are computed but unused in the
release (commit 255be6b), so L1 and L2 have weight 1 here too; the entropies are true entropies (the code's
mean of p log p differs by the constant -C, which leaves the ratio unchanged); the teacher trains in its mode
of a trainable role (the code keeps the whole robust teacher in train mode, drifting its BN statistics).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks import objectives
from ..config import require_at_least, require_between, require_choice, require_positive
from ..losses import check_reduction, kl_div, soft_targets
from .base import Batch, Method, MethodConfig, Paper, TrainState, clean_teacher_logits, register_method


@dataclass
class CIARDConfig(MethodConfig):
    """Hyper-parameters of CIARD (the released code's values).

    Attributes:
        push_weight: lambda of the push loss (the code: 1), on top of the magnitude-matching factor.
        push_temperature: temperature of the student's logits in the push loss (5; the teacher's is 1).
        magnitude_matching: scale the push loss to the order of magnitude of L1 / L2 (the code) or not.
        temperature_lr: step of the entropy-balanced temperature update (0.001).
        temperature_lr_decay_at: fractions of training after which ``temperature_lr`` is multiplied by 0.1
            (the code: epochs 215, 260, 285 of 300).
        temperature_min / temperature_max: clip of both temperatures ([1, 10]).
        teacher_warmup_fraction: fraction of training before the adv teacher starts to train (50 / 300).
        teacher_lr / teacher_momentum / teacher_weight_decay: the adv teacher's SGD settings (1e-4, 0.1, 2e-4).
        teacher_schedule: ``"code"`` (cosine x exp decay after the warm-up) or ``"constant"``.
        reduction: KL reduction (``"batchmean"`` or ``"sum"``).
    """

    push_weight: float = 1.0
    push_temperature: float = 5.0
    magnitude_matching: bool = True
    temperature_lr: float = 0.001
    temperature_lr_decay_at: list[float] = field(default_factory=lambda: [215 / 300, 260 / 300, 285 / 300])
    temperature_min: float = 1.0
    temperature_max: float = 10.0
    teacher_warmup_fraction: float = 50 / 300
    teacher_lr: float = 1e-4
    teacher_momentum: float = 0.1
    teacher_weight_decay: float = 2e-4
    teacher_schedule: str = "code"
    reduction: str = "batchmean"

    def validate(self) -> None:
        check_reduction(self.reduction)
        require_at_least("push_weight", self.push_weight, 0)
        require_positive("push_temperature", self.push_temperature)
        require_at_least("temperature_lr", self.temperature_lr, 0)
        require_positive("temperature_min", self.temperature_min)
        require_at_least("temperature_max", self.temperature_max, self.temperature_min)
        require_between("teacher_warmup_fraction", self.teacher_warmup_fraction, 0.0, 1.0)
        require_at_least("teacher_lr", self.teacher_lr, 0)
        require_at_least("teacher_momentum", self.teacher_momentum, 0)
        require_at_least("teacher_weight_decay", self.teacher_weight_decay, 0)
        require_choice("teacher_schedule", self.teacher_schedule, ("code", "constant"))


def push_set(nat_adv_logits: Tensor, labels: Tensor) -> Tensor:
    """The push set M as a boolean mask [B]: samples whose x' the natural teacher misclassifies."""
    return nat_adv_logits.argmax(dim=1) != labels


def _order(value: float) -> int:
    """``floor(log10 |value|)``, with the code's guard (a value that is ~0 counts as 1e-7)."""
    value = abs(value)
    if math.isclose(value, 0.0, abs_tol=1e-9):
        value += 1e-7
    return math.floor(math.log10(value))


def magnitude_weight(l1: float, l2: float, l_push: float) -> float:
    """``10^(min(floor log10 L1, floor log10 L2) - floor log10 L_push)``: the push loss at the others' scale."""
    return 10.0 ** (min(_order(l1), _order(l2)) - _order(l_push))


def mean_entropy(probs: Tensor) -> Tensor:
    """Mean Shannon entropy (nats) of the rows of ``probs``."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(dim=1).mean()


def updated_temperatures(tau_adv: float, tau_nat: float, h_adv: float, h_nat: float, lr: float,
                         low: float, high: float) -> tuple[float, float]:
    """The entropy-balancing step: the teacher with the larger entropy is sharpened, the other softened."""
    h_adv, h_nat = max(h_adv, 1e-12), max(h_nat, 1e-12)
    sign = lambda v: (v > 0) - (v < 0)  # noqa: E731
    tau_adv = tau_adv - lr * sign(h_adv / h_nat - 1)
    tau_nat = tau_nat - lr * sign(h_nat / h_adv - 1)
    return min(max(tau_adv, low), high), min(max(tau_nat, low), high)


PAPER = Paper(
    "CIARD: Cyclic Iterative Adversarial Robustness Distillation",
    ("Liming Lu", "Shuchao Pang", "Xu Zheng", "Xiang Gu", "Anan Du", "Yunhuai Liu", "Yongbin Zhou", "others"),
    "ICCV",
    2025,
    "https://arxiv.org/abs/2509.12633",
)


@register_method("ciard", paper=PAPER)
class CIARD(Method):
    """Distil a retrained adv teacher on x' and a frozen nat teacher on x, pushing away from the nat teacher's
    mistakes; entropy-balanced temperatures."""

    Config = CIARDConfig
    teacher_roles = ("adv", "nat")
    trainable_teacher_roles = ("adv",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("tau_adv", torch.tensor(1.0))
        self.register_buffer("tau_nat", torch.tensor(1.0))

    def teacher_optimizer_options(self, role: str) -> dict[str, Any]:
        cfg = self.config
        return {"lr": cfg.teacher_lr, "momentum": cfg.teacher_momentum, "weight_decay": cfg.teacher_weight_decay}

    def lr_factor(self, group: str, state: TrainState, default: float) -> float:
        if group != "teacher:adv":
            return default
        warmup = self.config.teacher_warmup_fraction
        if state.progress < warmup:
            return 0.0
        if self.config.teacher_schedule == "constant" or warmup >= 1.0:
            return 1.0
        u = (state.progress - warmup) / (1.0 - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * u)) * math.exp(-0.01 * u * u)

    def teacher_trains(self, state: TrainState) -> bool:
        """Whether the adv teacher's CE counts at ``state`` (after the warm-up)."""
        return state.progress >= self.config.teacher_warmup_fraction

    def loss(self, batch: Batch, student: nn.Module, teachers: Mapping[str, nn.Module],
             state: TrainState) -> dict[str, Tensor]:
        cfg = self.config
        x, y = batch["image"], batch["label"]
        x_adv = self.attack(objectives.ce(student, y), x, student)
        adv_teacher = teachers["adv"]
        trainable = any(p.requires_grad for p in adv_teacher.parameters())
        with torch.set_grad_enabled(trainable and torch.is_grad_enabled()):
            adv_at_adv = adv_teacher(x_adv).float()
        nat_clean = clean_teacher_logits(batch, teachers, "nat")
        with torch.no_grad():
            nat_at_adv = teachers["nat"](x_adv).float()
        s_adv, s_nat = student(x_adv), student(x)
        target_adv = soft_targets(adv_at_adv, float(self.tau_adv))
        target_nat = soft_targets(nat_clean, float(self.tau_nat))
        l1 = kl_div(target_adv, s_adv, reduction=cfg.reduction)
        l2 = kl_div(target_nat, s_nat, reduction=cfg.reduction)
        mask = push_set(nat_at_adv, y)
        if mask.any():
            l_push = kl_div(soft_targets(nat_at_adv[mask]), s_adv[mask], reduction=cfg.reduction,
                            temperature=cfg.push_temperature)
            w = magnitude_weight(l1.item(), l2.item(), l_push.item()) if cfg.magnitude_matching else 1.0
        else:
            l_push, w = s_adv.new_zeros(()), 0.0
        loss = l1 + l2 - cfg.push_weight * w * l_push
        out = {"kl_adv": l1.detach(), "kl_nat": l2.detach(), "push": l_push.detach(),
               "push_weight": torch.tensor(float(w)), "push_fraction": mask.float().mean(),
               "entropy_adv": mean_entropy(target_adv), "entropy_nat": mean_entropy(target_nat),
               "tau_adv": self.tau_adv.detach().clone(), "tau_nat": self.tau_nat.detach().clone()}
        if trainable and adv_at_adv.requires_grad:
            teacher_ce = F.cross_entropy(adv_at_adv, y)  # reaches only the teacher: x' and its targets are detached
            loss = loss + (1.0 if self.teacher_trains(state) else 0.0) * teacher_ce
            out["adv_teacher_ce"] = teacher_ce.detach()
        return {"loss": loss, **out}

    def on_step_end(self, outputs: Mapping[str, Tensor], state: TrainState) -> None:
        cfg = self.config
        lr = cfg.temperature_lr * 0.1 ** sum(state.progress >= m for m in cfg.temperature_lr_decay_at)
        tau_adv, tau_nat = updated_temperatures(float(self.tau_adv), float(self.tau_nat),
                                                float(outputs["entropy_adv"]), float(outputs["entropy_nat"]), lr,
                                                cfg.temperature_min, cfg.temperature_max)
        self.tau_adv.fill_(tau_adv)
        self.tau_nat.fill_(tau_nat)
