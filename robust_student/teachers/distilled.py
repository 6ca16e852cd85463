"""A trained student as a teacher again: ``student:<saved student folder>``.

A student's classifier is its teacher's text embeddings, so a student plus that teacher's text encoder is a
whole vision-language model: this is how a FARE- or TeCoA-tuned image tower (``method="fare"``, student
``clip``) becomes the robust ``adv`` teacher of MMT-ARD or CIARD, and how a CLIP with a convolutional image
tower (the heterogeneous proxy of HPT-GPD) is made from a compact student. The folder is the one saved-student
format (``config.json`` + ``model.safetensors``, nothing unpickled); the text encoder is rebuilt from the
``teacher`` the folder records (spec and arguments), and the licence is that teacher's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import create_teacher, register_teacher
from .base import Teacher, TeacherLicense


class StudentTeacher(Teacher):
    """``student``'s image encoder (its backbone and projection, its own normalisation and input size) with
    ``text_teacher``'s text encoder; frozen like every teacher. The trainable "head" is the student's projection.

    Only the text side of ``text_teacher`` is used (its image tower is dropped when it is an open_clip model).
    """

    def __init__(self, student: nn.Module, text_teacher: Teacher, *, name: str, license: str | None = None) -> None:
        mean, std = student.mean_std
        super().__init__(name=name, embed_dim=student.embed_dim, input_size=int(student.spec["image_size"]),
                         mean=mean, std=std, logit_scale=float(student.logit_scale), license=license)
        if text_teacher.embed_dim != student.embed_dim:
            raise ValueError(f"{name}: the student embeds in {student.embed_dim} dimensions but its text teacher "
                             f"{text_teacher.name!r} in {text_teacher.embed_dim}")
        model = getattr(text_teacher, "model", None)
        if model is not None and hasattr(model, "visual"):
            model.visual = nn.Identity()  # the text teacher's own image tower is never used
        self.student = student
        self.text_teacher = text_teacher
        # An open_clip tower behind an identity projection (a FARE / TeCoA run) is itself a tunable tower.
        head = student.head
        identity = head.weight.shape[0] == head.weight.shape[1] and torch.equal(
            head.weight.detach(), torch.eye(head.weight.shape[0])) and not head.bias.detach().any()
        self.tower_cfg = student.spec.get("args", {}).get("tower_cfg") if identity else None
        self.freeze()

    def _encode_image(self, x: Tensor) -> Tensor:
        return self.student.head(self.student.backbone(x))

    def _encode_text(self, texts: list[str]) -> Tensor:
        return self.text_teacher._encode_text(texts)

    def _head_prefixes(self) -> list[str]:
        return ["student.head"]

    def tunable_tower(self) -> nn.Module:
        if self.tower_cfg is None:
            return super().tunable_tower()
        return self.student.backbone.visual


def _folder(arg: str) -> Path:
    return Path(arg).expanduser()


def student_teacher_terms(arg: str | None) -> TeacherLicense:
    """The licence of ``student:<folder>``: the one recorded for the teacher the student was distilled from."""
    from ..fileio import read_json

    if not arg:
        return TeacherLicense(note="the licence of the teacher the student was distilled from")
    try:
        teacher = read_json(_folder(arg) / "config.json", "saved student's config").get("teacher", {})
    except (OSError, ValueError, AttributeError):
        return TeacherLicense(note=f"{arg} could not be read; the licence of its teacher applies")
    return TeacherLicense(teacher.get("license"), teacher.get("license_url"), teacher.get("commercial_use"),
                          f"distilled from {teacher.get('spec', 'an unrecorded teacher')}")


def load_student_teacher(folder: str | Path, *, name: str | None = None, **text_teacher_args: Any) -> StudentTeacher:
    """The saved student in ``folder`` with the text encoder of the teacher it records (``text_teacher_args``
    override that teacher's recorded arguments)."""
    from ..students.io import load_student, read_student_config

    folder = _folder(str(folder))
    config = read_student_config(folder)
    recorded = config.get("teacher") or {}
    if not recorded.get("spec"):
        raise ValueError(f"{folder / 'config.json'} records no teacher, so there is no text encoder to pair its "
                         "image encoder with")
    text_teacher = create_teacher(recorded["spec"], **{**recorded.get("args", {}), **text_teacher_args})
    student = load_student(folder)
    return StudentTeacher(student, text_teacher, name=name or f"student:{folder}", license=recorded.get("license"))


@register_teacher("student", takes_arg=True, usage="student:<saved student folder>", terms=student_teacher_terms)
def _student(arg: str, **kwargs: Any) -> StudentTeacher:
    """A saved student with its teacher's text encoder (e.g. a FARE-tuned tower as a robust teacher)."""
    return load_student_teacher(arg, **kwargs)


__all__ = ["StudentTeacher", "load_student_teacher", "student_teacher_terms"]
