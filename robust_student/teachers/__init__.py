"""Teachers: vision-language models behind one contract (see :class:`Teacher`), frozen unless trained.

``create_teacher("fmnist-clip")``, ``create_teacher("open_clip:ViT-B-32-quickgelu/openai")``,
``create_teacher("conch", checkpoint="/models/conch/pytorch_model.bin")``, ``create_teacher("cxr-clip:/models/cxr")``.
Every backend declares its licence when it registers (``register_teacher(name, license=..., license_url=...,
commercial_use=...)``); :func:`create_teacher` records it, with the spec and arguments, in ``teacher.provenance``.
"""

from __future__ import annotations

from typing import Any, Callable

from ..registry import Registry
from .base import Teacher, TeacherLicense, TeacherProvenance

TEACHERS: Registry[Callable[..., Teacher]] = Registry("teacher")


def register_teacher(name: str, *, takes_arg: bool | str = False, usage: str | None = None,
                     license: str | None = None, license_url: str | None = None,
                     commercial_use: bool | None = None, note: str = "",
                     terms: Callable[[str | None], TeacherLicense] | None = None):
    """Register a teacher factory ``f(arg, **kwargs) -> Teacher`` (``arg`` is the text after ``name:``).

    The licence fields are the weights' terms (``commercial_use`` False for non-commercial licences, None when
    unknown). ``terms`` instead computes them from the argument (``open_clip:<arch>/openai`` is MIT, other
    open_clip weights carry their own).
    """
    metadata = terms if terms is not None else TeacherLicense(license, license_url, commercial_use, note)
    return TEACHERS.register(name, takes_arg=takes_arg, usage=usage, metadata=metadata)


def teacher_license(name: str) -> TeacherLicense:
    """The licence a registered teacher spec declares (without loading it)."""
    metadata = TEACHERS.metadata(name)
    if callable(metadata):
        entry = TEACHERS.entry_name(name)
        return metadata(name[len(entry) + 1:] or None)
    return metadata or TeacherLicense()


# Arguments of create_teacher that state the licence of weights the registry cannot know (a local checkpoint).
_LICENSE_ARGS = ("license", "license_url", "commercial_use")


def create_teacher(name: str, **kwargs: Any) -> Teacher:
    """Build a frozen teacher from a registered name or ``prefix:argument`` spec.

    ``license=`` / ``license_url=`` / ``commercial_use=`` override the registered licence (for weights whose
    terms only you know, e.g. a local open_clip checkpoint).
    """
    factory, arg = TEACHERS.resolve(name)
    terms = teacher_license(name)
    overrides = {k: kwargs.pop(k) for k in _LICENSE_ARGS if k in kwargs}
    if overrides:
        terms = TeacherLicense(**{**terms.__dict__, **overrides})
    teacher = factory(arg, **kwargs)
    teacher.provenance = TeacherProvenance.of(name, {**kwargs, **overrides}, terms)
    return teacher


def list_teachers() -> list[str]:
    """Registered teacher names (``"conch"``, ``"open_clip"`` ...); :func:`describe_teacher` says how to write each."""
    return TEACHERS.names()


def describe_teacher(name: str) -> dict[str, Any]:
    """``{"name", "usage", "summary", "license", "license_url", "commercial_use", "note"}`` of a teacher entry."""
    info = TEACHERS.describe(name)
    terms = teacher_license(name)
    return {"name": info["name"], "usage": info["usage"], "summary": info["summary"], **terms.__dict__}


# Backends register themselves on import (heavy libraries are imported lazily inside their factories).
from . import builtin, conch, cxr_clip, distilled, open_clip  # noqa: E402,F401

__all__ = [
    "Teacher", "TeacherLicense", "TeacherProvenance", "TEACHERS", "create_teacher", "list_teachers",
    "describe_teacher", "register_teacher", "teacher_license",
]
