"""The node's job: find instances, decide, retrieve, predict, report, store; once per (instance, model).

For each instance the archive lists (QIDO-RS), in study / series / instance order:

1. already in ``results.jsonl`` for this model digest: skipped (a rerun or a restart does nothing twice);
2. not an image storage SOP class, or an SR / PR / SEG / KO / RT object (the node's own SRs included): refused
   from the search attributes alone, never retrieved;
3. its SR (UIDs derived from the instance and the model digest) already in the archive: recorded as
   ``already stored`` without predicting (a restart after a kill between store and record); looked up with one
   QIDO-RS per study (its SR series), confirmed per instance only when its SR's series is there;
4. retrieved (WADO-RS), predicted in batches with :meth:`OnnxStudent.predict` (every refusal of the runner is
   that instance's one-line result and the batch goes on), reported as a TID 1500 SR and stored (STOW-RS, one
   request per batch and study).

The next batch is retrieved (its own HTTP session, one prefetch thread) and the previous batch's SRs are stored
and recorded (one store thread, its own HTTP session) while a batch is predicted and reported; result lines are written only after
their SR is stored, and a batch's stores finish before the next batch's begin.

Transient archive failures are retried with backoff (see :mod:`.dicomweb`); when they persist the job stops
with one clear error and nothing half written (no result line for an instance whose SR was not stored).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..dicom import IMAGE_STORAGE, NEVER_MODALITIES, sop_class_name
from ..images import one_line
from ..student import OnnxStudent, Prediction
from .report import ReportBuilder, ResultUIDs, result_uids, top_classes
from .state import JobState

KILL_AFTER_STORES = "ROBUST_STUDENT_PACS_KILL_AFTER_STORES"  # fault injection for the restart test only


@dataclass
class Counts:
    stored: int = 0
    already: int = 0
    refused: int = 0
    skipped: int = 0

    def line(self) -> str:
        return (f"{self.stored} SR(s) stored, {self.already} already in the archive, {self.refused} refused, "
                f"{self.skipped} done before")


def header_refusal(sop_class: str, modality: str) -> str | None:
    """Why an instance must not be classified, from its SOP class and modality alone (None: retrieve it)."""
    if modality.upper() in NEVER_MODALITIES:
        return f"(0008,0060) Modality is {modality.upper()}: not an image to classify (the node never runs on " \
               "SR, PR, SEG, KO or RT objects, its own output included)"
    if sop_class not in IMAGE_STORAGE:
        return f"SOP class {sop_class_name(sop_class)} ({sop_class or 'missing'}) is not an image storage class " \
               "this model reads"
    return None


def _source(ref: Any) -> dict[str, str]:
    return {"study": ref.study, "series": ref.series, "sop": ref.sop, "sop_class": ref.sop_class,
            "modality": ref.modality}


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Reporter:
    """Predict -> SR -> store -> record, for datasets in hand (shared by ``pacs run`` and ``pacs listen``)."""

    def __init__(self, model: OnnxStudent, state: JobState, store: Callable[[Any], str], *, top_k: int = 3,
                 batch_size: int = 16, destination: str = "", log: Callable[[str], None] = _log,
                 background_store: bool = False,
                 store_many: Callable[[Sequence[Any]], list[str]] | None = None) -> None:
        """``store`` stores one SR and says how (``"stored"`` / ``"already stored"``); ``store_many``, when the
        destination has one, stores a batch's SRs in one go (one STOW-RS request instead of one per SR)."""
        self.model, self.state, self.store, self.store_many = model, state, store, store_many
        self.top_k, self.batch_size, self.destination, self.log = top_k, batch_size, destination, log
        self.builder = ReportBuilder(model, top_k=top_k)  # highdicom's constant pieces, built once per job
        self.identity = self.builder.identity
        self.digest = self.identity["weights_sha256"]
        self.counts = Counts()
        self._stores = 0
        self._kill_after = int(os.environ.get(KILL_AFTER_STORES, "0") or 0)
        self._pool: Any = None
        self._storing: Any = None  # the batch being stored in the background (a Future)
        if background_store:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stow")

    def found(self, ref: Any, uids: ResultUIDs) -> None:
        """Record an instance whose SR is already in the archive (found before predicting): its result line and
        its audit entry, as for an SR stored now."""
        self.state.result({"source": _source(ref), "status": "already stored", "sr_series": uids.series,
                           "sr_sop": uids.sop, "error": None})
        self.state.audit("found SR", source=_source(ref), sr_series=uids.series, sr_sop=uids.sop,
                         store_status="already stored", destination=self.destination)
        self.counts.already += 1
        self.log(f"{ref.sop}: its SR {uids.sop} is already in the archive")

    def refuse(self, ref: Any, reason: str) -> None:
        reason = one_line(reason)
        self.state.result({"source": _source(ref), "status": "refused", "error": reason})
        self.state.audit("refused", source=_source(ref), error=reason)
        self.counts.refused += 1
        self.log(f"{ref.sop}: refused: {reason}")

    def report(self, pairs: Sequence[tuple[Any, Any]]) -> None:
        """``pairs`` of (reference, dataset): predicted together, reported, then stored and recorded one by one.

        With ``background_store``, the batch's SRs are stored (and recorded, each after its store) by one
        background thread while the caller goes on with the next batch; the next :meth:`report` or
        :meth:`flush` waits for them first and raises what stopped them (an unavailable archive), so no batch
        overtakes another and nothing is recorded that was not stored."""
        if not pairs:
            return
        predictions = self.model.predict([ds for _, ds in pairs], batch_size=self.batch_size, errors="skip")
        built = []
        for (ref, ds), prediction in zip(pairs, predictions):
            if not prediction.ok:
                self.refuse(ref, str(prediction.error))
                continue
            try:
                built.append((ref, prediction, self.builder.build(ds, prediction)))
            except Exception as err:  # noqa: BLE001 - highdicom refuses odd source attributes: that item's refusal
                self.refuse(ref, f"cannot build the report: {type(err).__name__}: {one_line(str(err))}")
        if self._pool is None:
            self._store_all(built)
            return
        self.flush()
        self._storing = self._pool.submit(self._store_all, built)

    def flush(self) -> None:
        """Wait for the batch being stored in the background; raise what stopped it."""
        if self._storing is not None:
            future, self._storing = self._storing, None
            future.result()

    def close(self) -> None:
        """Let the background store finish what it started (stored SRs get their result lines), then stop it."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _store_all(self, built: Sequence[tuple[Any, Prediction, Any]]) -> None:
        """Store the batch's SRs (in one go with ``store_many``, else one by one), then record each stored one."""
        if not built:
            return
        if self.store_many is None:
            for item in built:
                self._record(item, self._stored([item], lambda: [self.store(item[2])])[0])
            return
        statuses = self._stored(built, lambda: self.store_many([sr for _, _, sr in built]))
        for item, status in zip(built, statuses):
            self._record(item, status)

    def _stored(self, built: Sequence[tuple[Any, Prediction, Any]], store: Callable[[], list[str]]) -> list[str]:
        """``store()``'s statuses; when it raises, an audit entry for each SR it was storing, then the error."""
        try:
            return store()
        except Exception as err:
            for ref, _, sr in built:
                self.state.audit("store failed", source=_source(ref), sr_sop=str(sr.SOPInstanceUID),
                                 destination=self.destination, error=one_line(str(err)))
            raise

    def _record(self, item: tuple[Any, Prediction, Any], status: str) -> None:
        """The result line and audit entry of an SR the archive now holds."""
        ref, prediction, _ = item
        uids = result_uids(ref.sop, self.digest)
        self._stores += 1
        if self._kill_after and self._stores >= self._kill_after:
            os.kill(os.getpid(), signal.SIGKILL)  # the worst moment: stored, not yet recorded
        probabilities = prediction.probabilities or []
        top = [{"class_index": k, "label": label, "probability": probabilities[k]}
               for k, label in top_classes(probabilities, self.model.labels, self.top_k)]
        record = {"source": _source(ref), "status": status, "label": prediction.label,
                  "class_index": prediction.class_index, "probability": prediction.probability, "top_k": top,
                  "sr_series": uids.series, "sr_sop": uids.sop, "error": None}
        self.state.result(record)
        self.state.audit("stored SR", source=_source(ref), sr_series=uids.series, sr_sop=uids.sop,
                         store_status=status, destination=self.destination, label=prediction.label,
                         probability=prediction.probability)
        if status == "stored":
            self.counts.stored += 1
        else:
            self.counts.already += 1
        self.log(f"{ref.sop}: {prediction.label} {prediction.probability:.4f} -> SR {uids.sop} ({status})")


