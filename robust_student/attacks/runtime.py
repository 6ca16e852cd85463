"""How attacks touch a model: train/eval mode, frozen parameters, seeded RNG, and query-only access.

Shared by the one PGD, the named evaluation attacks, the AutoAttack adapter, the evaluation loop and the
methods, so none of them owns a private copy.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor, nn


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put ``modules`` (and all their children) in eval mode, restoring every submodule's mode on exit."""
    saved = [(m, m.training) for module in modules for m in module.modules()]
    try:
        for module in modules:
            module.eval()
        yield
    finally:
        for m, training in saved:
            m.training = training


@contextlib.contextmanager
def frozen_parameters(model: object) -> Iterator[None]:
    """Turn off ``requires_grad`` on ``model``'s parameters for the block, then restore each flag.

    Some attacks (FAB in pyautoattack) call ``.backward()``; with frozen parameters nothing accumulates in
    ``.grad``. A non-module callable is left alone.
    """
    params = list(model.parameters()) if isinstance(model, nn.Module) else []
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


@contextlib.contextmanager
def attack_mode(model: object) -> Iterator[None]:
    """Eval mode and frozen parameters for the block (an evaluation attacks the deployed model), then restore."""
    modules = [model] if isinstance(model, nn.Module) else []
    with eval_mode(*modules), frozen_parameters(model):
        yield


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """Seed torch's global RNG for the block and restore the caller's RNG state afterwards.

    Attack libraries re-seed the global RNG inside their attacks; forking keeps that from leaking out.
    """
    device = torch.device(device)
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class QueryFunction:
    """A classifier seen only through its outputs: [0, 1] tensor -> float32 logits tensor on the input's device.

    ``input_format``: ``"torch"`` (call with the tensor), ``"numpy"`` (call with a float32 numpy array, as an
    ONNX Runtime session wrapper expects), or ``"auto"``: modules get tensors; other callables are tried with a
    tensor first and, if that raises, with a numpy array (the first working format is kept). Outputs may be
    tensors or numpy arrays. ``queries`` counts the images sent so far.
    """

    def __init__(self, predict: Callable[[Any], Any], input_format: str = "auto") -> None:
        if input_format not in ("auto", "torch", "numpy"):
            raise ValueError(f"input_format must be 'auto', 'torch' or 'numpy', got {input_format!r}")
        self.predict = predict
        self.input_format = "torch" if isinstance(predict, nn.Module) and input_format == "auto" else input_format
        self.queries = 0

    def _call(self, x: Tensor, fmt: str) -> Any:
        return self.predict(x if fmt == "torch" else x.detach().cpu().numpy().astype(np.float32, copy=False))

    def __call__(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            if self.input_format == "auto":
                try:
                    out = self._call(x, "torch")
                    self.input_format = "torch"
                except Exception as torch_err:  # noqa: BLE001 - any failure means "not a tensor function"
                    try:
                        out = self._call(x, "numpy")
                    except Exception as numpy_err:  # noqa: BLE001
                        raise ValueError(f"{self.predict!r} accepts neither a tensor ({torch_err}) nor a numpy "
                                         f"array ({numpy_err}); pass input_format explicitly") from numpy_err
                    self.input_format = "numpy"
            else:
                out = self._call(x, self.input_format)
        self.queries += int(x.shape[0])
        if isinstance(out, (list, tuple)) and len(out) == 1:  # onnxruntime's session.run returns [logits]
            out = out[0]
        logits = out.detach() if isinstance(out, Tensor) else torch.as_tensor(np.asarray(out))
        if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
            raise ValueError(f"the classifier must return logits [B, C]; got shape {tuple(logits.shape)}")
        return logits.to(device=x.device, dtype=torch.float32)


def as_logits_fn(model: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """Modules are called as they are; other callables (e.g. numpy / ONNX functions) through QueryFunction."""
    return model if isinstance(model, nn.Module) else QueryFunction(model)


__all__ = ["eval_mode", "frozen_parameters", "attack_mode", "seeded", "QueryFunction", "as_logits_fn"]
