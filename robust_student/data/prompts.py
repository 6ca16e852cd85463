"""Zero-shot prompt sets: dataset metadata that says how each label is phrased for a text encoder.

A :class:`PromptSet` maps a dataset's label names (folder names such as ``TUM``, CSV values such as ``1``)
to class names a text encoder understands, plus templates. Templates may use ``{}`` (open_clip style) or
the literal ``CLASSNAME`` (CONCH style). A class may have several synonyms; their embeddings are averaged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from ..registry import Registry


@dataclass(frozen=True)
class PromptSet:
    """Class names (each a list of synonyms) and templates for one task."""

    name: str
    classnames: tuple[tuple[str, ...], ...]
    templates: tuple[str, ...]
    labels: tuple[str, ...] = field(default=())  # the dataset's own label names, same order as classnames

    def class_index(self, label: str) -> int:
        """Index of a dataset label (``labels``) or of a class's first synonym."""
        for i, name in enumerate(self.labels):
            if name.lower() == str(label).lower():
                return i
        for i, synonyms in enumerate(self.classnames):
            if str(label).lower() in (s.lower() for s in synonyms):
                return i
        raise KeyError(label)


PROMPT_SETS: Registry[PromptSet] = Registry("prompt set")


def register_prompt_set(prompts: PromptSet) -> PromptSet:
    PROMPT_SETS.register(prompts.name)(prompts)
    return prompts


def get_prompt_set(name: str) -> PromptSet:
    return PROMPT_SETS.get(name)


def generic_prompts(classnames: Sequence[str]) -> PromptSet:
    """Prompts for a dataset with no registered set: its label names in CLIP's basic templates."""
    names = tuple((c.replace("_", " "),) for c in classnames)
    return PromptSet("generic", names, ("a photo of a {}.", "an image of {}.", "{}"), tuple(classnames))


def format_prompt(template: str, classname: str) -> str:
    if "CLASSNAME" in template:
        return template.replace("CLASSNAME", classname)
    if "{}" in template:
        return template.format(classname)
    raise ValueError(f"Template {template!r} has no '{{}}' or 'CLASSNAME' placeholder")


# -- built-in prompt sets -------------------------------------------------------------------------------

FASHION_MNIST = register_prompt_set(
    PromptSet(
        name="fashion-mnist",
        labels=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                "Ankle boot"),
        classnames=(
            ("t-shirt", "top", "tee"),
            ("trousers", "pants"),
            ("pullover", "sweater"),
            ("dress",),
            ("coat", "jacket"),
            ("sandal",),
            ("shirt", "blouse"),
            ("sneaker", "trainer shoe"),
            ("bag", "handbag"),
            ("ankle boot", "boot"),
        ),
        templates=(
            "a photo of a {}.",
            "a grayscale photo of a {}.",
            "a low resolution photo of a {}.",
            "a product photo of a {}.",
            "a {}, an item of clothing.",
            "a picture of a {} on a plain background.",
        ),
    )
)

# NCT-CRC-HE-100K / CRC-VAL-HE-7K tissue classes (Kather et al. 2019), phrased as pathologists would.
CRC100K = register_prompt_set(
    PromptSet(
        name="crc100k",
        labels=("ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM"),
        classnames=(
            ("adipose tissue", "adipose", "fat tissue"),
            ("background", "slide background"),
            ("debris", "necrosis", "necrotic debris"),
            ("lymphocytes", "lymphocytic infiltrate"),
            ("mucus", "mucin"),
            ("smooth muscle", "muscularis propria"),
            ("normal colon mucosa", "benign colonic mucosa"),
            ("cancer-associated stroma", "desmoplastic stroma"),
            ("colorectal adenocarcinoma epithelium", "tumor epithelium", "adenocarcinoma"),
        ),
        templates=(
            "CLASSNAME.",
            "a photomicrograph showing CLASSNAME.",
            "an H&E image of CLASSNAME.",
            "an H&E stained image of CLASSNAME.",
            "a histopathology image of CLASSNAME.",
            "CLASSNAME, H&E stain.",
        ),
    )
)

# RSNA Pneumonia Detection: the CXR-CLIP evaluation prompts (whole sentences, so the template is identity).
RSNA_PNEUMONIA = register_prompt_set(
    PromptSet(
        name="rsna-pneumonia",
        labels=("0", "1"),
        classnames=(("No evidence of pneumonia",), ("Findings suggesting pneumonia",)),
        templates=("{}", "{}."),
    )
)
