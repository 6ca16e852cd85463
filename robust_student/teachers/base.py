"""The Teacher contract: a vision-language model on [0, 1] pixels, frozen unless the trainer unfreezes it.

Backends (open_clip, CONCH, CXR-CLIP, the built-in ``fmnist-clip``) subclass :class:`Teacher` and implement
two hooks, ``_encode_image`` (normalised pixels -> image features) and ``_encode_text`` (strings -> text
features), plus optionally ``_head_prefixes`` (which parameters form the trainable "head"). Everything users
and methods rely on — normalisation inside the model, resizing to the backbone's input size, L2-normalised
embeddings, the cached zero-shot classifier, freezing — lives here once. Licences are declared by each
backend at registration (:class:`TeacherLicense`) and recorded with the teacher's spec in ``provenance``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .zeroshot import build_text_classifier

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class TeacherLicense:
    """A teacher's licence as its backend declares it: SPDX-like id (None = unknown), where to read it, whether
    students distilled from it may be used commercially (None = unknown), and terms students inherit."""

    license: str | None = None
    license_url: str | None = None
    commercial_use: bool | None = None
    note: str = ""


@dataclass(frozen=True)
class TeacherProvenance:
    """Where a teacher came from: the spec and arguments that rebuild it, and its licence (saved with students)."""

    spec: str
    args: dict[str, Any] = field(default_factory=dict)
    license: str | None = None
    license_url: str | None = None
    commercial_use: bool | None = None
    note: str = ""

    @classmethod
    def of(cls, spec: str, args: dict[str, Any], terms: TeacherLicense) -> "TeacherProvenance":
        return cls(spec=spec, args=_json_safe(args), **asdict(terms))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _json_safe(args: dict[str, Any]) -> dict[str, Any]:
    """Keep arguments that JSON can hold (paths as strings); drop objects such as a tokenizer or a device."""
    out: dict[str, Any] = {}
    for key, value in args.items():
        if isinstance(value, (str, int, float, bool)) or value is None:
            out[key] = value
        elif isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float, bool)) for v in value):
            out[key] = list(value)
        elif hasattr(value, "__fspath__"):
            out[key] = str(value)
    return out


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

    A frozen teacher (the default) has no trainable parameter and stays in eval mode whatever ``.train()`` is
    called with, but gradients still flow to the *input*, so attacks and gradient-alignment losses can
    differentiate through it. The trainer, not the teacher, decides what trains: :meth:`make_trainable`
    unfreezes the head or everything, after which that part follows ``.train()``/``.eval()``.

    Attributes: ``name``, ``embed_dim``, ``input_size`` (images of another size are resized inside,
    bilinearly), ``provenance`` (spec, arguments and licence; ``license`` is its licence id), ``classnames``,
    ``trainable`` (``"none"``, ``"head"`` or ``"all"``).
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
        license: str | None = None,
        resize_inputs: bool = True,
    ) -> None:
        super().__init__()
        self.name = name
        self.embed_dim = int(embed_dim)
        self.input_size = int(input_size)
        # A teacher built through create_teacher gets its registry licence; one built by hand declares its own.
        self.provenance = TeacherProvenance(spec=name, license=license)
        self.trainable = "none"
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

    def _head_prefixes(self) -> list[str]:
        """Names (relative to the teacher) of the modules / parameters that form its trainable head: the image
        tower's projection and last block. Backends that support ``trainable="head"`` override this."""
        raise NotImplementedError(f"{self.name} does not declare a trainable head; use trainable='all'")

    # -- the contract ------------------------------------------------------------------------------------
    @property
    def license(self) -> str | None:
        """The licence id from :attr:`provenance` (None = unknown)."""
        return self.provenance.license

    def freeze(self) -> "Teacher":
        """Freeze every parameter and lock eval mode. Backends call this at the end of ``__init__``."""
        self.requires_grad_(False)
        self.trainable = "none"
        super().train(False)
        return self

    def make_trainable(self, part: str) -> list[nn.Parameter]:
        """Unfreeze ``part`` (``"head"`` or ``"all"``) and return its parameters; the rest stays frozen.

        Afterwards ``.train()`` puts that part (only) in train mode. Called by the trainer for the roles that
        train; frozen roles are never unfrozen.
        """
        if part not in ("head", "all"):
            raise ValueError(f"trainable part must be 'head' or 'all', got {part!r}")
        self.requires_grad_(False)
        if part == "all":
            params = list(self.parameters())
        else:
            prefixes = self._head_prefixes()
            params = [p for n, p in self.named_parameters() if _under(n, prefixes)]
            if not params:
                raise ValueError(f"{self.name}: its head {prefixes} holds no parameters")
        for p in params:
            p.requires_grad_(True)
        self.trainable = part
        return params

    def train(self, mode: bool = True) -> "Teacher":
        """A frozen teacher stays in eval mode; a trainable one puts its trainable part in ``mode``."""
        super().train(mode and self.trainable == "all")
        if self.trainable == "head" and mode:
            prefixes = self._head_prefixes()
            for name, module in self.named_modules():
                if name and _under(name, prefixes):
                    module.train(True)
        return self

    def preprocess(self, x: Tensor) -> Tensor:
        """[0, 1] pixels -> the backbone's input: resized to ``input_size`` and normalised."""
        if x.ndim != 4 or x.shape[1] != self.mean.shape[1]:
            raise ValueError(
                f"{self.name} expects images [B, {self.mean.shape[1]}, H, W] in [0, 1], got {tuple(x.shape)}"
            )
        if self.resize_inputs and tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def encode_image(self, x: Tensor, normalize: bool = True) -> Tensor:
        """[B, 3, H, W] in [0, 1] -> image embeddings [B, D] (float32), L2-normalised unless ``normalize=False``
        (open_clip's convention; FARE matches raw embeddings)."""
        embedding = self._encode_image(self.preprocess(x)).float()
        return F.normalize(embedding, dim=-1) if normalize else embedding

    def tunable_tower(self) -> nn.Module:
        """The module that maps normalised pixels to raw image embeddings (open_clip's ``model.visual``), for
        methods that fine-tune a copy of it (FARE, TeCoA). Backends that have one override this."""
        raise NotImplementedError(f"{self.name} ({type(self).__name__}) exposes no open_clip image tower")

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

    def classify(self, embedding: Tensor) -> Tensor:
        """Zero-shot logits [B, C] of L2-normalised image embeddings: ``logit_scale * embedding @ classifier``."""
        if self.classifier.shape[1] == 0:
            raise RuntimeError(f"{self.name}: call set_classes(classnames, templates) before classifying")
        return self.logit_scale * embedding @ self.classifier

    def forward(self, x: Tensor) -> Tensor:
        """Zero-shot logits [B, C] = ``logit_scale * encode_image(x) @ classifier``."""
        if self.classifier.shape[1] == 0:
            raise RuntimeError(f"{self.name}: call set_classes(classnames, templates) before forward()")
        return self.classify(self.encode_image(x))

    def forward_intermediates(self, x: Tensor, indices: int | Sequence[int] | None = None) -> dict[str, Tensor]:
        """Named intermediate features for feature-level methods (``indices``: which blocks, None = all)."""
        return self._intermediates(self.preprocess(x), indices)

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, embed_dim={self.embed_dim}, input_size={self.input_size}, "
                f"license={self.license!r}, trainable={self.trainable!r}")


def _under(name: str, prefixes: Sequence[str]) -> bool:
    """``name`` is one of ``prefixes`` or inside one of them (``a.b.c`` is under ``a.b``)."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)
