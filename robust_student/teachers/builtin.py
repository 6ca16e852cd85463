"""The built-in offline teachers: ``fmnist-clip``, a small CLIP trained on Fashion-MNIST, and its zoo.

It is an ordinary open_clip model stored as an open_clip ``local-dir`` folder
(``weights/fmnist-clip/open_clip_config.json`` + fp16 ``open_clip_model.safetensors``), loaded by open_clip's
own loader and wrapped by :class:`~robust_student.teachers.open_clip.OpenClipTeacher`. Native input 28 px;
``weights/fmnist-clip/training.json`` records how it was trained (``scripts/train_fmnist_clip.py``) and its
zero-shot accuracy. Weights: Apache-2.0; training data (Fashion-MNIST, Zalando Research): MIT.

The zoo (:data:`ZOO`), each made from ``fmnist-clip`` by ``scripts/train_fmnist_zoo.py`` and shipped as a saved
student folder (``weights/<name>/``: ``config.json``, ``model.safetensors``, ``training.json``) that pairs its
image encoder with fmnist-clip's text encoder (the ``student:<folder>`` teacher):

* ``fmnist-clip-fare``: fmnist-clip's image tower after FARE (the robust ``adv`` teacher of MMT-ARD / CIARD);
* ``fmnist-clip-tecoa``: fmnist-clip's image tower after TeCoA (CE on zero-shot logits at x', the same budget);
* ``fmnist-clip-cnn``: a convolutional image tower (``resnet_tiny``) trained on clean images against
  fmnist-clip's class text embeddings (locked text tower): the heterogeneous proxy of HPT-GPD.
* ``fmnist-clip-robust``: a convolutional image tower (``resnet_tiny``) adversarially trained (PGD-AT with 5-step
  PGD at L-inf 0.1 on all 60,000 training images) against the same locked text embeddings: the zoo's robust
  teacher, with a model card (``README.md``) rendered from its AutoAttack evaluation.
* ``fmnist-clip-robust-wide``: the same at width 32 (1.26 M parameters, recipe ``flagship_pgdat_wide``): the
  larger flagship student, shipped by ``scripts/train_fmnist_zoo.py --ship``.
* ``fmnist-clip-robust-wide-12ep``: ``fmnist-clip-robust-wide`` trained on with PGD-AT for 6 more epochs from a
  new cosine schedule (recipe ``flagship_pgdat_wide_restart``, 12 epochs in all): the best flagship student.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import register_teacher
from .open_clip import OpenClipTeacher, create_open_clip_teacher

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
FMNIST_CLIP_DIR = WEIGHTS_DIR / "fmnist-clip"


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


# name -> what it is (its folder is WEIGHTS_DIR / name; scripts/train_fmnist_zoo.py --model <suffix> makes it;
# a new entry ships its folder with it)
ZOO: dict[str, str] = {
    "fmnist-clip-fare": "fmnist-clip's image tower after FARE (L-inf 0.1), with fmnist-clip's text tower",
    "fmnist-clip-tecoa": "fmnist-clip's image tower after TeCoA (L-inf 0.1), with fmnist-clip's text tower",
    "fmnist-clip-cnn": "a convolutional image tower (resnet_tiny) aligned to fmnist-clip's text tower (clean)",
    "fmnist-clip-robust": "a convolutional image tower (resnet_tiny) adversarially trained (PGD-AT, L-inf 0.1, all "
                          "60,000 images) against fmnist-clip's text tower: the zoo's robust teacher",
    "fmnist-clip-robust-wide": "a wide convolutional image tower (resnet_tiny, width 32) adversarially trained "
                               "(PGD-AT, L-inf 0.1, all 60,000 images) against fmnist-clip's text tower",
    "fmnist-clip-robust-wide-12ep": "fmnist-clip-robust-wide trained on with PGD-AT for 6 more epochs from a new "
                                    "cosine schedule (12 epochs in all) against fmnist-clip's text tower",
}


def _register_zoo(name: str, description: str) -> None:
    def factory(arg: None = None, **kwargs: Any):
        from .distilled import load_student_teacher

        folder = WEIGHTS_DIR / name
        if not (folder / "model.safetensors").is_file():
            raise FileNotFoundError(
                f"The built-in {name} weights are missing from {folder}. They ship with the package: reinstall "
                "robust-student, or re-create them from a source checkout with scripts/train_fmnist_zoo.py (the "
                "commands are in the docs page of this teacher and in the source tree's training.json).")
        kwargs.setdefault("name", name)
        return load_student_teacher(folder, **kwargs)

    factory.__doc__ = f"Built in: {description}."
    register_teacher(name, license="Apache-2.0", license_url="https://www.apache.org/licenses/LICENSE-2.0",
                     commercial_use=True, note="Trained here from fmnist-clip on Fashion-MNIST (MIT licence); "
                                               "see its training.json.")(factory)


def recorded_report(folder: str | Path) -> dict[str, Any] | None:
    """The AutoAttack evaluation report a zoo folder ships in its ``training.json`` (its card's numbers), or None."""
    import json

    try:
        record = json.loads((Path(folder) / "training.json").read_text(encoding="utf-8"))
        return record["zero_shot_test"]["autoattack"]["report"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def best_shipped() -> str:
    """The zoo entry with the highest recorded AutoAttack accuracy (read from the shipped reports, not picked by
    hand): what the demo opens on."""
    scored = {name: report["robust_accuracy"]["autoattack"] for name in ZOO
              if (report := recorded_report(WEIGHTS_DIR / name)) and "autoattack" in report["robust_accuracy"]}
    if not scored:
        raise FileNotFoundError(f"no zoo entry in {WEIGHTS_DIR} ships an AutoAttack report: reinstall robust-student")
    return max(scored, key=scored.__getitem__)


for _name, _description in ZOO.items():
    _register_zoo(_name, _description)

__all__ = ["FMNIST_CLIP_DIR", "WEIGHTS_DIR", "ZOO", "fmnist_clip", "recorded_report", "best_shipped"]