class ExistingSRs:
    """Whether the archive already holds an instance's SR, with one QIDO-RS per study instead of one per instance.

    The SRs' series are listed once per study (``archive.sr_series``; instances come study by study, so only the
    current study's list is kept); an SR whose derived series is not listed is not there, and one whose series is
    listed is confirmed by its SOP Instance UID (``archive.exists``). A destination without ``sr_series`` is
    asked per instance; one without ``exists`` (a DIMSE destination) is never asked."""

    def __init__(self, archive: Any) -> None:
        self.archive = archive
        self.study: str | None = None
        self.series: set[str] = set()

    def holds(self, study: str, uids: ResultUIDs) -> bool:
        if not study or not hasattr(self.archive, "exists"):
            return False
        if hasattr(self.archive, "sr_series"):
            if study != self.study:
                self.study, self.series = study, self.archive.sr_series(study)
            if uids.series not in self.series:
                return False
        return bool(self.archive.exists(study, uids.sop))


def _fetch(archive: Any, refs: Sequence[Any]) -> list[tuple[Any, Any]]:
    """(ref, dataset) for each ref, or (ref, the archive's refusal) for an instance it refuses to give; an
    unavailable archive raises (and stops the job)."""
    from .dicomweb import ArchiveRejected

    out: list[tuple[Any, Any]] = []
    for ref in refs:
        try:
            out.append((ref, archive.retrieve(ref)))
        except ArchiveRejected as err:
            out.append((ref, err))
    return out


