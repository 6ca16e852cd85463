"""Adversarial weight perturbation (AWP): train at the worst nearby weights, not only the worst nearby inputs.

Wu, Xia, Wang, "Adversarial Weight Perturbation Helps Robust Generalization", NeurIPS 2020,
https://arxiv.org/abs/2004.05884; reference code csdongxian/AWP (``utils_awp.py``).

For every weight tensor ``w_l`` of a convolution or linear layer (biases and norm parameters are left alone, as
in the reference code) one ascent direction of the adversarial loss, scaled to ``gamma * ||w_l||``:

    v_l = gamma * ||w_l|| * g_l / ||g_l||,   g_l = d loss(w; x') / d w_l

The step's loss is then computed at ``w + v`` and its gradient applied to ``w``: :meth:`WeightPerturbation.apply`
moves the weights, :meth:`WeightPerturbation.restore` puts the exact original tensors back after the backward
and before the optimiser step (``Method.after_backward``), so checkpoints, EMA and validation see ``w``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

_EPS = 1e-20


class WeightPerturbation:
    """One step's weight perturbation of ``model``; holds the original weights until :meth:`restore`."""

    def __init__(self, model: nn.Module, gamma: float) -> None:
        if gamma <= 0:
            raise ValueError(f"AWP gamma must be > 0, got {gamma}")
        self.model, self.gamma = model, gamma
        self._saved: list[tuple[Tensor, Tensor]] = []

    def weights(self) -> list[Tensor]:
        """The perturbed tensors: trainable parameters with more than one dimension (conv / linear weights)."""
        return [p for p in self.model.parameters() if p.requires_grad and p.dim() > 1]

    def apply(self, loss_at: Callable[[], Tensor]) -> None:
        """Move the weights to ``w + v``; ``loss_at()`` is the adversarial loss at the current weights.

        The ascent pass leaves the model's buffers (BatchNorm running statistics) as it found them, so a step
        updates them once, at ``w + v``, as the reference code's separate proxy model does.
        """
        if self._saved:
            raise RuntimeError("AWP: apply() called twice without restore()")
        weights = self.weights()
        buffers = [b.detach().clone() for b in self.model.buffers()]
        grads = torch.autograd.grad(loss_at(), weights, allow_unused=True)
        with torch.no_grad():
            for buffer, saved in zip(self.model.buffers(), buffers):
                buffer.copy_(saved)
            for weight, grad in zip(weights, grads):
                if grad is None:
                    continue
                self._saved.append((weight, weight.detach().clone()))
                weight.add_(grad, alpha=float(self.gamma * weight.norm() / (grad.norm() + _EPS)))

    def restore(self) -> None:
        """Put the original weights back exactly (no-op when nothing is perturbed)."""
        with torch.no_grad():
            for weight, saved in self._saved:
                weight.copy_(saved)
        self._saved = []
