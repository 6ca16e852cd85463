"""The PACS node under faults and with other peers: Orthanc killed and restarted in the middle of a batch
(bounded retries with backoff, then success, nothing written half), a 409 answer from an archive that is not
Orthanc (a tiny local stand-in that speaks just enough STOW-RS and QIDO-RS, the only stand-in in these tests),
and SRs sent back by C-STORE (``pacs listen --send-to``) to a pynetdicom SCP started here."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")
pytest.importorskip("dicomweb_client")
pytest.importorskip("pynetdicom")

import orthanc_server  # noqa: E402
import runtime_fixtures as fx  # noqa: E402
from robust_student_runtime import OnnxStudent  # noqa: E402
from robust_student_runtime.pacs import cli as pacs_cli  # noqa: E402
from robust_student_runtime.pacs.report import ReportBuilder, result_uids  # noqa: E402
from robust_student_runtime.pacs.state import read_lines  # noqa: E402


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return fx.make_model(tmp_path_factory.mktemp("faultmodel") / "model.onnx")


def _bytes(ds) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _srs(server, study: str) -> list:
    out = []
    for orthanc_id in server.instances():
        tags = server.tags(orthanc_id)
        if tags.get("StudyInstanceUID") == study and tags.get("Modality") == "SR":
            out.append(pydicom.dcmread(io.BytesIO(server.file(orthanc_id))))
    return out


@pytest.mark.skipif(bool(orthanc_server.available()), reason=str(orthanc_server.available()))
def test_orthanc_restarted_mid_batch_is_retried_with_backoff_and_the_batch_finishes_whole(model_path, tmp_path):
    from pydicom.uid import generate_uid

    server = orthanc_server.Orthanc(tmp_path / "orthanc").start()
    node = None
    try:
        study, series = generate_uid(), generate_uid()
        images = [fx.image_dataset(seed=300 + k, study=study, series=series) for k in range(100)]
        for k, ds in enumerate(images, start=1):
            ds.InstanceNumber = k
            server.upload(_bytes(ds))
        out = tmp_path / "job"
        env = {**os.environ, pacs_cli.PASSWORD_ENV: orthanc_server.PASSWORD}
        log = open(tmp_path / "node.log", "w")  # a file: a pipe read only at the end could fill and block it
        node = subprocess.Popen(
            [sys.executable, "-m", "robust_student_runtime", "pacs", "run", "--url", server.dicomweb, "--user",
             orthanc_server.USER, "--model", str(model_path), "--study", study, "--out", str(out),
             "--batch-size", "2", "--retries", "8", "--backoff", "0.25"],
            env=env, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 120
        while len(read_lines(out / "results.jsonl")) < 2:  # the node is in the middle of the job
            assert node.poll() is None and time.monotonic() < deadline, (tmp_path / "node.log").read_text()[-2000:]
            time.sleep(0.02)
        os.killpg(server.process.pid, signal.SIGKILL)  # Orthanc dies mid-batch, the node keeps trying ...
        server.process.wait(timeout=30)
        server.process = None
        time.sleep(1.5)
        assert node.poll() is None, "the node gave up (or finished) while Orthanc was down"
        server.start()  # ... and it comes back on the same port with the same storage
        node.wait(timeout=300)
        err = (tmp_path / "node.log").read_text()
        assert node.returncode == 0, err[-3000:]
        assert "transient failure" in err and "retry 1 of 8 in 0.25 s" in err  # backoff doubling from 0.25 s
        assert "retry 8 of 8" not in err  # bounded, and not exhausted
        results = read_lines(out / "results.jsonl")
        per_source: dict = {}
        for line in results:
            per_source.setdefault(line["source"]["sop"], []).append(line)
        assert sorted(per_source) == sorted(str(ds.SOPInstanceUID) for ds in images)
        assert all(len(lines) == 1 and lines[0]["status"] in ("stored", "already stored")
                   for lines in per_source.values())
        srs = _srs(server, study)
        # one SR per image, each line's SR is in the archive (nothing recorded that was not stored), no duplicate
        assert len(srs) == len(images) == len({str(sr.SOPInstanceUID) for sr in srs})
        assert {line[0]["sr_sop"] for line in per_source.values()} == {str(sr.SOPInstanceUID) for sr in srs}
    finally:
        if node is not None and node.poll() is None:
            node.kill()
            node.wait(timeout=30)
        server.close()


class _StandIn(BaseHTTPRequestHandler):
    """A non-Orthanc archive: STOW-RS answers 409 Conflict; QIDO-RS lists what ``held`` holds."""

    held: set = set()
    posts: list = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        type(self).posts.append(self.path)
        body = json.dumps({"00081198": {"vr": "SQ", "Value": []}}).encode()
        self.send_response(409)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802
        from urllib.parse import parse_qs, urlparse

        query = parse_qs(urlparse(self.path).query)
        sop = (query.get("SOPInstanceUID") or [""])[0]
        rows = [{"00080018": {"vr": "UI", "Value": [sop]}}] if sop in type(self).held else []
        body = json.dumps(rows).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # quiet
        pass


def test_a_409_from_an_archive_that_is_not_orthanc_is_already_stored_when_it_holds_the_sr(model_path):
    from robust_student_runtime.pacs.dicomweb import Archive, ArchiveRejected

    model = OnnxStudent(model_path)
    source = fx.image_dataset(seed=400)
    sr = ReportBuilder(model).build(source, model.predict([source])[0])
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        archive = Archive(f"http://127.0.0.1:{server.server_address[1]}/dicom-web", retries=2, backoff=0.0,
                          sleep=lambda s: None)
        _StandIn.held = {str(sr.SOPInstanceUID)}
        assert archive.store(sr) == "already stored"
        assert len(_StandIn.posts) == 1  # a 409 is permanent: never retried, answered by a lookup
        # a batch refused whole (409): each SR asked about alone, so one the archive holds is "already stored"
        assert archive.store_many([sr]) == ["already stored"] and len(_StandIn.posts) == 3
        _StandIn.held = set()  # a 409 for an SR the archive does not hold is a real conflict: an error
        with pytest.raises(ArchiveRejected, match=r"HTTP 409"):
            archive.store(sr)
        assert len(_StandIn.posts) == 4
        with pytest.raises(ArchiveRejected, match=r"HTTP 409"):
            archive.store_many([sr])
        assert sr.SOPInstanceUID == result_uids(str(source.SOPInstanceUID), model.metadata["weights_sha256"]).sop
    finally:
        server.shutdown()
        server.server_close()


def test_pacs_listen_sends_the_srs_back_by_c_store_to_a_configured_ae(model_path, tmp_path):
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
    from pynetdicom import AE, evt

    received: list = []

    def on_store(event):
        ds = event.dataset
        ds.file_meta = event.file_meta
        received.append((event.assoc.requestor.ae_title, ds))
        return 0x0000

    archive_ae = AE(ae_title="ARCHIVE")
    archive_ae.add_supported_context("1.2.840.10008.5.1.4.1.1.88.33", [ExplicitVRLittleEndian,
                                                                        ImplicitVRLittleEndian])
    archive_port = orthanc_server.free_port()
    scp = archive_ae.start_server(("127.0.0.1", archive_port), block=False,
                                  evt_handlers=[(evt.EVT_C_STORE, on_store)])
    node_port = orthanc_server.free_port()
    out = tmp_path / "listen"
    process = subprocess.Popen(
        [sys.executable, "-m", "robust_student_runtime", "pacs", "listen", "--port", str(node_port), "--model",
         str(model_path), "--out", str(out), "--stable-seconds", "1", "--ae-title", "RSNODE",
         "--send-to", f"ARCHIVE@127.0.0.1:{archive_port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        study, series = generate_uid(), generate_uid()
        images = [fx.image_dataset(seed=500 + k, study=study, series=series) for k in range(3)]
        for k, ds in enumerate(images, start=1):
            ds.InstanceNumber = k
        fx.wait_for_port(node_port, process)
        sender = AE(ae_title="MODALITY")
        for ds in images:
            sender.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = sender.associate("127.0.0.1", node_port, ae_title="RSNODE")
        assert assoc.is_established
        try:
            assert [int(assoc.send_c_store(ds).Status) for ds in images] == [0, 0, 0]
        finally:
            assoc.release()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and len(received) < len(images):
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
        scp.shutdown()
    assert process.returncode == 0, err[-2000:]
    assert len(received) == len(images) and {title for title, _ in received} == {"RSNODE"}
    model = OnnxStudent(model_path)
    by_source = {}
    for _, sr in received:
        buffer = io.BytesIO()
        sr.save_as(buffer, enforce_file_format=True)
        report = hd.sr.srread(io.BytesIO(buffer.getvalue()))  # highdicom's reader, not the node's code
        group = report.content.get_image_measurement_groups()[0]
        by_source[str(group.source_images[0].referenced_sop_instance_uid)] = (sr, group)
    assert sorted(by_source) == sorted(str(ds.SOPInstanceUID) for ds in images)
    for ds in images:
        sr, group = by_source[str(ds.SOPInstanceUID)]
        expected = model.predict([ds])[0]
        assert sr.PatientID == ds.PatientID and sr.StudyInstanceUID == ds.StudyInstanceUID
        assert group.finding_type.meaning == expected.label
        assert abs(group.get_measurements()[0].value - expected.probability) < 1e-5
    results = read_lines(out / "results.jsonl")
    assert sorted(r["status"] for r in results) == ["stored"] * 3
    assert {json.loads(line)["destination"] for line in (out / "audit.jsonl").read_text().splitlines()
            if json.loads(line)["action"] == "stored SR"} == {f"dicom://ARCHIVE@127.0.0.1:{archive_port}"}


@pytest.mark.skipif(bool(orthanc_server.available()), reason=str(orthanc_server.available()))
def test_watch_polls_studies_and_reports_instances_as_they_arrive(model_path, tmp_path):
    """``pacs run --watch`` without ``--study``: each poll lists studies (one QIDO row per study) and searches
    only those whose instance count changed; studies arriving later are reported, nothing twice."""
    from pydicom.uid import generate_uid

    server = orthanc_server.Orthanc(tmp_path / "orthanc").start()
    node = None
    try:
        def upload_study(seed: int, n: int, modality: str = "CR") -> list:
            study, series = generate_uid(), generate_uid()
            images = [fx.image_dataset(seed=seed + k, study=study, series=series, modality=modality)
                      for k in range(n)]
            for ds in images:
                server.upload(_bytes(ds))
            return images

        first = upload_study(600, 3)
        upload_study(610, 2, modality="MR")  # filtered out at the instance level (--modality CR)
        out = tmp_path / "job"
        env = {**os.environ, pacs_cli.PASSWORD_ENV: orthanc_server.PASSWORD}
        log = open(tmp_path / "node.log", "w")
        node = subprocess.Popen(
            [sys.executable, "-m", "robust_student_runtime", "pacs", "run", "--url", server.dicomweb, "--user",
             orthanc_server.USER, "--model", str(model_path), "--modality", "CR", "--out", str(out), "--watch",
             "--interval", "0.5"], env=env, stdout=subprocess.DEVNULL, stderr=log)

        def wait_for(n: int) -> None:
            deadline = time.monotonic() + 120
            while len(read_lines(out / "results.jsonl")) < n:
                assert node.poll() is None and time.monotonic() < deadline, (tmp_path / "node.log").read_text()
                time.sleep(0.2)

        wait_for(3)
        later = upload_study(620, 2) + upload_study(630, 1)
        wait_for(6)
        time.sleep(1.5)  # a few more polls: nothing new, nothing redone
        node.send_signal(signal.SIGTERM)
        assert node.wait(timeout=60) == 0, (tmp_path / "node.log").read_text()[-2000:]
        results = read_lines(out / "results.jsonl")
        assert sorted(r["source"]["sop"] for r in results) == sorted(str(ds.SOPInstanceUID) for ds in first + later)
        assert all(r["status"] == "stored" for r in results)
    finally:
        if node is not None and node.poll() is None:
            node.kill()
            node.wait(timeout=30)
        server.close()
