"""Training: the accelerate loop (:class:`Trainer`) and its atomic, exactly-resumable checkpoints."""

from __future__ import annotations

from .checkpoint import latest_checkpoint, list_checkpoints
from .trainer import METRICS_FILE, Trainer, TrainResult, build_optimizer, evaluate_clean_and_pgd, lr_factor

__all__ = ["Trainer", "TrainResult", "build_optimizer", "lr_factor", "evaluate_clean_and_pgd",
           "latest_checkpoint", "list_checkpoints", "METRICS_FILE"]
