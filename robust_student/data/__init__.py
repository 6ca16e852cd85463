"""Datasets: one registry of factories returning map-style datasets of ``{"image", "label"}`` dicts.

Images are float [3, H, W] tensors in [0, 1] (grayscale replicated to three channels). Each dataset carries
``labels`` (its own label names, index order) and ``prompts`` (a :class:`PromptSet` in the same order) so a
teacher can build its zero-shot classifier. Splits are ``"train"``, ``"val"`` and ``"test"``; datasets without
an official split are split 70/15/15 with a seeded permutation.
"""

from __future__ import annotations

from typing import Any, Callable

from ..config import DataConfig
from ..registry import Registry
from .base import LabeledImages, seeded_split

DATASETS: Registry[Callable[..., LabeledImages]] = Registry("dataset")
SPLITS = ("train", "val", "test")


def register_dataset(name: str, *, takes_arg: bool = False, usage: str | None = None):
    """Register ``f(arg, *, split, image_size, seed, **options) -> LabeledImages``."""
    return DATASETS.register(name, takes_arg=takes_arg, usage=usage)


def list_datasets() -> list[str]:
    return DATASETS.names()


def check_training_data(train_set: LabeledImages, val_set: LabeledImages | None, config: Any) -> None:
    """Refuse data that cannot train a meaningful student: fewer than two classes, an empty training split, or
    an empty validation split while validation is on (``train.eval_examples > 0``). Counts skipped files."""
    name = config.dataset.name

    def skipped(dataset: Any) -> str:
        n = getattr(getattr(dataset, "parent", dataset), "num_skipped", 0)
        return f" ({n} unreadable image(s) were skipped)" if n else ""

    if train_set.num_classes < 2:
        raise ValueError(f"dataset {name!r} has {train_set.num_classes} class(es) ({', '.join(train_set.labels)}); "
                         "a classifier needs at least two: add folders/labels for the other classes")
    if len(train_set) == 0:
        raise ValueError(f"the train split of {name!r} is empty{skipped(train_set)}; there is nothing to train on")
    if val_set is not None and len(val_set) == 0 and config.train.eval_examples > 0:
        raise ValueError(f"the validation split of {name!r} is empty{skipped(val_set)}; add images, or set "
                         "train.eval_examples=0 to train without validation")


def build_dataset(config: DataConfig | str, split: str = "train", **overrides: Any) -> LabeledImages:
    """Build one split of a dataset from a :class:`DataConfig` or a spec string."""
    if isinstance(config, str):
        config = DataConfig(name=config)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    factory, arg = DATASETS.resolve(config.name)
    options: dict[str, Any] = {"image_size": config.image_size, "seed": config.seed,
                               "skip_corrupt": config.skip_corrupt, "prompts": config.prompts, **config.options}
    options.update(overrides)
    dataset = factory(arg, split=split, **options)
    if config.classes is not None:
        dataset = dataset.select_classes(config.classes)
    if split == "train" and config.max_train_examples is not None:
        dataset = dataset.subset(range(min(len(dataset), config.max_train_examples)))
    return dataset


from . import fashion_mnist, files, synthetic  # noqa: E402,F401  (register the built-in datasets)
from .files import CorruptImageError  # noqa: E402

__all__ = ["DATASETS", "CorruptImageError", "LabeledImages", "build_dataset", "check_training_data", "list_datasets",
           "register_dataset", "seeded_split"]
