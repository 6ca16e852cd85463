"""Threat models: L-inf and L2 balls around [0, 1] images. Every step ends inside the ball and in [0, 1]."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..config import ThreatConfig
from ..formatting import format_eps

_TINY = 1e-12


def _per_sample_norm(t: Tensor) -> Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(_TINY).view(-1, *([1] * (t.ndim - 1)))


@dataclass(frozen=True)
class LinfBall:
    """``||x' - x||_inf <= eps``; steps follow the gradient sign (steepest ascent for L-inf)."""

    eps: float = 8 / 255
    norm = "linf"

    def random_init(self, x: Tensor, kind: str = "uniform", std: float = 0.001) -> Tensor:
        noise = torch.empty_like(x).uniform_(-self.eps, self.eps) if kind == "uniform" else std * torch.randn_like(x)
        return self.project(x + noise, x)

    def step(self, x: Tensor, grad: Tensor, size: float) -> Tensor:
        return x + size * grad.sign()

    def project(self, x: Tensor, x0: Tensor) -> Tensor:
        return torch.min(torch.max(x, x0 - self.eps), x0 + self.eps).clamp_(0.0, 1.0)

    def __str__(self) -> str:
        return f"Linf eps={format_eps(self.eps)}"


@dataclass(frozen=True)
class L2Ball:
    """``||x' - x||_2 <= eps`` per sample; steps follow the L2-normalised gradient."""

    eps: float = 0.5
    norm = "l2"

    def random_init(self, x: Tensor, kind: str = "uniform", std: float = 0.001) -> Tensor:
        if kind == "uniform":
            direction = torch.randn_like(x)
            direction = direction / _per_sample_norm(direction)
            radius = torch.rand(x.shape[0], device=x.device, dtype=x.dtype).view(-1, *([1] * (x.ndim - 1)))
            noise = direction * radius * self.eps
        else:
            noise = std * torch.randn_like(x)
        return self.project(x + noise, x)

    def step(self, x: Tensor, grad: Tensor, size: float) -> Tensor:
        return x + size * grad / _per_sample_norm(grad)

    def project(self, x: Tensor, x0: Tensor) -> Tensor:
        delta = x - x0
        factor = (self.eps / _per_sample_norm(delta)).clamp(max=1.0)
        return (x0 + delta * factor).clamp_(0.0, 1.0)

    def __str__(self) -> str:
        return f"L2 eps={format_eps(self.eps, 'l2')}"


Threat = LinfBall | L2Ball


def make_threat(norm: str, eps: float) -> Threat:
    """``make_threat("linf", 8/255)`` -> :class:`LinfBall`; unknown norms list the valid ones."""
    balls = {"linf": LinfBall, "l2": L2Ball}
    try:
        return balls[norm.lower()](eps)
    except KeyError:
        raise ValueError(f"Unknown norm {norm!r}. Valid norms: {', '.join(balls)}") from None


def threat_from_config(config: ThreatConfig) -> Threat:
    return make_threat(config.norm, config.eps)
