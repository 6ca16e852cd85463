"""Teachers: frozen vision-language models behind one contract (see :class:`Teacher`).

``create_teacher("fmnist-clip")``, ``create_teacher("open_clip:ViT-B-32-quickgelu/openai")``,
``create_teacher("conch", checkpoint="/models/conch/pytorch_model.bin")``, ``create_teacher("cxr-clip:/models/cxr")``.
"""

from __future__ import annotations

from typing import Any, Callable

from ..registry import Registry
from .base import Teacher
from .prompts import PROMPT_SETS, PromptSet, build_text_classifier, generic_prompts, get_prompt_set

TEACHERS: Registry[Callable[..., Teacher]] = Registry("teacher")


def register_teacher(name: str, *, takes_arg: bool = False, usage: str | None = None):
    """Register a teacher factory ``f(arg, **kwargs) -> Teacher`` (``arg`` is the text after ``name:``)."""
    return TEACHERS.register(name, takes_arg=takes_arg, usage=usage)


def create_teacher(name: str, **kwargs: Any) -> Teacher:
    """Build a frozen teacher from a registered name or ``prefix:argument`` spec."""
    factory, arg = TEACHERS.resolve(name)
    return factory(arg, **kwargs)


def list_teachers() -> list[str]:
    return TEACHERS.names()


# Backends register themselves on import (heavy libraries are imported lazily inside their factories).
from . import builtin, conch, cxr_clip, open_clip  # noqa: E402,F401

__all__ = [
    "Teacher", "TEACHERS", "create_teacher", "list_teachers", "register_teacher",
    "PromptSet", "PROMPT_SETS", "get_prompt_set", "generic_prompts", "build_text_classifier",
]
