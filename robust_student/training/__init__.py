"""Training: the accelerate loop (:class:`Trainer`) and its atomic, exactly-resumable checkpoints."""

from __future__ import annotations

from .checkpoint import latest_checkpoint, latest_intact_checkpoint, list_checkpoints
from .run_dir import RunFolderError, preflight
from .trainer import METRICS_FILE, Trainer, TrainResult, build_optimizer, lr_factor, validate

__all__ = ["Trainer", "TrainResult", "build_optimizer", "lr_factor", "validate", "latest_checkpoint",
           "latest_intact_checkpoint", "list_checkpoints", "preflight", "RunFolderError", "METRICS_FILE"]
