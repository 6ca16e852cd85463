"""Zero-shot classification: the text classifier built from a prompt set, and top-1 accuracy on a dataset."""

from __future__ import annotations

import sys
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..data.prompts import format_prompt


def build_text_classifier(
    encode_text: Callable[[list[str]], Tensor],
    classnames: Sequence[str | Sequence[str]],
    templates: Sequence[str],
) -> Tensor:
    """Return the zero-shot classifier [D, C]: per class, mean of normalised prompt embeddings, renormalised."""
    if not classnames:
        raise ValueError("classnames is empty")
    if not templates:
        raise ValueError("templates is empty")
    columns = []
    with torch.no_grad():
        for synonyms in classnames:
            synonyms = [synonyms] if isinstance(synonyms, str) else list(synonyms)
            texts = [format_prompt(t, s) for s in synonyms for t in templates]
            emb = F.normalize(encode_text(texts).float(), dim=-1).mean(dim=0)
            columns.append(F.normalize(emb, dim=-1))
    return torch.stack(columns, dim=1)



def zero_shot_accuracy(model: nn.Module, dataset: Dataset, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model(images)`` over ``dataset`` (``{"image", "label"}`` items), in eval, no grad.

    For a teacher, call ``set_classes`` with the dataset's prompts first so that logit ``c`` is label ``c``.
    The model's train/eval mode is restored afterwards; the progress bar shows only on a terminal.
    """
    if len(dataset) == 0:
        raise ValueError("zero_shot_accuracy: the dataset is empty")
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    was_training = model.training
    model.eval()
    correct = 0
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    try:
        with torch.no_grad():
            for batch in tqdm(loader, desc="zero-shot", disable=not sys.stderr.isatty(), leave=False):
                logits = model(batch["image"].to(device))
                correct += int((logits.argmax(dim=-1).cpu() == batch["label"]).sum())
    finally:
        model.train(was_training)
    return correct / len(dataset)


__all__ = ["build_text_classifier", "zero_shot_accuracy"]
