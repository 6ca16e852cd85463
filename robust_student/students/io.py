"""Save and load students as a folder: ``model.safetensors`` + ``student.json`` (how to rebuild it).

Nothing is unpickled: weights are safetensors and the spec is JSON, so loading a downloaded student is safe.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from . import create_student
from .base import Student

WEIGHTS = "model.safetensors"
SPEC = "student.json"


def save_student(student: Student, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write the student's weights and rebuild spec (plus optional ``extra`` metadata) to ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in student.state_dict().items()}
    save_file(state, str(directory / WEIGHTS))
    meta = {"spec": student.spec, "classnames": student.classnames, **(extra or {})}
    (directory / SPEC).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return directory


def load_student(directory: str | Path, map_location: str = "cpu") -> Student:
    """Rebuild a student saved by :func:`save_student` (random init, then its weights; strict)."""
    directory = Path(directory)
    if not (directory / SPEC).is_file() or not (directory / WEIGHTS).is_file():
        raise FileNotFoundError(f"{directory} is not a saved student: expected {SPEC} and {WEIGHTS} in it")
    meta = json.loads((directory / SPEC).read_text(encoding="utf-8"))
    spec = dict(meta["spec"])
    name = spec.pop("name")
    kwargs = {k: spec.pop(k) for k in ("embed_dim", "num_classes", "image_size")}
    student = create_student(name, **kwargs, **spec)
    student.load_state_dict(load_file(str(directory / WEIGHTS), device=map_location), strict=True)
    student.classnames = list(meta.get("classnames", []))
    return student.eval()
