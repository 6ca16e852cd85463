"""Methods: robust-distillation objectives, one file each, found through one registry.

Importing this package registers every built-in method (each module registers itself).
"""

from __future__ import annotations

import importlib

from .base import METHODS, Batch, Method, MethodConfig, TrainState, create_method, list_methods, register_method

# Each method module registers itself; modules not written yet are simply absent.
for _module in ("kd", "pgd_at", "trades", "ard", "rslad", "adaad", "dghfa", "mmt_ard", "ciard", "hpt_gpd"):
    try:
        importlib.import_module(f"{__name__}.{_module}")
    except ModuleNotFoundError as _err:
        if _err.name != f"{__name__}.{_module}":
            raise

__all__ = ["METHODS", "Batch", "Method", "MethodConfig", "TrainState", "create_method", "list_methods",
           "register_method"]
