"""The Student: Normalize -> backbone -> projection into the teacher's embedding space -> frozen text classifier.

The classifier is the teacher's zero-shot text-embedding matrix [D, C] (a buffer, never trained): only the
image encoder is distilled (the DGHFA set-up), so a student can classify new class names through the
teacher's text encoder (:meth:`Student.set_classifier`). Normalisation is inside the module, so the exported
ONNX graph takes [0, 1] pixels and ``eps`` keeps its meaning after export.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Student(nn.Module):
    """Compact image encoder whose logits are ``logit_scale * normalize(head(backbone(x))) @ classifier``.

    ``backbone`` maps normalised images to pooled features [B, feature_dim]; if it has timm/open_clip's
    ``forward_intermediates`` the stage outputs are exposed by :meth:`features`.
    ``spec`` records how to rebuild the student (``{"name", "args", "embed_dim", "num_classes", "image_size"}``,
    never a download flag), ``classnames`` the classifier's class names, ``labels`` the training data's own label
    names (same order; default the class names), ``teacher_provenance`` the teacher it was distilled from.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        feature_dim: int,
        embed_dim: int,
        num_classes: int,
        mean: Sequence[float],
        std: Sequence[float],
        logit_scale: float = 100.0,
        spec: dict[str, Any] | None = None,
        identity_head: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, embed_dim)
        if identity_head:  # a backbone that already ends in the teacher's space (a CLIP tower) starts unchanged
            if feature_dim != embed_dim:
                raise ValueError(f"an identity head needs feature_dim == embed_dim, got {feature_dim} != {embed_dim}")
            with torch.no_grad():
                self.head.weight.copy_(torch.eye(embed_dim))
                self.head.bias.zero_()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("classifier", torch.zeros(embed_dim, num_classes))
        self.register_buffer("logit_scale", torch.tensor(float(logit_scale)))
        self.embed_dim = int(embed_dim)
        self.feature_dim = int(feature_dim)
        self.classnames: list[str] = []
        self._labels: list[str] = []
        self.spec: dict[str, Any] = dict(spec or {})
        self.teacher_provenance: dict[str, Any] = {}

    @property
    def labels(self) -> list[str]:
        """The data's label names in class order (``TUM``, ``T-shirt/top``), else the class names."""
        return list(self._labels or self.classnames)

    @labels.setter
    def labels(self, value: Sequence[str]) -> None:
        value = [str(v) for v in value]
        if value and self.classnames and len(value) != len(self.classnames):
            raise ValueError(f"{len(value)} labels for {len(self.classnames)} classes")
        self._labels = value

    @property
    def mean_std(self) -> tuple[list[float], list[float]]:
        """The normalisation inside the model, as plain lists (per channel, [0, 1] pixels)."""
        return self.mean.flatten().tolist(), self.std.flatten().tolist()

    @property
    def num_classes(self) -> int:
        return int(self.classifier.shape[1])

    def set_classifier(
        self, classifier: Tensor, logit_scale: float | Tensor | None = None, classnames: Sequence[str] | None = None
    ) -> None:
        """Install a [D, C] text classifier (e.g. ``teacher.classifier``) and optionally its logit scale."""
        if classifier.ndim != 2 or classifier.shape[0] != self.embed_dim:
            raise ValueError(f"classifier must be [{self.embed_dim}, C], got {tuple(classifier.shape)}")
        self.classifier = classifier.detach().clone().float().to(self.mean.device)
        if logit_scale is not None:
            self.logit_scale = torch.as_tensor(logit_scale, dtype=torch.float32).detach().clone().to(self.mean.device)
        if classnames is not None:
            self.classnames = list(classnames)

    def normalize(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.mean.shape[1]:
            raise ValueError(f"Student expects images [B, {self.mean.shape[1]}, H, W] in [0, 1], got {tuple(x.shape)}")
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def encode_image(self, x: Tensor, normalize: bool = True) -> Tensor:
        """[B, 3, H, W] in [0, 1] -> embeddings [B, D] in the teacher's space, L2-normalised unless
        ``normalize=False`` (open_clip's convention; FARE matches raw embeddings)."""
        embedding = self.head(self.backbone(self.normalize(x)))
        return F.normalize(embedding, dim=-1) if normalize else embedding

    def forward(self, x: Tensor) -> Tensor:
        """Logits [B, C] against the frozen text classifier."""
        return self.logit_scale * self.encode_image(x) @ self.classifier.to(x.dtype)

    def features(self, x: Tensor) -> dict[str, Tensor]:
        """Stage outputs (``stage_0`` ...), the pooled backbone output and the embedding, for feature methods."""
        xn = self.normalize(x)
        out: dict[str, Tensor] = {}
        if hasattr(self.backbone, "forward_intermediates"):
            stages = self.backbone.forward_intermediates(xn, intermediates_only=True)
            out.update({f"stage_{i}": s for i, s in enumerate(stages)})
        pooled = self.backbone(xn)
        out["pooled"] = pooled
        out["embedding"] = F.normalize(self.head(pooled), dim=-1)
        return out

    def extra_repr(self) -> str:
        return f"spec={self.spec}, embed_dim={self.embed_dim}, num_classes={self.num_classes}"
