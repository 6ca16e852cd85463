"""The run folder (``train.output_dir``): a fit never destroys a run, and two fits never share a folder.

* A folder that holds a run (checkpoints, ``metrics.jsonl`` or a saved ``student/``) is refused unless the fit
  resumes it or overwrites it (``train.overwrite``). Overwriting first moves the old run aside, into
  ``.replaced-run/``; it is deleted only once the new run has committed its first checkpoint, and put back if
  the new run fails before that (or, after a kill, by the next fit into the folder).
* While a fit runs it holds an exclusive ``fcntl.flock`` on ``.robust_student.lock`` in the folder, so a second
  fit into the same folder refuses at once, naming the holder's pid.
* A resumed run's config must match the checkpoint's, except :data:`RESUMABLE_KEYS` (extending ``train.epochs``,
  logging and validation options). Resuming a folder that holds a run but no intact checkpoint is refused
  (nothing could continue it); resuming an empty folder starts a run.
* :func:`preflight` runs every check that needs no data (a file in the way, an unwritable folder, a run in the
  way, a live lock, a config that cannot resume), so a fit refuses before any data or teacher loads.

Other files in the folder are never touched.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

from . import checkpoint as ckpt

logger = logging.getLogger(__name__)

LOCK_FILE = ".robust_student.lock"
REPLACED = ".replaced-run"
RUN_FILES = (ckpt.CHECKPOINTS, "metrics.jsonl", "student")  # what a run owns in its folder
# Keys that may differ when resuming: extending the run and what it logs / validates / when it checkpoints.
RESUMABLE_KEYS = ("train.epochs", "train.log_every", "train.log_with", "train.overwrite", "train.output_dir",
                  "train.eval_every", "train.eval_examples", "train.val_attack", "train.checkpoint_every",
                  "dataset.num_workers", "eval.")


class RunFolderError(ValueError):
    """A ``train.output_dir`` this fit may not use as it stands (the message says what to do)."""


def run_contents(folder: Path) -> list[str]:
    """What of a run is in ``folder`` (``["checkpoint step_00000012", "metrics.jsonl"]``); empty if none."""
    found = [f"checkpoint {p.name}" for p in ckpt.list_checkpoints(folder)[-1:]]
    if (folder / "metrics.jsonl").is_file():
        found.append("metrics.jsonl")
    if (folder / "student").exists():
        found.append("student/")
    return found


def check_writable(folder: Path) -> None:
    """Refuse an output folder that is a file or cannot be written (creating it, and its parents, if missing)."""
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"train.output_dir {folder} is a file, not a folder: choose another train.output_dir")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as err:
        raise RunFolderError(f"train.output_dir {folder} is not writable ({err.strerror or err}): choose a folder "
                             "you can write to") from None


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two config dicts, except :data:`RESUMABLE_KEYS`, as
    ``"train.lr: 0.1 -> 0.05"``."""
    a, b = _flatten(saved), _flatten(current)
    out = []
    for key in sorted(set(a) | set(b)):
        if any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUMABLE_KEYS):
            continue
        if a.get(key) is None and b.get(key) is None:  # a field added since, at its None default, is no change
            continue
        if a.get(key, "<unset>") != b.get(key, "<unset>"):
            out.append(f"{key}: {a.get(key, '<unset>')!r} -> {b.get(key, '<unset>')!r}")
    return out


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_resumable(checkpoint: Path, config: Mapping[str, Any]) -> None:
    """Refuse to resume ``checkpoint`` with a config that differs in anything but :data:`RESUMABLE_KEYS`."""
    saved = ckpt.read_trainer_state(checkpoint).get("config", {})
    differences = config_differences(saved, config)
    if differences:
        raise RunFolderError(
            f"cannot resume {checkpoint.parent.parent}: the config differs from the one the run was started "
            f"with in {'; '.join(differences)}. Only train.epochs and logging options may change on resume; "
            "start a new run (another train.output_dir, or --overwrite / train.overwrite=true)")


def _holder(folder: Path) -> str:
    try:
        info = json.loads((folder / LOCK_FILE).read_text(encoding="utf-8"))
        return f"pid {info.get('pid')} on {info.get('host')}, since {info.get('started')}"
    except (OSError, ValueError):
        return "another process"