def _usable(reporter: Reporter, fetched: Sequence[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    from .dicomweb import ArchiveRejected

    pairs = []
    for ref, ds in fetched:
        if isinstance(ds, ArchiveRejected):
            reporter.refuse(ref, f"cannot retrieve it: {ds}")
        else:
            pairs.append((ref, ds))
    return pairs


class _Prefetch:
    """Retrieves the next batch (WADO-RS, through its own HTTP session, in one background thread) while the
    current one is predicted, reported and stored; every result line is still written by the caller's thread,
    in order."""

    def __init__(self, archive: Any, reporter: Reporter) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.reporter = reporter
        self.fetcher = _own_session(archive)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wado-prefetch")
        self.inflight: Any = None

    def add(self, refs: Sequence[Any]) -> None:
        """Start retrieving ``refs``, then report the batch retrieved before them."""
        if not refs:
            return
        future = self.pool.submit(_fetch, self.fetcher, list(refs))
        self._report_inflight()
        self.inflight = future

    def finish(self) -> None:
        self._report_inflight()

    def _report_inflight(self) -> None:
        if self.inflight is not None:
            future, self.inflight = self.inflight, None
            self.reporter.report(_usable(self.reporter, future.result()))

    def close(self) -> None:
        if self.inflight is not None:
            self.inflight.cancel()
        self.pool.shutdown(wait=True)


def _own_session(archive: Any) -> Any:
    """The archive through an HTTP session of its own, for another thread (a requests.Session is not
    thread-safe); an archive without ``clone`` is shared as it is."""
    return archive.clone() if hasattr(archive, "clone") else archive


def run_job(archive: Any, model: OnnxStudent, state: JobState, *, study: str | None = None,
            since: str | None = None, modalities: Sequence[str] | None = None, batch_size: int = 16,
            top_k: int = 3, watch: bool = False, interval: float = 10.0, stop: threading.Event | None = None,
            log: Callable[[str], None] = _log) -> Counts:
    """One pass over the archive (or, with ``watch``, passes every ``interval`` seconds until ``stop``)."""
    stop = stop or threading.Event()
    storer = _own_session(archive)  # the store thread's (the job's thread searches with ``archive`` meanwhile)
    reporter = Reporter(model, state, storer.store, top_k=top_k, batch_size=batch_size, destination=archive.url,
                        log=log, background_store=True, store_many=getattr(storer, "store_many", None))
    state.audit("job started", archive=archive.url, study=study, since=since, modalities=list(modalities or []),
                model=str(model.path), model_name=reporter.identity["name"],
                validation_status=reporter.identity["validation_status"])
    prefetch = _Prefetch(archive, reporter)
    try:
        _passes(archive, reporter, state, prefetch, study, since, modalities, batch_size, watch, interval, stop, log)
    finally:
        prefetch.close()
        reporter.close()
    state.audit("job finished", **vars(reporter.counts))
    return reporter.counts


def _passes(archive: Any, reporter: Reporter, state: JobState, prefetch: _Prefetch, study: str | None,
            since: str | None, modalities: Sequence[str] | None, batch_size: int, watch: bool, interval: float,
            stop: threading.Event, log: Callable[[str], None]) -> None:
    first = True
    known: dict[str, int] = {}  # study -> its instance count when last searched (watch: only changed studies)
    while True:
        refs = _new_refs(archive, study, since, modalities, known)
        existing = ExistingSRs(archive)
        pending = []
        for ref in refs:
            if state.is_done(ref.sop):  # every instance of a pass has its result line when the pass ends
                reporter.counts.skipped += first  # done before this job started
                continue
            reason = header_refusal(ref.sop_class, ref.modality)
            if reason:
                reporter.refuse(ref, reason)
            elif existing.holds(ref.study, uids := result_uids(ref.sop, reporter.digest)):
                reporter.found(ref, uids)
            else:
                pending.append(ref)
            if len(pending) >= batch_size:
                prefetch.add(pending)
                pending = []
            if stop.is_set():
                break
        prefetch.add(pending)
        prefetch.finish()
        reporter.flush()  # every SR of this pass stored and recorded (or the error that stopped it raised)
        first = False
        if not watch or stop.wait(interval):
            break


def _new_refs(archive: Any, study: str | None, since: str | None, modalities: Sequence[str] | None,
              known: dict[str, int]) -> list[Any]:
    """The instances to look at in this pass: with ``--study``, that study's; otherwise the studies are listed
    first (QIDO-RS, one row per study) and only those whose instance count changed since the last pass are
    searched instance by instance. A ``--watch`` poll then costs (and holds in memory) one row per study, not
    one per instance of the archive, and the node's memory stays flat as the archive grows."""
    if study or not hasattr(archive, "studies"):
        return archive.search(study=study, since=since, modalities=modalities)
    refs: list[Any] = []
    for uid, count in sorted(archive.studies(since=since).items()):
        if count >= 0 and known.get(uid) == count:
            continue
        refs.extend(archive.search(study=uid, since=since, modalities=modalities))
        known[uid] = count
    return refs


__all__ = ["run_job", "Reporter", "ExistingSRs", "header_refusal", "Counts", "KILL_AFTER_STORES"]
