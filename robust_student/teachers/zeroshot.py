"""Zero-shot top-1 accuracy of a teacher (or any model returning logits) on a labelled dataset."""

from __future__ import annotations

import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm


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


__all__ = ["zero_shot_accuracy"]