def _try_lock(folder: Path) -> int | None:
    """An fd holding an exclusive flock on the folder's lock file, or None if another process holds it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not a POSIX system
        logger.warning("no fcntl on this platform: %s is not locked against a second fit", folder)
        return os.open(os.devnull, os.O_RDONLY)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def preflight(folder: str | Path, *, resume: bool, overwrite: bool, config: Mapping[str, Any] | None = None) -> None:
    """Every check of the run folder that needs no data: raise :class:`RunFolderError` (one line, what to do)."""
    folder = Path(folder)
    check_writable(folder)
    fd = _try_lock(folder)
    if fd is None:
        raise RunFolderError(f"{folder} is in use by a running fit ({_holder(folder)}): wait for it to finish or "
                             "choose another train.output_dir")
    os.close(fd)
    _check_run_in_the_way(folder, resume=resume, overwrite=overwrite, config=config)


def _check_run_in_the_way(folder: Path, *, resume: bool, overwrite: bool, config: Mapping[str, Any] | None) -> None:
    contents = run_contents(folder) or _replaced_contents(folder)
    if contents and not resume and not overwrite:
        raise RunFolderError(f"{folder} holds a run ({', '.join(contents)}): pass --resume to continue it or "
                             "--overwrite (train.overwrite=true) to replace it, or choose another train.output_dir")
    if not resume or not contents or overwrite:
        return
    latest, skipped = ckpt.latest_intact_checkpoint(folder, warn=False)
    if latest is None:
        why = "; ".join(skipped) if skipped else "it has no checkpoint"
        raise RunFolderError(f"nothing to resume in {folder} ({', '.join(contents)}): {why}. Pass --overwrite "
                             "(train.overwrite=true) to start over, or choose another train.output_dir")
    if config is not None:
        check_resumable(latest, config)


def _replaced_contents(folder: Path) -> list[str]:
    return [f"{REPLACED}/ (a run an interrupted --overwrite moved aside)"] if (folder / REPLACED).exists() else []


class RunDirectory:
    """Holds ``folder`` for one fit: the lock, the refusal of a run in the way, and the overwrite hand-over.

    Use as a context manager on the main process; call :meth:`committed` after each checkpoint commit.
    """

    def __init__(self, folder: str | Path, *, resume: bool, overwrite: bool, main_process: bool = True) -> None:
        self.folder = Path(folder)
        self.resume, self.overwrite, self.main = resume, overwrite, main_process
        self._fd: int | None = None
        self._replaced = False

    def __enter__(self) -> "RunDirectory":
        if not self.main:
            return self
        check_writable(self.folder)
        self._fd = _try_lock(self.folder)
        if self._fd is None:
            raise RunFolderError(f"{self.folder} is in use by a running fit ({_holder(self.folder)}): wait for it "
                                 "to finish or choose another train.output_dir")
        (self.folder / LOCK_FILE).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                         "started": time.strftime("%Y-%m-%d %H:%M:%S")}),
                                             encoding="utf-8")
        try:
            self._settle_interrupted_overwrite()
            _check_run_in_the_way(self.folder, resume=self.resume, overwrite=self.overwrite, config=None)
            if run_contents(self.folder) and self.overwrite:
                self._move_aside()
        except BaseException:
            self._unlock()
            raise
        return self

    def committed(self) -> None:
        """The new run has a checkpoint: the run it replaced is no longer needed."""
        if self.main and self._replaced:
            shutil.rmtree(self.folder / REPLACED, ignore_errors=True)
            logger.info("removed the replaced run from %s", self.folder)
            self._replaced = False

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if not self.main:
            return
        try:
            if exc_type is not None and self._replaced:
                self._restore()
        finally:
            self._unlock()

    # -- helpers -----------------------------------------------------------------------------------------
    def _unlock(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def _move_aside(self) -> None:
        """Move the run's files into ``.replaced-run/`` (restored if this run fails before its first checkpoint)."""
        aside = self.folder / REPLACED
        aside.mkdir()
        for name in RUN_FILES:
            if (self.folder / name).exists():
                os.replace(self.folder / name, aside / name)
        self._replaced = True
        logger.info("moved the earlier run in %s aside; it is deleted once this run commits a checkpoint",
                    self.folder)

    def _restore(self) -> None:
        """Put the replaced run back (this run failed before committing anything)."""
        aside = self.folder / REPLACED
        for name in RUN_FILES:
            target = self.folder / name
            if (aside / name).exists():
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
                os.replace(aside / name, target)
        shutil.rmtree(aside, ignore_errors=True)
        self._replaced = False
        logger.warning("this run failed before its first checkpoint: the earlier run in %s was put back",
                       self.folder)

    def _settle_interrupted_overwrite(self) -> None:
        """A ``.replaced-run/`` left by a killed overwrite: restore it if that run never committed a
        checkpoint, else delete it (it was superseded)."""
        if not (self.folder / REPLACED).exists():
            return
        if ckpt.list_checkpoints(self.folder):
            shutil.rmtree(self.folder / REPLACED, ignore_errors=True)
        else:
            self._replaced = True
            self._restore()


__all__ = ["RunDirectory", "RunFolderError", "preflight", "check_resumable", "config_differences", "run_contents",
           "RESUMABLE_KEYS", "LOCK_FILE"]
