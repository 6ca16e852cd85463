"""Student factories: timm ResNets and ViTs, a CPU-sized ResNet, and open_clip image towers.

``create_student("resnet18", teacher=teacher, image_size=224)`` builds the backbone, a projection into the
teacher's embedding space and installs the teacher's text classifier. Backbones never download weights
unless asked (``pretrained=True``), so everything builds offline.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import torch
from torch import nn

from ..registry import Registry
from ..teachers.base import IMAGENET_MEAN, IMAGENET_STD, OPENAI_MEAN, OPENAI_STD, Teacher
from .base import Student


class Backbone(NamedTuple):
    """What a backbone factory returns: the module (normalised images -> [B, F]), F, and its mean/std."""

    module: nn.Module
    feature_dim: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD


STUDENTS: Registry[Callable[..., Backbone]] = Registry("student")
# Factory arguments that fetch weights: dropped from a student's saved spec, so loading a saved student never
# downloads a backbone it is about to overwrite with its own weights.
DOWNLOAD_ARGS = ("pretrained",)


def register_student(name: str, *, takes_arg: bool = False, usage: str | None = None):
    """Register a backbone factory ``f(arg, image_size=..., **kwargs) -> Backbone``."""
    return STUDENTS.register(name, takes_arg=takes_arg, usage=usage)


def list_students() -> list[str]:
    return STUDENTS.names()


def create_student(
    name: str,
    teacher: Teacher | None = None,
    *,
    embed_dim: int | None = None,
    num_classes: int | None = None,
    image_size: int = 224,
    logit_scale: float | None = None,
    **kwargs: Any,
) -> Student:
    """Build a student. With ``teacher``, its embedding size, text classifier and logit scale are used.

    The teacher must have its classes set (``teacher.set_classes``): the student classifies with its text
    embeddings. Without a teacher give ``embed_dim`` and ``num_classes`` (e.g. to rebuild a saved student).
    """
    factory, arg = STUDENTS.resolve(name)
    if teacher is not None:
        if num_classes is None and not teacher.num_classes:
            raise ValueError(f"teacher {teacher.name!r} has no classes yet, so the student would have no outputs: "
                             "call teacher.set_classes(classnames, templates) first (or pass num_classes=)")
        embed_dim = embed_dim or teacher.embed_dim
        num_classes = num_classes if num_classes is not None else teacher.num_classes
        logit_scale = logit_scale if logit_scale is not None else float(teacher.logit_scale)
    if embed_dim is None:
        raise ValueError("create_student needs a teacher or an explicit embed_dim")
    if not num_classes or num_classes < 1:
        raise ValueError(f"a student needs at least one class, got num_classes={num_classes!r}")
    if int(image_size) < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    backbone = factory(arg, image_size=image_size, **kwargs)
    spec = {"name": name, "args": {k: v for k, v in kwargs.items() if k not in DOWNLOAD_ARGS},
            "embed_dim": int(embed_dim), "num_classes": int(num_classes), "image_size": int(image_size)}
    student = Student(
        backbone.module,
        feature_dim=backbone.feature_dim,
        embed_dim=embed_dim,
        num_classes=num_classes,
        mean=backbone.mean,
        std=backbone.std,
        logit_scale=logit_scale if logit_scale is not None else 100.0,
        spec=spec,
    )
    if teacher is not None and teacher.num_classes:
        student.set_classifier(teacher.classifier, teacher.logit_scale, teacher.classnames)
        student.teacher_provenance = teacher.provenance.to_dict()
    return student


# -- timm backbones ----------------------------------------------------------------------------------------

def _timm(model_name: str, **kwargs: Any) -> nn.Module:
    import timm

    return timm.create_model(model_name, num_classes=0, **kwargs)


def _cifar_stem(model: nn.Module) -> nn.Module:
    """Swap the ImageNet stem (7x7 stride 2 + max-pool) for a 3x3 stride-1 conv: small images keep resolution."""
    out_channels = model.conv1.out_channels
    model.conv1 = nn.Conv2d(3, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


@register_student("resnet18")
def _resnet18(arg: None, *, image_size: int, pretrained: bool = False, **kwargs: Any) -> Backbone:
    """timm ResNet-18, ImageNet stem (for 224-px medical images)."""
    model = _timm("resnet18", pretrained=pretrained, **kwargs)
    return Backbone(model, model.num_features)


@register_student("resnet18_cifar")
def _resnet18_cifar(arg: None, *, image_size: int, **kwargs: Any) -> Backbone:
    """ResNet-18 with a 3x3 stride-1 stem, the ARD literature's student for 32-px images."""
    model = _cifar_stem(_timm("resnet18", **kwargs))
    return Backbone(model, model.num_features)


