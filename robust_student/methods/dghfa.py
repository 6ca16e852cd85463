"""DGHFA: Dynamic Gradient and Hierarchical Feature Alignment (the headline method).

Xiao, Wu, Zhong, Zou, Wu, Wang, Zhang, "DGHFA: Dynamic Gradient and Hierarchical Feature Alignment for Robust
Distillation of Medical VLMs", MICCAI 2025 (``shared/papers/dghfa.txt``; no public code). The teacher is a
frozen medical VLM (CONCH, CXR-CLIP); the student is a compact image encoder projected into the teacher's
embedding space, and the teacher's text embeddings classify both. One training step:

1. Inner maximisation (eq. 7): ``x' = argmax CE(S(x'), y)`` with the run's PGD (L-inf 8/255, 10 steps of
   2/255, start ``x + 0.001 N(0, 1)``, student in eval mode); the iterates at ``N_m`` evenly spaced steps are
   kept for HPFA (:func:`hpfa_steps`), so the hierarchy of perturbation strengths costs nothing extra.
2. Perceptually aligned gradients (eq. 1): ``L_PAG(x) = ||g_S(x) - g_T(x)||_2^2`` per sample with
   ``g = d CE(model(x), y) / dx``. The paper writes gradients w.r.t. ``theta_img``, but teacher and student
   have different parameters, so (as in PAG, Aggarwal et al. 2020) the gradients are w.r.t. the input image.
   ``g_T`` is a plain input-gradient of the frozen teacher; ``g_S`` is built with ``create_graph=True`` so that
   ``L_PAG`` trains the student (double backward, run under the math attention kernel because SDPA's fused
   kernels have no double backward). ``g_S`` is taken with the student in eval mode: batch-norm then uses
   running statistics, so each sample's gradient is exactly its own (train-mode batch statistics would add
   cross-sample terms) and it is the gradient the attacker sees.
3. Sample weight (eq. 2): ``alpha(x) = 1 - max_c softmax(T(x))_c`` (hard samples weigh more).
4. Class weight (eq. 3): per class ``R_c`` = mean CE of the student on its adversarial examples over the
   epoch, ``tau_c <- max(0, tau_c + sign * gamma * (R_c - R_bar) / max_k |R_k - R_bar|)`` once per epoch.
   The printed eq. 3 has a minus sign, but the text says vulnerable classes get *larger* weights; the
   default ``class_weight_sign=+1`` follows the text, ``-1`` reproduces the printed equation.
5. DWGA (eq. 4): ``L_DWGA = mean over classes c in the batch of mean_{x in c} (alpha(x) + phi tau_c) L_PAG(x)``.
6. HPFA (eqs. 5-6): ``L_HPFA = sum_s w_{s,t} ||E_S(x) - E_S(x'_s)||_2^2`` (batch mean) over the student's
   L2-normalised embeddings, ``w_{s,t} = softmax_s(beta * s * t / T)``, ``t`` the (0-based) epoch and ``T``
   the number of epochs: uniform in the first epoch, shifting towards the strongest iterates.
7. Total (eq. 9): ``CE(S(x), y) + CE(S(x'), y) + KL(T(x) || S(x)) + lambda1 L_DWGA + lambda2 L_HPFA``; the
   KL is ``batchmean`` at the teacher's own logit scale (temperature 1).

The ablation of the paper's figure 2(a) is reproduced by two switches, collected in :data:`ABLATIONS`:
plain adversarial distillation (``gradient_alignment="none", hpfa=False``), ``+PAG`` (``"pag"``: unweighted
``mean L_PAG`` times ``lambda1``), ``PAG -> DWGA`` (``"dwga"``) and ``+HPFA`` (the full method).

Implementation notes. The adversarial iterates go through the student in one concatenated train-mode forward
(batch-norm statistics over all strengths together); the final iterate's logits give ``CE(S(x'), y)``. The
per-class risk sums are buffers, so checkpoints carry them; under ``torch.distributed`` each batch's class
sums are all-reduced before they are added, so every rank holds the same totals and the epoch-end update
sees the whole epoch.

``normalize_grads`` (default ``True``) divides each per-sample gradient by its L2 norm before the difference,
so ``L_PAG = 2 - 2 cos(g_S, g_T)`` is in [0, 4] and only the gradient *direction* is aligned. Why: teacher and
student gradients live on different scales (the teacher's logit scale, its own resolution and normalisation),
so the raw difference is dominated by the scale mismatch rather than by where the gradients point. Measured
(``benchmarks/results/dghfa_fmnist.md``, Fashion-MNIST, ``fmnist-clip`` -> ``resnet_tiny``, same budget): with
normalised gradients DGHFA ends at 76.2 % clean / 48.4 % PGD-20 (eps 0.1); with the raw difference
(``dghfa-raw-grads``) ``L_DWGA`` is ~90 % of the loss (59 of 66 at the first log, 83 of 90 at the last), the
student-teacher gradient cosine stays near 0, clean CE rises, and the student collapses to 34.6 % clean /
0.4 % PGD-20. ``normalize_grads=False`` gives the paper's literal squared difference; its scale follows the
teacher's and student's gradient norms, so ``lambda_dwga`` would need retuning (not measured here).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..attacks import objectives
from ..attacks import eval_mode
from ..config import ConfigError
from ..losses import kl_div, soft_targets
from .base import Batch, Method, MethodConfig, Paper, TrainState, clean_teacher_logits, register_method

logger = logging.getLogger(__name__)

GRADIENT_ALIGNMENTS = ("none", "pag", "dwga")

# The steps of the paper's ablation (figure 2(a)), as method_args for create_method("dghfa", ...).
ABLATIONS: dict[str, dict[str, object]] = {
    "ad": {"gradient_alignment": "none", "hpfa": False},     # plain adversarial distillation (eq. 9 w/o 4, 5)
    "ad+pag": {"gradient_alignment": "pag", "hpfa": False},  # + unweighted gradient alignment (eq. 1)
    "ad+dwga": {"gradient_alignment": "dwga", "hpfa": False},  # PAG replaced by its weighted form (eq. 4)
    "dghfa": {"gradient_alignment": "dwga", "hpfa": True},   # + hierarchical feature alignment (eq. 5): full
}


@dataclass
class DGHFAConfig(MethodConfig):
    """DGHFA hyper-parameters; defaults are the paper's (MICCAI 2025, section 3.1 and figure 2).

    Attributes:
        gradient_alignment: ``"dwga"`` (eq. 4, the method), ``"pag"`` (unweighted eq. 1, an ablation step) or
            ``"none"`` (plain adversarial distillation).
        hpfa: add the hierarchical perturbation feature alignment term (eq. 5).
        lambda_dwga: ``lambda1`` in eq. 9, the weight of L_DWGA (or of L_PAG when ``gradient_alignment="pag"``).
        lambda_hpfa: ``lambda2`` in eq. 9, the weight of L_HPFA.
        ce_clean_weight, ce_adv_weight, kl_weight: weights of ``CE(S(x), y)``, ``CE(S(x'), y)`` and
            ``KL(T(x) || S(x))`` in eq. 9 (1 in the paper).
        phi: balance of the class weight against the sample weight in eq. 4 (figure 2(b): 2 is best).
        gamma: step of the class-weight update, eq. 3, in (0, 1).
        tau_init: initial class weight.
        class_weight_sign: ``+1``: classes with higher adversarial risk gain weight (the paper's text);
            ``-1``: eq. 3 exactly as printed.
        beta: rate of the HPFA weight transition, eq. 6.
        num_intermediate: ``N_m``, how many PGD iterates HPFA aligns (figure 2(c): plateau from 6); at most
            the number of PGD steps.
        normalize_grads: unit-normalise each per-sample input-gradient before the PAG difference (see the
            module docstring for why this is the default).
    """

    gradient_alignment: str = "dwga"
    hpfa: bool = True
    lambda_dwga: float = 1.0
    lambda_hpfa: float = 1.0
    ce_clean_weight: float = 1.0
    ce_adv_weight: float = 1.0
    kl_weight: float = 1.0
    phi: float = 2.0
    gamma: float = 0.1
    tau_init: float = 1.0
    class_weight_sign: float = 1.0
    beta: float = 2.0
    num_intermediate: int = 6
    normalize_grads: bool = True

    def validate(self) -> None:
        if self.gradient_alignment not in GRADIENT_ALIGNMENTS:
            raise ConfigError("gradient_alignment", f"must be one of {GRADIENT_ALIGNMENTS}, "
                                                    f"got {self.gradient_alignment!r}")
        if self.class_weight_sign not in (1, -1):
            raise ConfigError("class_weight_sign", f"must be +1 (the paper's text) or -1 (eq. 3 as printed), "
                                                   f"got {self.class_weight_sign!r}")
        if not 0 < self.gamma < 1:
            raise ConfigError("gamma", f"must be in (0, 1), got {self.gamma}")
        if self.tau_init < 0:
            raise ConfigError("tau_init", f"must be >= 0, got {self.tau_init}")
        if self.num_intermediate < 1:
            raise ConfigError("num_intermediate", f"must be >= 1, got {self.num_intermediate}")


# -- the pieces, as functions of tensors (unit-tested on their own) --------------------------------------------

def sample_weights(teacher_logits: Tensor) -> Tensor:
    """Eq. 2: ``alpha(x) = 1 - max_c softmax(T(x))_c`` per sample, detached."""
    return 1.0 - soft_targets(teacher_logits).amax(dim=1)


def hpfa_steps(steps: int, num_intermediate: int) -> list[int]:
    """The PGD steps (1..steps) whose iterates HPFA uses: ``N_m`` evenly spaced, ending at the last step.

    ``hpfa_steps(10, 6) == [2, 3, 5, 7, 8, 10]`` (``round(s * steps / N_m)``, halves rounded up).
    """
    if not 1 <= num_intermediate <= steps:
        raise ValueError(f"HPFA needs 1 <= num_intermediate <= PGD steps, got num_intermediate={num_intermediate} "
                         f"with {steps} steps (raise attack.steps or lower method_args.num_intermediate)")
    return [math.floor(s * steps / num_intermediate + 0.5) for s in range(1, num_intermediate + 1)]


def hpfa_weights(num_intermediate: int, epoch: int, total_epochs: int, beta: float) -> Tensor:
    """Eq. 6: ``w_{s,t} = softmax_s(beta * s * t / T)`` for ``s = 1..N_m`` (uniform at ``t = 0``)."""
    s = torch.arange(1, num_intermediate + 1, dtype=torch.float32)
    return torch.softmax(beta * s * (epoch / max(1, total_epochs)), dim=0)


def _full_precision(t: Tensor) -> Tensor:
    """float32 for half/bfloat16/float32 tensors; float64 stays float64 (finite-difference tests use it)."""
    return t if t.dtype == torch.float64 else t.float()


def input_gradient(logits_fn: nn.Module, x: Tensor, y: Tensor, *, create_graph: bool) -> Tensor:
    """``d CE(model(x), y) / dx`` per sample (summed CE, so each row is that sample's own gradient)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(_full_precision(logits_fn(x)), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x, create_graph=create_graph)
    return grad


def pag_loss(student_grad: Tensor, teacher_grad: Tensor, *, normalize: bool) -> Tensor:
    """Eq. 1 per sample: ``||g_S - g_T||_2^2`` over all pixels, optionally of unit-normalised gradients. [B]"""
    g_s, g_t = _full_precision(student_grad.flatten(1)), _full_precision(teacher_grad.detach().flatten(1))
    if normalize:
        g_s = g_s / g_s.norm(dim=1, keepdim=True).clamp_min(1e-12)
        g_t = g_t / g_t.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (g_s - g_t).pow(2).sum(dim=1)


def dwga_loss(pag: Tensor, alpha: Tensor, tau: Tensor, labels: Tensor, phi: float) -> Tensor:
    """Eq. 4: class-balanced mean of ``(alpha(x) + phi * tau_y) * L_PAG(x)`` over the classes in the batch."""
    num_classes = tau.shape[0]
    weighted = (alpha.detach() + phi * tau.detach()[labels]) * pag
    sums = torch.zeros(num_classes, dtype=weighted.dtype, device=weighted.device).index_add(0, labels, weighted)
    counts = torch.bincount(labels, minlength=num_classes).to(weighted.dtype)
    present = counts > 0
    return (sums[present] / counts[present]).mean()


def update_class_weights(tau: Tensor, risk_sum: Tensor, risk_count: Tensor, gamma: float,
                         sign: float = 1.0) -> Tensor:
    """Eq. 3 on the epoch's per-class risk; classes without examples keep their weight. Returns the new tau.

    ``tau_c + sign * gamma * (R_c - R_bar) / max_k |R_k - R_bar|``, clamped at 0; ``R_bar`` and the max run
    over the classes seen this epoch. No change when every seen class has the same risk.
    """
    seen = risk_count > 0
    if not seen.any():
        return tau.clone()
    risk = risk_sum[seen] / risk_count[seen]
    centred = risk - risk.mean()
    spread = centred.abs().max()
    new = tau.clone()
    if spread > 0:
        new[seen] = (tau[seen] + sign * gamma * centred / spread).clamp_min(0.0)
    return new


def _logits_from_embedding(student: nn.Module, embedding: Tensor) -> Tensor:
    """The :class:`Student` head applied to embeddings it already computed (``forward`` without re-encoding)."""
    return student.logit_scale * embedding @ student.classifier.to(embedding.dtype)


# -- the method -------------------------------------------------------------------------------------------------

PAPER = Paper(
    "DGHFA: Dynamic Gradient and Hierarchical Feature Alignment for Robust Distillation of Medical VLMs",
    ("Boyi Xiao", "Jianghao Wu", "Lanfeng Zhong", "Xiaoguang Zou", "Yuanquan Wu", "Guotai Wang", "Shaoting Zhang"),
    "MICCAI",
    2025,
)


@register_method("dghfa", paper=PAPER)
class DGHFA(Method):
    """Dynamic gradient (PAG -> DWGA) and hierarchical feature (HPFA) alignment; see the module docstring.

    Buffers: ``tau`` [C] (class weights), ``risk_sum`` and ``risk_count`` [C] (this epoch's adversarial CE per
    class, reset after the update in :meth:`on_epoch_end`).
    """

    Config = DGHFAConfig
    config: DGHFAConfig

    def __init__(self, config: DGHFAConfig | None = None, **kwargs) -> None:
        super().__init__(config, **kwargs)
        if self.config.hpfa:
            hpfa_steps(self.attack_config.steps, self.config.num_intermediate)  # fail early on a bad combination
        c = max(0, int(self.num_classes))  # 0: sized by setup() from the student's classifier
        self.register_buffer("tau", torch.full((c,), float(self.config.tau_init)))
        self.register_buffer("risk_sum", torch.zeros(c))
        self.register_buffer("risk_count", torch.zeros(c))

    # -- state ----------------------------------------------------------------------------------------------
    def setup(self, student: nn.Module, teachers: Mapping[str, nn.Module]) -> None:
        """Size the per-class buffers from the student's classifier (before the optimiser and checkpoints)."""
        num_classes = int(student.num_classes)
        if self.tau.numel() == num_classes:
            return
        if self.tau.numel() != 0:
            raise ValueError(f"DGHFA was built for {self.tau.numel()} classes but the student predicts "
                             f"{num_classes}")
        device = self.tau.device
        self.tau = torch.full((num_classes,), float(self.config.tau_init), device=device)
        self.risk_sum = torch.zeros(num_classes, device=device)
        self.risk_count = torch.zeros(num_classes, device=device)

    @torch.no_grad()
    def _accumulate_risk(self, per_sample_ce: Tensor, labels: Tensor) -> None:
        """Add this batch's adversarial CE per class (all-reduced across ranks when distributed)."""
        c = self.tau.numel()
        increment = torch.stack([
            torch.zeros(c, device=labels.device).index_add(0, labels, per_sample_ce.detach().float()),
            torch.bincount(labels, minlength=c).float(),
        ])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(increment)
        self.risk_sum += increment[0].to(self.risk_sum.device)
        self.risk_count += increment[1].to(self.risk_count.device)

    def on_epoch_end(self, state: TrainState) -> None:
        """Eq. 3: move the class weights by this epoch's class-wise adversarial risk, then reset the sums."""
        if self.config.gradient_alignment == "dwga" and self.tau.numel():
            self.tau.copy_(update_class_weights(self.tau, self.risk_sum, self.risk_count, self.config.gamma,
                                                self.config.class_weight_sign))
            logger.debug("DGHFA epoch %d: class weights %s", state.epoch, self.tau.tolist())
        self.risk_sum.zero_()
        self.risk_count.zero_()

    # -- the loss ---------------------------------------------------------------------------------------------
    def loss(self, batch: Batch, student: nn.Module, teachers: Mapping[str, nn.Module],
             state: TrainState) -> dict[str, Tensor]:
        cfg = self.config
        x, y = batch["image"], batch["label"]
        teacher = teachers["teacher"]
        align = cfg.gradient_alignment != "none"

        if self.tau.numel() != int(student.num_classes):
            raise RuntimeError(f"DGHFA has {self.tau.numel()} class weights but the student predicts "
                               f"{student.num_classes} classes: call method.setup(student, teachers) first")

        # 1. Inner maximisation (eq. 7), keeping the HPFA iterates from the same trajectory.
        iterates: list[Tensor] = []
        if cfg.hpfa:
            keep = set(hpfa_steps(self.attack_config.steps, cfg.num_intermediate))
            self.attack(objectives.ce(student, y), x, student,
                        on_step=lambda step, x_step: iterates.append(x_step) if step in keep else None)
        else:
            iterates.append(self.attack(objectives.ce(student, y), x, student))

        # 2. The frozen teacher on clean images: logits, and its input-gradient when aligning gradients.
        if align:
            x_t = x.detach().requires_grad_(True)
            with torch.enable_grad():
                teacher_logits = teacher(x_t).float()
                (teacher_grad,) = torch.autograd.grad(F.cross_entropy(teacher_logits, y, reduction="sum"), x_t)
            teacher_logits = teacher_logits.detach()
        else:
            teacher_logits = clean_teacher_logits(batch, teachers)  # cached by the trainer when allowed

        # 3. Student forwards in train mode: clean, then all adversarial strengths in one batch.
        emb_clean = student.encode_image(x).float()
        logits_clean = _logits_from_embedding(student, emb_clean)
        emb_adv = student.encode_image(torch.cat(iterates)).float()
        logits_adv = _logits_from_embedding(student, emb_adv[-x.shape[0]:])  # the last iterate is x'

        ce_clean = F.cross_entropy(logits_clean, y)
        ce_adv_per_sample = F.cross_entropy(logits_adv, y, reduction="none")
        ce_adv = ce_adv_per_sample.mean()
        kl = kl_div(soft_targets(teacher_logits), logits_clean, reduction="batchmean")
        total = cfg.ce_clean_weight * ce_clean + cfg.ce_adv_weight * ce_adv + cfg.kl_weight * kl
        out: dict[str, Tensor] = {"ce_clean": ce_clean.detach(), "ce_adv": ce_adv.detach(), "kl": kl.detach()}

        # 4. Gradient alignment (eqs. 1-4). Run after the train-mode forwards so the eval-mode graph saved for
        #    the double backward holds this step's final batch-norm running statistics.
        if align:
            with eval_mode(student), sdpa_kernel(SDPBackend.MATH):
                student_grad = input_gradient(student, x, y, create_graph=True)
            pag = pag_loss(student_grad, teacher_grad, normalize=cfg.normalize_grads)
            out["pag"] = pag.mean().detach()
            out["grad_cos"] = F.cosine_similarity(student_grad.detach().flatten(1), teacher_grad.flatten(1),
                                                  dim=1).mean()
            if cfg.gradient_alignment == "dwga":
                alpha = sample_weights(teacher_logits)
                dwga = dwga_loss(pag, alpha, self.tau, y, cfg.phi)
                total = total + cfg.lambda_dwga * dwga
                out["dwga"] = dwga.detach()
                if self.training:
                    self._accumulate_risk(ce_adv_per_sample, y)
            else:
                total = total + cfg.lambda_dwga * pag.mean()

        # 5. Hierarchical perturbation feature alignment (eqs. 5-6).
        if cfg.hpfa:
            weights = hpfa_weights(len(iterates), state.epoch, state.total_epochs, cfg.beta).to(emb_adv.device)
            distances = (emb_adv.view(len(iterates), *emb_clean.shape) - emb_clean).pow(2).sum(dim=2).mean(dim=1)
            hpfa = (weights * distances).sum()
            total = total + cfg.lambda_hpfa * hpfa
            out["hpfa"] = hpfa.detach()

        return {"loss": total, **out}
