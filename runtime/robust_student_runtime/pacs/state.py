"""What a job has done, keyed by (source SOP Instance UID, model weights digest), in two append-only JSON-lines
files in the job folder:

* ``results.jsonl``: one line per source instance, written only once its outcome is final: ``stored`` /
  ``already stored`` (the SR's UIDs, label, probability, top-k) or ``refused`` (the runner's one-line reason).
* ``audit.jsonl``: who (the OS user and the archive user name, never a password), what, when, the source UIDs,
  the model digest, the SR UID and the store status, for every action including failures.

A line is written with one ``write`` of a complete line and flushed; a line cut short by a kill is ignored on
reading, so a restart redoes that instance, and the deterministic SR UIDs (plus the archive lookup before
predicting) keep it from writing a second SR.
"""

from __future__ import annotations

import datetime as _dt
import getpass
import json
import os
from pathlib import Path
from typing import Any


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        return str(os.getuid()) if hasattr(os, "getuid") else "unknown"


class JobState:
    def __init__(self, folder: str | os.PathLike, weights_sha256: str, archive_user: str | None = None) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.results_path = self.folder / "results.jsonl"
        self.audit_path = self.folder / "audit.jsonl"
        self.digest = weights_sha256
        self.who = {"os_user": _user(), "archive_user": archive_user}
        # the SOP Instance UIDs with a final result line for this model: all a job keeps in memory per instance
        # (about 200 bytes; the lines themselves stay in the file), so a long --watch run stays flat
        self.done: set[str] = set()
        for line in _lines(self.results_path):
            if line.get("model_weights_sha256") == self.digest and line.get("source", {}).get("sop"):
                self.done.add(str(line["source"]["sop"]))

    def is_done(self, sop: str) -> bool:
        return sop in self.done

    def result(self, record: dict[str, Any]) -> None:
        line = {"time": now(), "model_weights_sha256": self.digest, **record}
        _append(self.results_path, line)
        self.done.add(str(line["source"]["sop"]))

    def audit(self, action: str, **fields: Any) -> None:
        _append(self.audit_path, {"time": now(), "who": self.who, "action": action,
                                  "model_weights_sha256": self.digest, **fields})


def _append(path: Path, record: dict[str, Any]) -> None:
    data = (json.dumps(record, sort_keys=False) + "\n").encode("utf-8")
    with open(path, "ab") as fh:  # one write of a whole line
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill: that instance is redone
        if isinstance(value, dict):
            out.append(value)
    return out


def read_lines(path: str | os.PathLike) -> list[dict[str, Any]]:
    return _lines(Path(path))


__all__ = ["JobState", "read_lines", "now"]
