"""The archive over DICOMweb (dicomweb-client): QIDO-RS search, WADO-RS retrieve, STOW-RS store.

Transient failures (connection refused or reset, timeouts, HTTP 408, 429, 500, 502, 503, 504) are retried with
exponential backoff, a bounded number of times, then raised as :class:`ArchiveUnavailable`; a permanent answer
(any other 4xx, a STOW FailedSOPSequence) is never retried and raised as :class:`ArchiveRejected`. A store of
an instance the archive already holds is a success either way it is answered: Orthanc answers 200 and keeps its
copy, other archives answer 409 (then the node checks that the instance is there).

Responses are asked for uncompressed (``Accept-Encoding: identity``): requests offers gzip by default, and Orthanc
then deflates every WADO-RS instance it sends, which cost it ~15 ms of CPU per 512 KB instance (and the node as
much again to inflate) against ~0.5 ms uncompressed (measured on loopback, Debian's Orthanc 1.10); pixel data
compresses poorly, and a node sits next to its archive.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence, TypeVar

from ..images import one_line

T = TypeVar("T")
TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}

# QIDO attribute tags (hex) of an instance row
TAGS = {"SOPClassUID": "00080016", "SOPInstanceUID": "00080018", "StudyInstanceUID": "0020000D",
        "SeriesInstanceUID": "0020000E", "Modality": "00080060", "InstanceNumber": "00200013",
        "StudyDate": "00080020", "SeriesNumber": "00200011", "NumberOfStudyRelatedInstances": "00201208"}


class ArchiveError(RuntimeError):
    """The archive could not do what was asked (the message is one line, without credentials)."""


class ArchiveUnavailable(ArchiveError):
    """Transient failures persisted through every retry."""


class ArchiveRejected(ArchiveError):
    """A permanent rejection (never retried)."""


@dataclass(frozen=True)
class InstanceRef:
    study: str
    series: str
    sop: str
    sop_class: str
    modality: str
    number: int = 0

    @classmethod
    def from_qido(cls, row: dict[str, Any]) -> "InstanceRef":
        def get(name: str) -> str:
            values = (row.get(TAGS[name]) or {}).get("Value") or [""]
            return str(values[0])

        try:
            number = int(float(get("InstanceNumber") or 0))
        except ValueError:
            number = 0
        return cls(get("StudyInstanceUID"), get("SeriesInstanceUID"), get("SOPInstanceUID"), get("SOPClassUID"),
                   get("Modality").upper(), number)


def _status(err: BaseException) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def _is_transient(err: BaseException) -> bool:
    import requests

    if isinstance(err, (requests.ConnectionError, requests.Timeout)):
        return True
    status = _status(err)
    return status in TRANSIENT_STATUS


class Archive:
    """A DICOMweb archive at ``url`` (e.g. ``http://127.0.0.1:8042/dicom-web``) with HTTP basic auth."""

    def __init__(self, url: str, user: str | None = None, password: str | None = None, *, retries: int = 4,
                 backoff: float = 0.5, timeout: float = 30.0, sleep: Callable[[float], None] = time.sleep,
                 log: Callable[[str], None] | None = None) -> None:
        import requests
        from dicomweb_client.api import DICOMwebClient

        self.url = url.rstrip("/")
        self.user = user
        self._settings = (url, user, password, retries, backoff, timeout, sleep, log)
        self.log = log or _stderr
        session = requests.Session()
        session.headers["Accept-Encoding"] = "identity"  # see the module's docstring: compression costs CPU
        if user is not None:
            session.auth = (user, password or "")
        self.client = DICOMwebClient(self.url, session=session, timeout=timeout)
        self.client.set_http_retry_params(retry=False)  # retried here, on transient failures only
        self.retries, self.backoff, self.sleep = int(retries), float(backoff), sleep
        self.attempts = 0  # every HTTP call tried, retries included (for the tests and the audit)

    def clone(self) -> "Archive":
        """The same archive through its own HTTP session (one per thread: a requests.Session is not thread-safe)."""
        url, user, password, retries, backoff, timeout, sleep, log = self._settings
        return Archive(url, user, password, retries=retries, backoff=backoff, timeout=timeout, sleep=sleep, log=log)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        for attempt in range(self.retries + 1):
            self.attempts += 1
            try:
                return fn()
            except Exception as err:  # noqa: BLE001 - requests / dicomweb-client raise many types
                if not _is_transient(err):
                    status = _status(err)
                    raise ArchiveRejected(f"{what}: rejected by {self.url}"
                                          f"{f' (HTTP {status})' if status else ''}: {_one_line(err)}") from None
                if attempt == self.retries:
                    raise ArchiveUnavailable(f"{what}: {self.url} unavailable after {self.retries + 1} attempts "
                                             f"({_one_line(err)})") from None
                delay = self.backoff * 2 ** attempt
                self.log(f"{what}: transient failure ({_one_line(err)[:160]}); retry {attempt + 1} of "
                         f"{self.retries} in {delay:g} s")
                self.sleep(delay)
        raise AssertionError("unreachable")

    # -- QIDO-RS ----------------------------------------------------------------------------------------------
    def search(self, *, study: str | None = None, since: str | None = None,
               modalities: Iterable[str] | None = None) -> list[InstanceRef]:
        """Every instance matching the filters, sorted by study, series, instance number and UID."""
        filters: dict[str, Any] = {}
        if since:
            filters["StudyDate"] = f"{since.replace('-', '')}-"
        fields = list(TAGS)
        queries = [dict(filters, Modality=m) for m in modalities] if modalities else [filters]
        rows: dict[str, InstanceRef] = {}
        for query in queries:
            found = self._call("QIDO-RS search", lambda q=query: self.client.search_for_instances(
                study_instance_uid=study, fields=fields, search_filters=q, get_remaining=True))
            for row in found:
                ref = InstanceRef.from_qido(row)
                if ref.sop:
                    rows[ref.sop] = ref
        return sorted(rows.values(), key=lambda r: (r.study, r.series, r.number, r.sop))

    def studies(self, *, since: str | None = None) -> dict[str, int]:
        """StudyInstanceUID -> NumberOfStudyRelatedInstances of every study on or after ``since`` (QIDO-RS at the
        study level: one row per study, so a poll of a large archive stays small). Modalities are filtered at the
        instance level (Orthanc 1.10 pages a ModalitiesInStudy query without end)."""
        filters: dict[str, Any] = {}
        if since:
            filters["StudyDate"] = f"{since.replace('-', '')}-"
        found = self._call("QIDO-RS study search", lambda: self.client.search_for_studies(
            fields=["StudyInstanceUID", "NumberOfStudyRelatedInstances"], search_filters=filters,
            get_remaining=True))
        out: dict[str, int] = {}
        for row in found:
            uid = str(((row.get(TAGS["StudyInstanceUID"]) or {}).get("Value") or [""])[0])
            try:
                count = int(((row.get(TAGS["NumberOfStudyRelatedInstances"]) or {}).get("Value") or [-1])[0])
            except (TypeError, ValueError):
                count = -1
            if uid:  # one UID in several rows (Orthanc keys a study by patient too): add the counts up
                out[uid] = -1 if count < 0 or out.get(uid, 0) < 0 else out.get(uid, 0) + count
        return out

    def sr_series(self, study: str) -> set[str]:
        """The Series Instance UIDs of every SR series in ``study`` (one QIDO-RS at the series level): the node's
        SRs each have a series of their own, derived like their SOP Instance UID, so one search per study tells
        which instances may already have an SR (then confirmed with :meth:`exists`) instead of one per instance."""
        found = self._call("QIDO-RS series search", lambda: self.client.search_for_series(
            study_instance_uid=study, search_filters={"Modality": "SR"}, fields=["SeriesInstanceUID"],
            get_remaining=True))
        return {uid for row in found if (uid := str(((row.get(TAGS["SeriesInstanceUID"]) or {}).get("Value")
                                                      or [""])[0]))}

    def exists(self, study: str, sop: str) -> bool:
        """Whether the archive holds instance ``sop`` in ``study`` (QIDO-RS)."""
        found = self._call("QIDO-RS lookup", lambda: self.client.search_for_instances(
            study_instance_uid=study, search_filters={"SOPInstanceUID": sop}, fields=["SOPInstanceUID"]))
        return any(InstanceRef.from_qido(row).sop == sop for row in found)

    # -- WADO-RS ----------------------------------------------------------------------------------------------
    def retrieve(self, ref: InstanceRef) -> Any:
        return self._call(f"WADO-RS retrieve {ref.sop}", lambda: self.client.retrieve_instance(
            ref.study, ref.series, ref.sop))

    # -- STOW-RS ----------------------------------------------------------------------------------------------
    def store(self, dataset: Any) -> str:
        """Store ``dataset``; ``"stored"``, or ``"already stored"`` (a 409 for an instance the archive holds)."""
        study, sop = str(dataset.StudyInstanceUID), str(dataset.SOPInstanceUID)
        try:
            answer = self._post(study, [dataset], f"STOW-RS store {sop}")
        except ArchiveRejected as err:
            if "(HTTP 409)" in str(err) and self.exists(study, sop):
                return "already stored"
            raise
        failed = _failed(answer)
        if failed:
            raise ArchiveRejected(f"STOW-RS store {sop}: the archive refused it "
                                  f"({', '.join(f'{uid}: 0x{reason:04X}' for uid, reason in failed.items())})")
        return "stored"

    def store_many(self, datasets: Sequence[Any]) -> list[str]:
        """Store ``datasets`` with one STOW-RS request per study (a batch's SRs in one round trip instead of one
        each); each one's status as :meth:`store` gives it. An instance the archive refused in that request (it
        is named in the answer's FailedSOPSequence), or every instance when the whole request was refused (a 409
        from an archive that holds them all, a 400), is stored again alone by :meth:`store`, which tells
        "already stored" from a real refusal and raises that one's error; transient failures are retried whole
        (the SRs' UIDs are fixed, so a retried request stores nothing twice)."""
        statuses: dict[int, str] = {}
        by_study: dict[str, list[int]] = {}
        for index, dataset in enumerate(datasets):
            by_study.setdefault(str(dataset.StudyInstanceUID), []).append(index)
        for study, indices in by_study.items():
            uids = {str(datasets[i].SOPInstanceUID) for i in indices}
            try:
                failed = set(_failed(self._post(study, [datasets[i] for i in indices],
                                                f"STOW-RS store of {len(indices)} SR(s) in study {study}")))
            except ArchiveRejected:
                failed = uids
            if not failed <= uids:  # a failure naming no instance of the request: ask about each one alone
                failed = uids
            for i in indices:
                statuses[i] = self.store(datasets[i]) if str(datasets[i].SOPInstanceUID) in failed else "stored"
        return [statuses[i] for i in range(len(datasets))]

    def _post(self, study: str, datasets: Sequence[Any], what: str) -> Any:
        return self._call(what, lambda: self.client.store_instances(list(datasets), study_instance_uid=study))


def _failed(answer: Any) -> dict[str, int]:
    """SOP Instance UID -> failure reason of each instance a STOW-RS answer names as not stored."""
    failed = getattr(answer, "FailedSOPSequence", None) if answer is not None else None
    return {str(item.get("ReferencedSOPInstanceUID", "?")): int(item.get("FailureReason", 0) or 0)
            for item in failed or []}


def _stderr(message: str) -> None:
    import sys

    print(message, file=sys.stderr, flush=True)


def _one_line(err: BaseException) -> str:
    text = one_line(str(err))
    return text[:300] if text else type(err).__name__


__all__ = ["Archive", "InstanceRef", "ArchiveError", "ArchiveUnavailable", "ArchiveRejected", "TRANSIENT_STATUS"]
