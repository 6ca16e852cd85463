"""The one KL (and its soft targets), with an explicit reduction: used by attack objectives and methods alike.

The reference repositories differ by factors of C and B in their KL reductions, which silently changes
results; here every KL names its reduction (``"batchmean"``, ``"sum"``, or ``"none"`` for per-sample values).
This module depends on nothing else in the package, so attacks and methods can both import it.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

REDUCTIONS = ("batchmean", "sum", "none")
CONFIG_REDUCTIONS = ("batchmean", "sum")  # what a method's ``reduction`` field may say (a loss is a scalar)


def check_reduction(reduction: str, allowed: tuple[str, ...] = CONFIG_REDUCTIONS) -> str:
    """Return ``reduction`` if it is one of ``allowed``, else raise ``ValueError`` naming the valid ones."""
    if reduction not in allowed:
        raise ValueError(f"reduction must be one of {allowed}, got {reduction!r}")
    return reduction


def kl_div(target_probs: Tensor, pred_logits: Tensor, *, reduction: str, temperature: float = 1.0) -> Tensor:
    """``KL(target || softmax(pred_logits / T))`` in float32.

    ``reduction``: ``"batchmean"`` (sum over classes, mean over the batch: the true KL per sample averaged),
    ``"sum"``, or ``"none"`` (per-sample vector [B]).
    """
    check_reduction(reduction, REDUCTIONS)
    target = target_probs.float()
    log_pred = F.log_softmax(pred_logits.float() / temperature, dim=1)
    per_sample = (target * (target.clamp_min(1e-12).log() - log_pred)).sum(dim=1)
    if reduction == "none":
        return per_sample
    return per_sample.sum() if reduction == "sum" else per_sample.mean()


def soft_targets(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Detached ``softmax(logits / T)`` in float32, used as distillation targets."""
    return F.softmax(logits.detach().float() / temperature, dim=1)


__all__ = ["kl_div", "soft_targets", "check_reduction", "REDUCTIONS", "CONFIG_REDUCTIONS"]
