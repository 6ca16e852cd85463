"""``pacs listen``: a C-STORE SCP (pynetdicom) that a PACS routes studies to.

The association handler only stores and acknowledges: each received instance is written whole to the spool
folder (a temporary name renamed into place, so a half-written file is never seen) and answered 0x0000. A
worker thread groups the spool by series; a series is complete when no instance of it arrived for
``--stable-seconds`` (Orthanc's ``StableAge`` idea). Then each instance goes through the same path as
``pacs run`` (header refusals, an existing SR looked up first, batch prediction, TID 1500 SR) and the SR is
sent back by STOW-RS to ``--url`` or by C-STORE to ``--send-to AE@host:port``. A spool file is deleted only
after its result line is written, so a restart finishes what a kill interrupted.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from ..images import one_line
from .node import Counts, ExistingSRs, Reporter, _log, header_refusal
from .report import result_uids
from .state import JobState


class _Ref:
    """What the node needs to know about a spooled instance (the same fields as a QIDO row)."""

    def __init__(self, ds: Any, path: Path) -> None:
        def get(keyword: str) -> str:
            try:
                return str(ds.get(keyword, "") or "")
            except Exception:  # noqa: BLE001 - a malformed value: empty here, refused later by the runner
                return ""

        self.path = path
        self.study, self.series, self.sop = get("StudyInstanceUID"), get("SeriesInstanceUID"), get("SOPInstanceUID")
        self.sop = self.sop or path.stem
        self.sop_class = get("SOPClassUID") or str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID",
                                                           "") or "")
        self.modality = get("Modality").upper()
        try:
            self.number = int(float(get("InstanceNumber") or 0))
        except ValueError:
            self.number = 0


class DimseDestination:
    """Send SRs by C-STORE to ``AE@host:port``; association failures are retried, a refusal status is not."""

    def __init__(self, spec: str, calling_ae: str, retries: int = 4, backoff: float = 0.5) -> None:
        try:
            ae_title, address = spec.split("@", 1)
            host, port = address.rsplit(":", 1)
            self.ae_title, self.host, self.port = ae_title, host, int(port)
        except ValueError:
            raise ValueError(f"--send-to must be AE@host:port, got {spec!r}") from None
        self.calling_ae, self.retries, self.backoff = calling_ae, retries, backoff
        self.url = f"dicom://{self.ae_title}@{self.host}:{self.port}"

    def store(self, dataset: Any) -> str:
        from pynetdicom import AE

        from .dicomweb import ArchiveRejected, ArchiveUnavailable

        for attempt in range(self.retries + 1):
            ae = AE(ae_title=self.calling_ae)
            ae.add_requested_context(dataset.SOPClassUID, dataset.file_meta.TransferSyntaxUID)
            assoc = ae.associate(self.host, self.port, ae_title=self.ae_title)
            if assoc.is_established:
                try:
                    status = assoc.send_c_store(dataset)
                finally:
                    assoc.release()
                code = int(getattr(status, "Status", -1)) if status else -1
                if code in (0x0000, 0xB000, 0xB007, 0xB006):
                    return "stored"
                if code != -1:
                    raise ArchiveRejected(f"C-STORE to {self.url} refused the SR (status 0x{code:04X})")
            elif assoc.is_rejected:
                raise ArchiveRejected(f"C-STORE association to {self.url} rejected")
            if attempt < self.retries:
                time.sleep(self.backoff * 2 ** attempt)
        raise ArchiveUnavailable(f"C-STORE to {self.url}: unavailable after {self.retries + 1} attempts")


def _handler(spool: Path):
    def handle_store(event: Any) -> int:
        try:
            sop = str(event.request.AffectedSOPInstanceUID)
            final = spool / f"{sop}.dcm"
            partial = spool / f".{sop}.{os.getpid()}.{threading.get_ident()}.part"
            with open(partial, "wb") as fh:
                fh.write(event.encoded_dataset())
            os.replace(partial, final)
            return 0x0000
        except Exception:  # noqa: BLE001 - answer "out of resources" rather than a traceback into the PACS
            return 0xA700

    return handle_store


def _supported_contexts(ae: Any) -> None:
    from pynetdicom import AllStoragePresentationContexts
    from pynetdicom.sop_class import Verification
    from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian,
                             ImplicitVRLittleEndian, JPEG2000, JPEG2000Lossless, JPEGBaseline8Bit,
                             JPEGExtended12Bit, JPEGLosslessSV1, JPEGLSLossless, RLELossless)

    syntaxes = [ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian,
                JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLosslessSV1, JPEGLSLossless, JPEG2000Lossless, JPEG2000,
                RLELossless]
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, syntaxes)
    ae.add_supported_context(Verification)


def listen(args: Any, model: Any, state: JobState, stop: threading.Event) -> Counts:
    """Serve until ``stop`` is set (SIGINT / SIGTERM), then finish the complete series and return."""
    import pydicom
    from pynetdicom import AE, evt

    spool = Path(args.spool or Path(args.out) / "spool")
    spool.mkdir(parents=True, exist_ok=True)
    if args.send_to:
        destination: Any = DimseDestination(args.send_to, args.ae_title, args.retries, args.backoff)
    else:
        from .cli import _archive

        destination = _archive(args)
    reporter = Reporter(model, state, destination.store, top_k=args.top_k, batch_size=args.batch_size,
                        destination=destination.url, store_many=getattr(destination, "store_many", None))
    ae = AE(ae_title=args.ae_title)
    ae.maximum_pdu_size = 0
    _supported_contexts(ae)
    server = ae.start_server((args.host, args.port), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, _handler(spool))])
    state.audit("listening", address=f"{args.host}:{args.port}", ae_title=args.ae_title,
                destination=destination.url, model=str(model.path))
    _log(f"listening as {args.ae_title} on {args.host}:{args.port}; SRs go to {destination.url}")
    try:
        while True:
            stopping = stop.wait(0.5)
            _process_stable(spool, reporter, state, destination, 0.0 if stopping else args.stable_seconds, pydicom)
            if stopping:
                break
    finally:
        server.shutdown()
    state.audit("stopped", **vars(reporter.counts))
    return reporter.counts


def _process_stable(spool: Path, reporter: Reporter, state: JobState, destination: Any, stable: float,
                    pydicom: Any) -> None:
    files = sorted(spool.glob("*.dcm"))
    if not files:
        return
    series: dict[str, list[_Ref]] = {}
    newest: dict[str, float] = {}
    for path in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                header = pydicom.dcmread(str(path), stop_before_pixels=True)
            ref = _Ref(header, path)
        except Exception as err:  # noqa: BLE001 - unreadable: refused, and out of the spool
            ref = _Ref({}, path)
            reporter.refuse(ref, f"not a readable DICOM file: {type(err).__name__}: {one_line(str(err))}")
            path.unlink(missing_ok=True)
            continue
        series.setdefault(ref.series, []).append(ref)
        newest[ref.series] = max(newest.get(ref.series, 0.0), path.stat().st_mtime)
    now = time.time()
    for uid, refs in series.items():
        if now - newest[uid] < stable:
            continue  # still arriving
        pairs = []
        existing = ExistingSRs(destination)
        for ref in sorted(refs, key=lambda r: (r.number, r.sop)):
            if state.is_done(ref.sop):
                ref.path.unlink(missing_ok=True)
                continue
            reason = header_refusal(ref.sop_class, ref.modality)
            if reason:
                reporter.refuse(ref, reason)
                ref.path.unlink(missing_ok=True)
                continue
            uids = result_uids(ref.sop, reporter.digest)
            if existing.holds(ref.study, uids):
                reporter.found(ref, uids)
                ref.path.unlink(missing_ok=True)
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    pairs.append((ref, pydicom.dcmread(str(ref.path))))
            except Exception as err:  # noqa: BLE001
                reporter.refuse(ref, f"cannot read its pixel data: {type(err).__name__}: {one_line(str(err))}")
                ref.path.unlink(missing_ok=True)
        for start in range(0, len(pairs), reporter.batch_size):
            chunk = pairs[start:start + reporter.batch_size]
            reporter.report(chunk)
            for ref, _ in chunk:
                ref.path.unlink(missing_ok=True)


__all__ = ["listen", "DimseDestination"]
