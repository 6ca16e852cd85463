"""``robust-student-runtime pacs run|listen`` (also ``robust-student pacs ...``): the PACS node's commands.

    export ROBUST_STUDENT_PACS_PASSWORD=...      # never on the command line (it would show in ps)
    robust-student-runtime pacs run --url http://127.0.0.1:8042/dicom-web --user node --model model.onnx \\
        --modality CR,DX --since 2026-01-01 --out pacs-job [--watch --interval 30]
    robust-student-runtime pacs listen --port 11112 --ae-title RSNODE --model model.onnx \\
        --url http://127.0.0.1:8042/dicom-web --user node --out pacs-listen

Exit status: 0 every instance got a result line, 3 some were refused (each refusal is a line in
``results.jsonl``), 2 a usage error or a model that cannot be trusted (digest mismatch: refuses to start),
4 the archive stayed unavailable through every retry (nothing half written; rerun to finish).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Sequence

from ..images import one_line

PASSWORD_ENV = "ROBUST_STUDENT_PACS_PASSWORD"
SOME_REFUSED, UNAVAILABLE, USAGE = 3, 4, 2


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="the exported ONNX model (its digest is verified first)")
    p.add_argument("--url", help="DICOMweb root of the archive, e.g. http://127.0.0.1:8042/dicom-web")
    p.add_argument("--user", help=f"HTTP basic-auth user; the password is read from ${PASSWORD_ENV} or "
                                  "--password-file")
    p.add_argument("--password-file", help="a file holding the password (one line)")
    p.add_argument("--out", default="pacs-job", help="job folder: results.jsonl and audit.jsonl (default: pacs-job)")
    p.add_argument("--top-k", type=int, default=3, help="classes reported in the SR (default 3)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--retries", type=int, default=4, help="retries of a transient archive failure (default 4)")
    p.add_argument("--backoff", type=float, default=0.5, help="first retry delay in seconds, doubled each time")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="query/retrieve over DICOMweb, predict, store a DICOM SR back")
    _common(run)
    run.add_argument("--study", help="only this StudyInstanceUID")
    run.add_argument("--since", help="only studies on or after this date (YYYY-MM-DD or YYYYMMDD)")
    run.add_argument("--modality", help="only these modalities, comma-separated (e.g. CR,DX)")
    run.add_argument("--watch", action="store_true", help="keep polling the archive (stop with SIGINT/SIGTERM)")
    run.add_argument("--interval", type=float, default=10.0, help="seconds between polls with --watch")
    listen = sub.add_parser("listen", help="a C-STORE SCP: predict each complete series, send the SR back")
    _common(listen)
    listen.add_argument("--port", type=int, required=True, help="TCP port of the C-STORE SCP")
    listen.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback only)")
    listen.add_argument("--ae-title", default="RSNODE")
    listen.add_argument("--send-to", help="send SRs by C-STORE to AE@host:port instead of STOW-RS to --url")
    listen.add_argument("--stable-seconds", type=float, default=5.0,
                        help="a series is complete when no instance arrived for this long (default 5)")
    listen.add_argument("--spool", help="where received instances wait (default: <out>/spool)")
    return parser


def _password(args: argparse.Namespace) -> str | None:
    if args.password_file:
        return Path(args.password_file).read_text(encoding="utf-8").strip()
    return os.environ.get(PASSWORD_ENV)


def _archive(args: argparse.Namespace):
    from .dicomweb import Archive

    if not args.url:
        raise ValueError("--url is required (the archive's DICOMweb root)")
    return Archive(args.url, args.user, _password(args), retries=args.retries, backoff=args.backoff)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            signal.signal(sig, lambda *_: stop.set())
        except ValueError:  # not the main thread (tests driving main() from a thread)
            pass
    return stop


def main(argv: Sequence[str] | None = None, prog: str = "robust-student-runtime pacs") -> int:
    args = build_parser(prog).parse_args(argv)
    name = f"{prog} {args.command}"
    try:
        from ..student import OnnxStudent, TamperedModelError  # noqa: F401
        from .dicomweb import ArchiveRejected, ArchiveUnavailable
        from .state import JobState

        model = OnnxStudent(args.model, threads=args.threads)  # a tampered model refuses to start here
        state = JobState(args.out, str(model.metadata.get("weights_sha256")), archive_user=args.user)
        stop = _stop_on_signals()
        if args.command == "run":
            from .node import run_job

            archive = _archive(args)
            modalities = [m.strip().upper() for m in (args.modality or "").split(",") if m.strip()]
            counts = run_job(archive, model, state, study=args.study, since=args.since, modalities=modalities,
                             batch_size=args.batch_size, top_k=args.top_k, watch=args.watch,
                             interval=args.interval, stop=stop)
        else:
            from .listen import listen

            counts = listen(args, model, state, stop)
        print(f"{name}: {counts.line()}; results in {state.results_path}", file=sys.stderr)
        return SOME_REFUSED if counts.refused else 0
    except ArchiveUnavailable as err:
        print(f"{name}: error: {one_line(str(err))}; nothing was half written: rerun to finish", file=sys.stderr)
        return UNAVAILABLE
    except ArchiveRejected as err:
        print(f"{name}: error: {one_line(str(err))}", file=sys.stderr)
        return UNAVAILABLE
    except (ValueError, OSError, ImportError) as err:
        print(f"{name}: error: {one_line(str(err))}", file=sys.stderr)
        return USAGE


__all__ = ["main", "build_parser", "PASSWORD_ENV"]
