"""Loss helpers whose reductions are explicit.

The reference repositories differ by factors of C and B in their KL reductions, which silently changes
results; here every KL names its reduction (``"batchmean"``, ``"sum"``, ``"none"`` for per-sample).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def kl_div(target_probs: Tensor, pred_logits: Tensor, *, reduction: str, temperature: float = 1.0) -> Tensor:
    """``KL(target || softmax(pred_logits / T))``.

    ``reduction``: ``"batchmean"`` (sum over classes, mean over the batch: the true KL per sample averaged),
    ``"sum"``, or ``"none"`` (per-sample vector [B]).
    """
    if reduction not in ("batchmean", "sum", "none"):
        raise ValueError(f"reduction must be 'batchmean', 'sum' or 'none', got {reduction!r}")
    target = target_probs.float()
    log_pred = F.log_softmax(pred_logits.float() / temperature, dim=1)
    per_sample = (target * (target.clamp_min(1e-12).log() - log_pred)).sum(dim=1)
    if reduction == "none":
        return per_sample
    return per_sample.sum() if reduction == "sum" else per_sample.mean()


def soft_targets(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Detached ``softmax(logits / T)`` in float32, used as distillation targets."""
    return F.softmax(logits.detach().float() / temperature, dim=1)
