"""Student factories: timm ResNets and ViTs, a CPU-sized ResNet, and open_clip image towers.

``create_student("resnet18", teacher=teacher, image_size=224)`` builds the backbone, a projection into the
teacher's embedding space and installs the teacher's text classifier. Backbones never download weights
unless asked (``pretrained=True``), so everything builds offline.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, NamedTuple

import torch
from torch import nn

from ..registry import Registry
from ..teachers.base import IMAGENET_MEAN, IMAGENET_STD, OPENAI_MEAN, OPENAI_STD, Teacher
from .base import Student


class Backbone(NamedTuple):
    """What a backbone factory returns: the module (normalised images -> [B, F]), F, and its mean/std.

    ``spec_args``: arguments the factory adds to the student's saved spec so that it rebuilds without what it was
    built from (the ``clip`` student built from a teacher records the tower's config, never the teacher's
    weights); ``identity_head``: the backbone already ends in the teacher's embedding space (a CLIP image
    tower), so the student's projection starts as the identity and the student starts equal to the tower.
    """

    module: nn.Module
    feature_dim: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    spec_args: dict[str, Any] | None = None
    identity_head: bool = False


STUDENTS: Registry[Callable[..., Backbone]] = Registry("student")
# Factory arguments that fetch weights: dropped from a student's saved spec, so loading a saved student never
# downloads a backbone it is about to overwrite with its own weights.
DOWNLOAD_ARGS = ("pretrained",)


def register_student(name: str, *, takes_arg: bool | str = False, usage: str | None = None,
                     needs_teacher: bool = False):
    """Register a backbone factory ``f(arg, image_size=..., **kwargs) -> Backbone``.

    ``needs_teacher``: the factory also receives ``teacher=`` (the teacher the student is built for, or None),
    e.g. to start from the teacher's own image tower.
    """
    return STUDENTS.register(name, takes_arg=takes_arg, usage=usage, metadata={"needs_teacher": needs_teacher})


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
    needs_teacher = (STUDENTS.metadata(name) or {}).get("needs_teacher", False)
    backbone = factory(arg, image_size=image_size, **kwargs, **({"teacher": teacher} if needs_teacher else {}))
    args = {k: v for k, v in kwargs.items() if k not in DOWNLOAD_ARGS}
    args.update(backbone.spec_args or {})
    spec = {"name": name, "args": args,
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
        identity_head=backbone.identity_head,
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


@register_student("clip", takes_arg="optional", usage="clip[:<open_clip arch>]", needs_teacher=True)
def _clip_tower(arch: str | None, *, image_size: int, teacher: Teacher | None = None, pretrained: str | None = None,
                tower_cfg: dict[str, Any] | None = None, **kwargs: Any) -> Backbone:
    """An open_clip image tower: ``clip`` is the teacher's own tower with its weights; ``clip:<arch>`` a new one.

    ``clip`` (no architecture) copies the run's (first) teacher's image tower, weights and normalisation, so the
    student starts equal to the teacher (FARE, TeCoA, HPT-GPD fine-tune it); the saved student records only the
    tower's config (``tower_cfg``) and rebuilds from it. ``clip:<arch>`` (e.g. ``clip:ViT-B-32``) builds the
    tower of an open_clip architecture at ``image_size``, random init unless ``pretrained`` (an open_clip tag
    or a local checkpoint file).
    """
    import open_clip

    from ..teachers.open_clip import build_image_tower

    if arch is not None:
        model = open_clip.create_model(arch, pretrained=pretrained, force_image_size=image_size, **kwargs)
        visual = model.visual
        mean = tuple(getattr(visual, "image_mean", None) or OPENAI_MEAN)
        std = tuple(getattr(visual, "image_std", None) or OPENAI_STD)
        return Backbone(_OpenClipTower(visual), int(visual.output_dim), mean, std)
    if tower_cfg is not None:  # rebuilding a saved student: its weights come from its own file
        visual = build_image_tower(tower_cfg, image_size)
        return Backbone(_OpenClipTower(visual), int(visual.output_dim), OPENAI_MEAN, OPENAI_STD,
                        spec_args={"tower_cfg": tower_cfg})
    cfg = getattr(teacher, "tower_cfg", None)
    if teacher is None or cfg is None:
        what = "no teacher" if teacher is None else f"teacher {teacher.name!r}, whose image tower config is unknown"
        raise ValueError(f"student 'clip' copies an open_clip teacher's image tower, but it was built for {what}; "
                         "name an architecture instead, e.g. student 'clip:ViT-B-32'")
    if int(image_size) != teacher.input_size:
        raise ValueError(f"student 'clip' is {teacher.name}'s image tower, which takes {teacher.input_size}-px "
                         f"images, but the data are {image_size} px: set dataset.image_size={teacher.input_size}")
    visual = copy.deepcopy(teacher.tunable_tower()).float().requires_grad_(True).train()
    mean, std = (tuple(t.flatten().tolist()) for t in (teacher.mean, teacher.std))
    return Backbone(_OpenClipTower(visual), int(visual.output_dim), mean, std, spec_args={"tower_cfg": cfg},
                    identity_head=True)


def for_classes(student: Student, teacher: Teacher, classnames: Any, templates: Any,
                labels: Any = None) -> Student:
    """A copy of ``student`` that scores ``classnames`` through ``teacher``'s text encoder: zero-shot
    classification of classes the student may never have trained on (the held-out-class evaluation).

    ``teacher`` must embed text in the student's space (the teacher it was distilled from, or one sharing its
    text tower); its zero-shot classifier is rebuilt for these classes. The student's logit scale is kept.
    """
    if teacher.embed_dim != student.embed_dim:
        raise ValueError(f"{teacher.name} embeds text in {teacher.embed_dim} dimensions, the student in "
                         f"{student.embed_dim}: score new classes with the teacher the student was distilled from")
    teacher.set_classes(classnames, templates)
    out = copy.deepcopy(student)
    out.set_classifier(teacher.classifier, classnames=teacher.classnames)
    out.labels = list(labels) if labels is not None else list(teacher.classnames)
    out.spec = {**student.spec, "num_classes": out.num_classes}
    return out


def start_from_teacher(student: Student, teacher: Teacher, *, freeze_head: bool = True, atol: float = 1e-4) -> None:
    """Make ``student`` (an open_clip tower student) equal to ``teacher``'s image tower: copy the tower's weights
    and normalisation, set the projection to the identity (frozen unless ``freeze_head=False``), and check on a
    probe batch that both embed alike (an activation mismatch, e.g. QuickGELU, changes nothing in the weights).

    FARE and TeCoA call this in ``setup``: they fine-tune the teacher's own tower, which can then serve as a
    teacher again with the original text tower (the ``student:<folder>`` teacher).
    """
    tower = teacher.tunable_tower()
    if not isinstance(student, Student) or not isinstance(student.backbone, _OpenClipTower):
        raise ValueError(f"this method fine-tunes the teacher's image tower, so the student must be one: use student "
                         f"'clip' (the teacher's own tower), not {getattr(student, 'spec', {}).get('name', student)!r}")
    from ..fileio import state_mismatch

    mismatch = state_mismatch(student.backbone.visual.state_dict(), tower.state_dict())
    if mismatch is not None:
        raise ValueError(f"the student's image tower is not {teacher.name}'s architecture ({mismatch}); use student "
                         "'clip' (the teacher's own tower) or clip:<the teacher's architecture>")
    if student.embed_dim != teacher.embed_dim or int(student.spec.get("image_size", teacher.input_size)) != \
            teacher.input_size:
        raise ValueError(f"the student ({student.embed_dim}-d, {student.spec.get('image_size')} px) does not match "
                         f"{teacher.name}'s tower ({teacher.embed_dim}-d, {teacher.input_size} px)")
    with torch.no_grad():
        student.backbone.visual.load_state_dict(tower.state_dict())
        student.mean.copy_(teacher.mean.view_as(student.mean))
        student.std.copy_(teacher.std.view_as(student.std))
        student.head.weight.copy_(torch.eye(student.embed_dim))
        student.head.bias.zero_()
    student.head.requires_grad_(not freeze_head)
    probe = torch.rand(2, student.mean.shape[1], teacher.input_size, teacher.input_size,
                       generator=torch.Generator().manual_seed(0)).to(student.mean.device)
    was_training = student.training
    student.eval()
    with torch.no_grad():
        gap = (student.encode_image(probe) - teacher.encode_image(probe)).abs().max().item()
    student.train(was_training)
    if gap > atol:
        raise ValueError(f"after copying {teacher.name}'s image tower the student still embeds differently (max "
                         f"difference {gap:.2e}): the architectures differ in something without weights (QuickGELU? "
                         "use the '-quickgelu' architecture for OpenAI weights), or use student 'clip'")


__all__ = ["Student", "Backbone", "STUDENTS", "DOWNLOAD_ARGS", "create_student", "list_students", "register_student",
           "start_from_teacher", "for_classes"]
