"""The built-in offline teacher ``fmnist-clip``: a small CLIP trained on Fashion-MNIST that ships in the package.

It is an ordinary open_clip model stored as an open_clip ``local-dir`` folder
(``weights/fmnist-clip/open_clip_config.json`` + fp16 ``open_clip_model.safetensors``), loaded by open_clip's
own loader and wrapped by :class:`~robust_student.teachers.open_clip.OpenClipTeacher`. Native input 28 px;
``weights/fmnist-clip/training.json`` records how it was trained (``scripts/train_fmnist_clip.py``) and its
zero-shot accuracy. Weights: Apache-2.0; training data (Fashion-MNIST, Zalando Research): MIT.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import register_teacher
from .open_clip import OpenClipTeacher, create_open_clip_teacher

FMNIST_CLIP_DIR = Path(__file__).resolve().parent / "weights" / "fmnist-clip"


@register_teacher("fmnist-clip", license="Apache-2.0", license_url="https://www.apache.org/licenses/LICENSE-2.0",
                  commercial_use=True, note="Trained here on Fashion-MNIST (Zalando Research, MIT licence).")
def fmnist_clip(arg: None = None, **kwargs: Any) -> OpenClipTeacher:
    """The built-in Fashion-MNIST CLIP (ViT image tower, patch 4 on 28 px; small text tower)."""
    if not (FMNIST_CLIP_DIR / "open_clip_model.safetensors").is_file():
        raise FileNotFoundError(
            f"The built-in fmnist-clip weights are missing from {FMNIST_CLIP_DIR}. They ship with the package: "
            "reinstall robust-student (`pip install --force-reinstall robust-student`), or re-create them with "
            "`python scripts/train_fmnist_clip.py` from a source checkout (about 20 minutes on 2 CPU cores)."
        )
    kwargs.setdefault("name", "fmnist-clip")
    kwargs.setdefault("input_size", 28)
    return create_open_clip_teacher(f"local-dir:{FMNIST_CLIP_DIR}", **kwargs)


__all__ = ["FMNIST_CLIP_DIR", "fmnist_clip"]
