"""Per-sample attack objectives: each returns a callable ``x_adv -> loss [B]`` that PGD maximises."""

from __future__ import annotations

from typing import Callable

import torch.nn.functional as F
from torch import Tensor

from ..losses import kl_div

Model = Callable[[Tensor], Tensor]


def ce(model: Model, y: Tensor) -> Callable[[Tensor], Tensor]:
    """Cross-entropy of ``model``'s logits against the true labels (untargeted PGD / FGSM)."""
    return lambda x: F.cross_entropy(model(x).float(), y, reduction="none")


def margin(logits: Tensor, y: Tensor) -> Tensor:
    """``z_y - max_{j != y} z_j`` per sample (positive = correctly classified)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(dim=1)
    return true - other


def cw_margin(model: Model, y: Tensor, kappa: float = 50.0) -> Callable[[Tensor], Tensor]:
    """Carlini-Wagner margin loss used inside PGD (CW-inf): ``-relu(z_y - max_{j!=y} z_j + kappa)``."""
    return lambda x: -F.relu(margin(model(x).float(), y) + kappa)


def kl_to(model: Model, target_probs: Tensor, temperature: float = 1.0) -> Callable[[Tensor], Tensor]:
    """``KL(target || softmax(model(x) / T))`` per sample (TRADES / RSLAD / ARD-style inner losses)."""
    target = target_probs.detach().float()
    return lambda x: kl_div(target, model(x), reduction="none", temperature=temperature)


def embedding_l2(encoder: Model, target_embeddings: Tensor) -> Callable[[Tensor], Tensor]:
    """Squared L2 distance of ``encoder(x)`` to fixed target embeddings (MMT-ARD's embedding-space attack)."""
    target = target_embeddings.detach().float()
    return lambda x: (encoder(x).float() - target).pow(2).sum(dim=1)


def dlr(model: Model, y: Tensor) -> Callable[[Tensor], Tensor]:
    """Difference-of-logits-ratio loss (Croce & Hein 2020), scale invariant; needs at least 3 classes."""

    def objective(x: Tensor) -> Tensor:
        logits = model(x).float()
        if logits.shape[1] < 3:
            raise ValueError("the DLR loss needs at least 3 classes")
        top = logits.sort(dim=1, descending=True).values
        return -margin(logits, y) / (top[:, 0] - top[:, 2] + 1e-12)

    return objective


__all__ = ["ce", "cw_margin", "kl_to", "embedding_l2", "dlr", "margin"]