@register_student("resnet_tiny")
def _resnet_tiny(arg: None, *, image_size: int, width: int = 16, **kwargs: Any) -> Backbone:
    """A four-stage ResNet with one BasicBlock per stage and ``width`` base channels (~0.3 M parameters at 16).

    Sized for CPU runs on 28-64 px images; 3x3 stem so small images keep their resolution.
    """
    from timm.models.resnet import BasicBlock, ResNet

    model = ResNet(BasicBlock, (1, 1, 1, 1), num_classes=0, stem_width=width,
                   channels=(width, 2 * width, 4 * width, 8 * width), **kwargs)
    model = _cifar_stem(model)
    return Backbone(model, model.num_features)


def _vit(model_name: str, image_size: int, patch_size: int | None, pretrained: bool, kwargs: dict) -> Backbone:
    # Patch 16 on a 28-px image leaves a 1x1 grid; below 96 px use patch 4 (documented default).
    patch = patch_size or (16 if image_size >= 96 else 4)
    model = _timm(model_name, pretrained=pretrained, img_size=image_size, patch_size=patch,
                  dynamic_img_size=True, **kwargs)
    return Backbone(model, model.num_features, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@register_student("vit_tiny")
def _vit_tiny(arg: None, *, image_size: int, patch_size: int | None = None, pretrained: bool = False,
              **kwargs: Any) -> Backbone:
    """timm ViT-Tiny (192-d, 12 blocks) at any image size; patch 16 from 96 px up, else patch 4."""
    return _vit("vit_tiny_patch16_224", image_size, patch_size, pretrained, kwargs)


@register_student("vit_small")
def _vit_small(arg: None, *, image_size: int, patch_size: int | None = None, pretrained: bool = False,
               **kwargs: Any) -> Backbone:
    """timm ViT-Small (384-d, 12 blocks) at any image size; patch 16 from 96 px up, else patch 4."""
    return _vit("vit_small_patch16_224", image_size, patch_size, pretrained, kwargs)


class _OpenClipTower(nn.Module):
    """An open_clip image tower as a backbone: normalised pixels -> its (unnormalised) embedding."""

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        self.visual = visual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x)

    def forward_intermediates(self, x: torch.Tensor, intermediates_only: bool = True) -> list[torch.Tensor]:
        out = self.visual.forward_intermediates(x, intermediates_only=intermediates_only)
        return out["image_intermediates"] if isinstance(out, dict) else out


@register_student("clip", takes_arg=True, usage="clip:<open_clip arch>")
def _clip_tower(arch: str, *, image_size: int, pretrained: str | None = None, **kwargs: Any) -> Backbone:
    """The image tower of an open_clip architecture (e.g. ``clip:ViT-B-32``), random init unless ``pretrained``.

    ``pretrained`` is an open_clip tag or a local checkpoint file; the tower is built at ``image_size``.
    """
    import open_clip

    model = open_clip.create_model(arch, pretrained=pretrained, force_image_size=image_size, **kwargs)
    visual = model.visual
    mean = tuple(getattr(visual, "image_mean", None) or OPENAI_MEAN)
    std = tuple(getattr(visual, "image_std", None) or OPENAI_STD)
    return Backbone(_OpenClipTower(visual), int(visual.output_dim), mean, std)


__all__ = ["Student", "Backbone", "STUDENTS", "DOWNLOAD_ARGS", "create_student", "list_students", "register_student"]
