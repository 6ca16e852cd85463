"""The Teacher contract: a frozen, eval-locked vision-language model on [0, 1] pixels.

Backends (open_clip, CONCH, CXR-CLIP, the built-in ``fmnist-clip``) subclass :class:`Teacher` and implement
two hooks, ``_encode_image`` (normalised pixels -> image features) and ``_encode_text`` (strings -> text
features). Everything users and methods rely on — normalisation inside the model, resizing to the backbone's
input size, L2-normalised embeddings, the cached zero-shot classifier, freezing — lives here once.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .prompts import build_text_classifier

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def take_indices(n: int, indices: int | Sequence[int] | None) -> list[int]:
    """timm's convention for ``forward_intermediates``: None = all ``n`` blocks, an int = the last ``indices``
    blocks, a sequence = those blocks (negative indices count from the end)."""
    if indices is None:
        return list(range(n))
    if isinstance(indices, int):
        return list(range(max(n - indices, 0), n))
    return sorted({i % n for i in indices})


class Teacher(nn.Module):
    """Vision-language teacher. Inputs are float NCHW images in [0, 1]; normalisation happens inside.

    Parameters are frozen and the module stays in eval mode whatever ``.train()`` is called with, but
    gradients still flow to the *input*, so attacks and gradient-alignment losses can differentiate
    through it. Methods wrap clean teacher calls in ``torch.no_grad()`` themselves.

    Attributes: ``name``, ``embed_dim``, ``input_size`` (images of another size are resized inside,
    bilinearly), ``license`` (SPDX-like id or a short text; cards and uploads honour it), ``classnames``.
    """

    def __init__(
        self,
        *,
        name: str,
        embed_dim: int,
        input_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        logit_scale: float,
        license: str,
        resize_inputs: bool = True,
    ) -> None:
        super().__init__()
        self.name = name
        self.embed_dim = int(embed_dim)
        self.input_size = int(input_size)
        self.license = license
        self.resize_inputs = resize_inputs
        self.classnames: list[str] = []
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("logit_scale", torch.tensor(float(logit_scale)), persistent=False)
        self.register_buffer("classifier", torch.zeros(self.embed_dim, 0), persistent=False)

    # -- hooks for backends ----------------------------------------------------------------------------
    def _encode_image(self, x: Tensor) -> Tensor:
        """Normalised pixels [B, 3, S, S] -> unnormalised image features [B, D]."""
        raise NotImplementedError

    def _encode_text(self, texts: list[str]) -> Tensor:
        """Strings -> unnormalised text features [N, D]."""
        raise NotImplementedError

    def _intermediates(self, x: Tensor, indices: int | Sequence[int] | None) -> dict[str, Tensor]:
        """Normalised pixels -> named intermediate feature maps (backend specific)."""
        raise NotImplementedError(f"{type(self).__name__} does not expose intermediate features")

    # -- the contract ------------------------------------------------------------------------------------
    def freeze(self) -> "Teacher":
        """Freeze every parameter and lock eval mode. Backends call this at the end of ``__init__``."""
        self.requires_grad_(False)
        super().train(False)
        return self

    def train(self, mode: bool = True) -> "Teacher":  # noqa: ARG002 - a teacher never trains
        return super().train(False)

    def preprocess(self, x: Tensor) -> Tensor:
        """[0, 1] pixels -> the backbone's input: resized to ``input_size`` and normalised."""
        if x.ndim != 4 or x.shape[1] != self.mean.shape[1]:
            raise ValueError(
                f"{self.name} expects images [B, {self.mean.shape[1]}, H, W] in [0, 1], got {tuple(x.shape)}"
            )
        if self.resize_inputs and tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def encode_image(self, x: Tensor) -> Tensor:
        """[B, 3, H, W] in [0, 1] -> L2-normalised image embeddings [B, D] (float32)."""
        return F.normalize(self._encode_image(self.preprocess(x)).float(), dim=-1)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """Strings -> L2-normalised text embeddings [N, D] (float32, no gradient)."""
        if isinstance(texts, str):
            texts = [texts]
        return F.normalize(self._encode_text(list(texts)).float(), dim=-1)

    def set_classes(self, classnames: Sequence[str | Sequence[str]], templates: Sequence[str]) -> Tensor:
        """Build and cache the zero-shot classifier [D, C] from class names (or synonym lists) and templates.

        Each class embedding is the renormalised mean over its synonyms x templates (open_clip / CONCH).
        """
        classifier = build_text_classifier(self.encode_text, classnames, templates)
        self.classifier = classifier.to(self.logit_scale.device)
        self.classnames = [c if isinstance(c, str) else c[0] for c in classnames]
        return self.classifier

    @property
    def num_classes(self) -> int:
        return int(self.classifier.shape[1])

    def forward(self, x: Tensor) -> Tensor:
        """Zero-shot logits [B, C] = ``logit_scale * encode_image(x) @ classifier``."""
        if self.classifier.shape[1] == 0:
            raise RuntimeError(f"{self.name}: call set_classes(classnames, templates) before forward()")
        return self.logit_scale * self.encode_image(x) @ self.classifier

    def forward_intermediates(self, x: Tensor, indices: int | Sequence[int] | None = None) -> dict[str, Tensor]:
        """Named intermediate features for feature-level methods (``indices``: which blocks, None = all)."""
        return self._intermediates(self.preprocess(x), indices)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, embed_dim={self.embed_dim}, input_size={self.input_size}, license={self.license!r}"
