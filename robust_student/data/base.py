"""The dataset base class and the seeded split shared by every dataset."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from .prompts import PROMPT_SETS, PromptSet, generic_prompts, get_prompt_set


class LabeledImages(Dataset):
    """Map-style dataset of ``{"image": float [3, H, W] in [0, 1], "label": int}``.

    Subclasses implement ``_load(i) -> (image [C, H, W] float in [0, 1], label)`` and ``__len__``;
    this base replicates grayscale to three channels and resizes to ``image_size`` when given.
    """

    def __init__(self, labels: Sequence[str], *, image_size: int | None = None,
                 prompts: PromptSet | str | None = None, name: str = "") -> None:
        self.labels = [str(label) for label in labels]
        self.image_size = image_size
        self.name = name
        self.prompts = resolve_prompts(prompts, self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def __len__(self) -> int:
        raise NotImplementedError

    def _load(self, index: int) -> tuple[Tensor, int]:
        raise NotImplementedError

    def targets(self) -> list[int]:
        """All labels in index order (subclasses override when this is cheaper than loading images)."""
        return [self._load(i)[1] for i in range(len(self))]

    def __getitem__(self, index: int) -> dict[str, Tensor | int]:
        image, label = self._load(int(index))
        if image.shape[0] == 1:
            image = image.expand(3, -1, -1)
        if self.image_size is not None and tuple(image.shape[-2:]) != (self.image_size, self.image_size):
            image = F.interpolate(image[None], size=(self.image_size,) * 2, mode="bilinear",
                                  align_corners=False, antialias=True)[0].clamp(0, 1)
        return {"image": image.contiguous(), "label": int(label)}

    def subset(self, indices: Iterable[int]) -> "Subset":
        return Subset(self, list(indices))

    def select_classes(self, classes: Sequence[str]) -> "ClassSubset":
        """The images of ``classes`` (label names) only, relabelled 0..k-1 in this dataset's class order."""
        return ClassSubset(self, classes)


class Subset(LabeledImages):
    """A view of ``indices`` of another dataset that keeps its labels and prompts."""

    def __init__(self, parent: LabeledImages, indices: list[int]) -> None:
        self.parent = parent
        self.indices = indices
        self.labels = parent.labels
        self.prompts = parent.prompts
        self.name = parent.name
        self.image_size = None  # the parent already resizes

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Tensor | int]:
        return self.parent[self.indices[int(index)]]

    def targets(self) -> list[int]:
        parent_targets = self.parent.targets()
        return [parent_targets[i] for i in self.indices]


class ClassSubset(LabeledImages):
    """The images of some classes of another dataset, relabelled 0..k-1 in the parent's class order, with the
    matching labels and prompts (a classifier built from ``prompts`` scores exactly these classes)."""

    def __init__(self, parent: LabeledImages, classes: Sequence[str]) -> None:
        wanted = {str(c).lower() for c in classes}
        known = {label.lower() for label in parent.labels}
        unknown = [c for c in classes if str(c).lower() not in known]
        if unknown:
            raise ValueError(f"{parent.name or 'the dataset'} has no class {unknown[0]!r}; its classes are "
                             f"{', '.join(parent.labels)}")
        keep = [i for i, label in enumerate(parent.labels) if label.lower() in wanted]
        remap = {old: new for new, old in enumerate(keep)}
        targets = parent.targets()
        self.parent = parent
        self.indices = [i for i, t in enumerate(targets) if t in remap]
        self._targets = [remap[targets[i]] for i in self.indices]
        self.labels = [parent.labels[i] for i in keep]
        p = parent.prompts
        self.prompts = PromptSet(p.name, tuple(p.classnames[i] for i in keep), p.templates,
                                 tuple(p.labels[i] for i in keep) if p.labels else tuple(self.labels))
        self.name = parent.name
        self.image_size = None  # the parent already resizes

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Tensor | int]:
        item = dict(self.parent[self.indices[int(index)]])
        item["label"] = self._targets[int(index)]
        return item

    def targets(self) -> list[int]:
        return list(self._targets)


def resolve_prompts(prompts: PromptSet | str | None, labels: Sequence[str]) -> PromptSet:
    """Pick the prompt set for ``labels``: a given one (reordered to the labels), or a matching built-in one.

    A registered set is matched when every label is one of its label names (e.g. CRC100K's ``TUM`` ...);
    otherwise the labels themselves become class names in generic templates.
    """
    if isinstance(prompts, str):
        prompts = get_prompt_set(prompts)
    candidates = [prompts] if prompts is not None else [PROMPT_SETS.get(n) for n in PROMPT_SETS]
    for candidate in candidates:
        try:
            order = [candidate.class_index(label) for label in labels]
        except KeyError:
            continue
        return PromptSet(candidate.name, tuple(candidate.classnames[i] for i in order), candidate.templates,
                         tuple(labels))
    if prompts is not None:
        raise ValueError(f"Prompt set {prompts.name!r} has no class for some of the labels {list(labels)}; "
                         f"its labels are {list(prompts.labels)}")
    return generic_prompts(labels)


def seeded_split(n: int, seed: int, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)) -> dict[str, np.ndarray]:
    """Deterministic train/val/test index split of ``range(n)`` (same seed -> same split on every machine)."""
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {fractions}")
    order = np.random.default_rng(seed).permutation(n)
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    return {"train": np.sort(order[:n_train]), "val": np.sort(order[n_train:n_train + n_val]),
            "test": np.sort(order[n_train + n_val:])}


def as_image_tensor(array: np.ndarray) -> Tensor:
    """uint8 HxW or HxWxC array -> float [C, H, W] in [0, 1]."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if tensor.ndim == 2:
        tensor = tensor[None]
    else:
        tensor = tensor.permute(2, 0, 1)
    return tensor.float().div_(255.0)
