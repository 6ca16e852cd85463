"""Atomic, pickle-free training checkpoints that resume a run exactly.

A checkpoint is a folder ``<output_dir>/checkpoints/step_XXXXXXXX/`` holding

* ``model.safetensors`` — the trainable unit's state: ``student.*``, ``method.*`` (buffers such as DGHFA's
  class weights), ``teachers.<role>.*`` (trainable teachers only);
* ``optimizer.safetensors`` + ``optimizer.json`` — optimiser state tensors, and everything else
  (param groups, scalar state) as JSON;
* ``scheduler.json`` — the learning-rate scheduler's state (plain numbers);
* ``rng_<process>.safetensors`` + ``rng_<process>.json`` — torch CPU/CUDA, numpy and Python RNG states of
  each process;
* ``trainer.json`` — the data position (epoch, batches consumed in it), the optimiser step and the config;
* ``manifest.json`` — the sha256 of every other file, written at commit.

It is assembled in a hidden staging folder and moved into place with ``os.replace``, so a run killed at any
moment leaves either the previous complete checkpoint or the new one, never a torn one. On resume the newest
checkpoint whose files still match their manifest is used (a damaged newer one is skipped with a warning that
names it). Nothing is unpickled on load: tensors come from safetensors, everything else from JSON.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor

from ..fileio import read_json, read_safetensors, sha256_file, write_json, write_safetensors

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
TRAINER_FILE = "trainer.json"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 2
_NAME = re.compile(r"^step_(\d+)$")


# -- tensors + JSON parts ----------------------------------------------------------------------------------

def write_part(directory: Path, name: str, tensors: Mapping[str, Tensor] | None = None,
               meta: Any = None) -> None:
    """Write ``<name>.safetensors`` (when ``tensors`` is given) and ``<name>.json`` (when ``meta`` is given)."""
    if tensors is not None:
        write_safetensors(directory / f"{name}.safetensors", tensors)
    if meta is not None:
        (directory / f"{name}.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")


def read_part(directory: Path, name: str) -> tuple[dict[str, Tensor], Any]:
    """Read what :func:`write_part` wrote: ``(tensors or {}, meta or None)``; a damaged file names itself."""
    tensor_file, meta_file = directory / f"{name}.safetensors", directory / f"{name}.json"
    tensors = read_safetensors(tensor_file)[0] if tensor_file.is_file() else {}
    meta = read_json(meta_file, f"checkpoint's {name} state") if meta_file.is_file() else None
    return tensors, meta


# -- optimiser state without pickle ------------------------------------------------------------------------

def flatten_optimizer_state(state_dict: Mapping[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (``"<param index>/<name>"``) and JSON-able rest."""
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, param_state in state_dict["state"].items():
        for key, value in param_state.items():
            if torch.is_tensor(value):
                tensors[f"{index}/{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"state": scalars, "param_groups": state_dict["param_groups"]}


def unflatten_optimizer_state(tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten_optimizer_state` (JSON lists stay lists, which optimisers accept)."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, _, name = key.partition("/")
        state.setdefault(int(index), {})[name] = value
    for index, values in meta["state"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


# -- RNG states without pickle -----------------------------------------------------------------------------

def capture_rng_state() -> tuple[dict[str, Tensor], dict[str, Any]]:
    """This process's torch (CPU and CUDA), numpy and Python RNG states as tensors + JSON."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda/{i}"] = state
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy"] = torch.from_numpy(keys.astype(np.int64))
    version, internal, gauss_next = random.getstate()
    meta = {"numpy": {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
            "python": {"version": version, "state": list(internal), "gauss_next": gauss_next}}
    return tensors, meta


def restore_rng_state(tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> None:
    """Set every RNG back to what :func:`capture_rng_state` recorded."""
    torch.set_rng_state(tensors["torch"])
    cuda = sorted((k for k in tensors if k.startswith("cuda/")), key=lambda k: int(k.split("/")[1]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda][: torch.cuda.device_count()])
    np_meta = meta["numpy"]
    np.random.set_state((np_meta["kind"], tensors["numpy"].numpy().astype(np.uint32), np_meta["pos"],
                         np_meta["has_gauss"], np_meta["cached"]))
    py = meta["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))


# -- the checkpoint folder ---------------------------------------------------------------------------------

def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / CHECKPOINTS


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest first (staging folders are hidden and skipped)."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name))
             and (p / TRAINER_FILE).is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint in ``output_dir`` (``None`` if there is none)."""
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def staging_dir(output_dir: str | Path, step: int) -> Path:
    """Where a checkpoint is assembled before :func:`commit` moves it into place."""
    return checkpoint_root(output_dir) / f".staging-{checkpoint_name(step)}"


def write_manifest(directory: Path) -> dict[str, str]:
    """Record the sha256 of every file in ``directory`` in ``manifest.json``."""
    digests = {p.name: sha256_file(p) for p in sorted(directory.iterdir()) if p.is_file() and p.name != MANIFEST_FILE}
    write_json(directory / MANIFEST_FILE, {"sha256": digests})
    return digests


def verify(checkpoint: Path) -> str | None:
    """Why ``checkpoint`` cannot be trusted (a missing file, a changed sha256, no manifest), or None if intact."""
    manifest = checkpoint / MANIFEST_FILE
    if not manifest.is_file():
        return f"it has no {MANIFEST_FILE}"
    try:
        digests = read_json(manifest, "checkpoint manifest")["sha256"]
    except (ValueError, KeyError, TypeError) as err:
        return f"its manifest is unreadable ({err})"
    for name, digest in digests.items():
        path = checkpoint / name
        if not path.is_file():
            return f"{name} is missing"
        if sha256_file(path) != digest:
            return f"{name} does not match its recorded sha256 (truncated or modified)"
    return None


def latest_intact_checkpoint(output_dir: str | Path, *, warn: bool = True) -> tuple[Path | None, list[str]]:
    """The newest checkpoint that passes :func:`verify`, and a note per newer one skipped (logged with ``warn``)."""
    skipped = []
    for candidate in reversed(list_checkpoints(output_dir)):
        problem = verify(candidate)
        if problem is None:
            return candidate, skipped
        skipped.append(f"skipped checkpoint {candidate}: {problem}")
        if warn:
            logger.warning("%s; falling back to an older checkpoint", skipped[-1])
    return None, skipped


def commit(staging: Path, keep: int = 2) -> Path:
    """Record the files' sha256, atomically publish ``staging`` as its final checkpoint name, then drop all but
    the newest ``keep``.

    An existing checkpoint of the same step (a mid-epoch one superseded by the epoch-end one) is first moved
    aside; in between, the previous checkpoint is still the latest complete one.
    """
    write_manifest(staging)
    final = staging.with_name(staging.name.removeprefix(".staging-"))
    if final.exists():
        old = final.with_name(f".old-{final.name}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(staging, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, final)
    for stale in list_checkpoints(final.parent.parent)[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def read_trainer_state(checkpoint: Path) -> dict[str, Any]:
    """The position and bookkeeping a checkpoint was taken at (``trainer.json``)."""
    _, meta = read_part(checkpoint, "trainer")
    if not meta or meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"{checkpoint} is not a robust_student checkpoint of format {FORMAT_VERSION}")
    return meta


__all__ = [
    "write_part", "read_part", "flatten_optimizer_state", "unflatten_optimizer_state", "capture_rng_state",
    "restore_rng_state", "checkpoint_root", "checkpoint_name", "list_checkpoints", "latest_checkpoint",
    "staging_dir", "commit", "read_trainer_state", "write_manifest", "verify", "latest_intact_checkpoint",
    "FORMAT_VERSION", "TRAINER_FILE", "MANIFEST_FILE",
]
