"""Reading and writing the package's files safely: JSON and safetensors only, errors that name the file.

Every saved artifact (students, checkpoints) is safetensors + JSON, so nothing is ever unpickled. A file that is
missing, truncated or not what it claims to be raises a ``ValueError`` (or ``FileNotFoundError``) naming it, and a
state dict that does not fit a model is summarised in one line instead of a dump of every key.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from torch import Tensor

SHOW_KEYS = 3  # how many keys a mismatch message names


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Parse ``path`` as JSON; a missing or invalid file names itself (and the line and column of the error)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing (expected the {what})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} cannot be read as the {what}: {err}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); "
                         f"it should be the {what}") from None


def write_json(path: str | os.PathLike, data: Any) -> Path:
    path = Path(path)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def read_safetensors(path: str | os.PathLike, device: str = "cpu") -> tuple[dict[str, Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file; a truncated or foreign file names itself."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    try:
        with safe_open(str(path), framework="pt", device=device) as fh:
            metadata = dict(fh.metadata() or {})
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}
    except Exception as err:  # noqa: BLE001 - safetensors raises its own SafetensorError and OSError subclasses
        raise ValueError(f"{path} is not a readable safetensors file (truncated or corrupted?): {err}") from None
    return tensors, metadata


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, Tensor],
                      metadata: Mapping[str, str] | None = None) -> Path:
    """Write CPU copies of ``tensors`` (clones: safetensors refuses tensors that share storage)."""
    from safetensors.torch import save_file

    path = Path(path)
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, str(path),
              metadata=dict(metadata) if metadata else None)
    return path


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def state_mismatch(expected: Mapping[str, Tensor], found: Mapping[str, Tensor]) -> str | None:
    """One line saying how ``found`` (loaded) differs from ``expected`` (the model's state), or None if it fits.

    ``"52 missing, 48 unexpected keys, e.g. missing blocks.0.attn.qkv.weight, ...; unexpected layer1.0.conv1..."``
    """
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [k for k in expected if k in found and tuple(expected[k].shape) != tuple(found[k].shape)]
    if not (missing or unexpected or shapes):
        return None
    counts = [f"{len(missing)} missing", f"{len(unexpected)} unexpected keys"]
    examples = []
    if missing:
        examples.append(f"missing {_some(missing)}")
    if unexpected:
        examples.append(f"unexpected {_some(unexpected)}")
    if shapes:
        counts.append(f"{len(shapes)} of another shape")
        examples.append("shape " + ", ".join(f"{k} {list(found[k].shape)} (model {list(expected[k].shape)})"
                                             for k in shapes[:SHOW_KEYS]))
    return f"{', '.join(counts)}, e.g. {'; '.join(examples)}"


def _some(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:SHOW_KEYS])
    return shown + (", ..." if len(keys) > SHOW_KEYS else "")


__all__ = ["read_json", "write_json", "read_safetensors", "write_safetensors", "sha256_file", "state_mismatch"]
