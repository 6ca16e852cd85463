"""Methods: robust-distillation objectives, one file each, found through one registry.

Importing this package registers every built-in method (each module registers itself).
"""

from __future__ import annotations

from .base import (METHODS, Batch, Method, MethodConfig, Paper, TrainState, create_method, list_methods, method_paper,
                   register_method)

# Each method module registers itself on import (a new method adds its module here).
from . import adaad, ard, ciard, dghfa, fare, hpt_gpd, kd, mmt_ard, pgd_at, rslad, tecoa, trades  # noqa: E402,F401

__all__ = ["METHODS", "Batch", "Method", "MethodConfig", "Paper", "TrainState", "create_method", "list_methods",
           "method_paper", "register_method"]
