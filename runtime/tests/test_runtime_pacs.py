"""The PACS node against a real Orthanc (Debian's orthanc + orthanc-dicomweb, started here on loopback with a
temporary configuration, basic auth on, stopped afterwards): QIDO/WADO/STOW, the TID 1500 SR read back with
pydicom and highdicom (not with the node's code), one SR per image after two runs and after a kill + restart,
a refusal line for each non-image, retries when Orthanc is down, a tampered model refused at start."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")
pytest.importorskip("dicomweb_client")

import orthanc_server  # noqa: E402
import runtime_fixtures as fx  # noqa: E402
from robust_student_runtime import OnnxStudent  # noqa: E402
from robust_student_runtime.pacs import cli as pacs_cli  # noqa: E402
from robust_student_runtime.pacs.report import CLASS_SCHEME, result_uids  # noqa: E402
from robust_student_runtime.pacs.state import read_lines  # noqa: E402

if orthanc_server.available():
    pytest.skip(orthanc_server.available(), allow_module_level=True)


@pytest.fixture(scope="module")
def orthanc():
    server = orthanc_server.Orthanc().start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return fx.make_model(tmp_path_factory.mktemp("pacsmodel") / "model.onnx")


def _jpeg(ds):
    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    raw = np.frombuffer(ds.PixelData, np.uint8).reshape(ds.Rows, ds.Columns)
    buffer = io.BytesIO()
    Image.fromarray(raw).save(buffer, format="JPEG", quality=95)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    return ds


def corpus(folder: Path, study: str) -> dict[str, Path]:
    """The acceptance corpus: CR/DX images of every flavour, and what must be refused."""
    from pydicom.uid import RLELossless, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    kw = dict(study=study)
    series_a, series_b = generate_uid(), generate_uid()
    files = {
        "cr_mono1_16bit_window": fx.image_dataset(seed=1, photometric="MONOCHROME1", window=(2000.0, 3000.0),
                                                  series=series_a, **kw),
        "cr_mono2_16bit": fx.image_dataset(seed=2, series=series_a, **kw),
        "dx_mono2_8bit": fx.image_dataset(seed=3, modality="DX", bits=8, series=series_b, **kw),
        "cr_voi_lut": fx.image_dataset(seed=4, voi_lut=True, series=series_a, **kw),
        "cr_jpeg": _jpeg(fx.image_dataset(seed=5, bits=8, series=series_b, **kw)),
        "cr_rle": fx.image_dataset(seed=6, series=series_b, **kw),
        "multiframe": fx.image_dataset(seed=7, sop="1.2.840.10008.5.1.4.1.1.7.2", modality="OT", bits=8,
                                       series=series_b, **kw),
        "sr": fx.non_image("SR", **kw), "seg": fx.non_image("SEG", **kw), "rtdose": fx.non_image("RTDOSE", **kw),
        "malformed": fx.image_dataset(seed=8, series=series_a, **kw),
    }
    files["cr_rle"].compress(RLELossless)
    mf = files["multiframe"]
    mf.NumberOfFrames = 2
    mf.PixelData = mf.PixelData * 2
    fx.set_raw(files["malformed"], "NumberOfFrames", "abc")
    for k, ds in enumerate(files.values(), start=1):
        ds.InstanceNumber = k
    return {name: fx.save(ds, folder / f"{name}.dcm") for name, ds in files.items()}


IMAGES = ["cr_mono1_16bit_window", "cr_mono2_16bit", "dx_mono2_8bit", "cr_voi_lut", "cr_jpeg", "cr_rle"]
REFUSED = {"multiframe": "multi-frame DICOM ((0028,0008) NumberOfFrames = 2)",
           "sr": "(0008,0060) Modality is SR", "seg": "(0008,0060) Modality is SEG",
           "rtdose": "(0008,0060) Modality is RTDOSE", "malformed": "(0028,0008) NumberOfFrames"}


def upload(orthanc, files: dict[str, Path]) -> None:
    for path in files.values():
        assert orthanc.upload(path.read_bytes())["Status"] == "Success"


def run_node(orthanc, model_path, out: Path, study: str, *extra: str) -> int:
    os.environ[pacs_cli.PASSWORD_ENV] = orthanc_server.PASSWORD
    try:
        return pacs_cli.main(["run", "--url", orthanc.dicomweb, "--user", orthanc_server.USER, "--model",
                              str(model_path), "--study", study, "--out", str(out), "--batch-size", "4", *extra])
    finally:
        os.environ.pop(pacs_cli.PASSWORD_ENV, None)


def srs_in(orthanc, study: str) -> list:
    """Every SR of ``study`` in Orthanc, read with pydicom from Orthanc's REST API (not the node's code)."""
    out = []
    for orthanc_id in orthanc.instances():
        tags = orthanc.tags(orthanc_id)
        if tags.get("StudyInstanceUID") == study and tags.get("Modality") == "SR" and \
                tags.get("Manufacturer") == "robust_student":
            out.append(pydicom.dcmread(io.BytesIO(orthanc.file(orthanc_id))))
    return out


def test_orthanc_is_reachable_from_loopback_only(orthanc):
    config = json.loads(orthanc.config_path.read_text())
    assert config["RemoteAccessAllowed"] is False and config["AuthenticationEnabled"] is True
    assert config["DicomServerEnabled"] is False
    print(orthanc.check_closed())


def test_pacs_run_writes_one_tid1500_sr_per_image_and_a_refusal_per_non_image(orthanc, model_path, tmp_path):
    from pydicom.uid import generate_uid

    study = generate_uid()
    files = corpus(tmp_path / "corpus", study)
    upload(orthanc, files)
    out = tmp_path / "job"
    assert run_node(orthanc, model_path, out, study) == pacs_cli.SOME_REFUSED
    model = OnnxStudent(model_path)
    digest = model.metadata["weights_sha256"]
    srs = {str(sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
               .ReferencedSOPSequence[0].ReferencedSOPInstanceUID): sr for sr in srs_in(orthanc, study)}
    sources = {name: pydicom.dcmread(path) for name, path in files.items()}
    assert sorted(srs) == sorted(str(sources[name].SOPInstanceUID) for name in IMAGES)
    for name in IMAGES:
        source = sources[name]
        sr = srs[str(source.SOPInstanceUID)]
        expected = model.predict(str(files[name]))[0]  # OnnxStudent on the same file from disk
        assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33" and sr.VerificationFlag == "UNVERIFIED"
        assert sr.PatientID == source.PatientID and sr.StudyInstanceUID == source.StudyInstanceUID
        assert sr.PatientName == source.PatientName and sr.AccessionNumber == source.AccessionNumber
        uids = result_uids(str(source.SOPInstanceUID), digest)
        assert (sr.SeriesInstanceUID, sr.SOPInstanceUID) == (uids.series, uids.sop)
        buffer = io.BytesIO()
        sr.save_as(buffer)
        buffer.seek(0)
        report = hd.sr.srread(buffer)
        assert sr.ConceptNameCodeSequence[0].CodeValue == "126000" and sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
        groups = report.content.get_image_measurement_groups()
        assert len(groups) == 3
        ranked = np.argsort(-np.array(expected.probabilities))
        for group, k in zip(groups, ranked):
            assert group.finding_type.scheme_designator == CLASS_SCHEME
            assert int(group.finding_type.value) == int(k) and group.finding_type.meaning == model.labels[k]
            (probability,) = group.get_measurements()
            assert probability.name.value == "122157" and probability.unit.value == "1"
            assert abs(probability.value - expected.probabilities[k]) < 1e-5
            assert [img.referenced_sop_instance_uid for img in group.source_images] == [source.SOPInstanceUID]
        assert groups[0].finding_type.meaning == expected.label
        text = json.dumps(sr.to_json_dict())
        assert f"weights_sha256={digest}" in text and "validation_status=passed" in text
        assert "robust_accuracy=0.6100 under linf eps 2/255" in text
        observer = report.content.get_observer_contexts()[0]
        assert observer.observer_type.value == "121007"  # Device
    results = read_lines(out / "results.jsonl")
    by_name = {name: [r for r in results if r["source"]["sop"] == sources[name].SOPInstanceUID]
               for name in files}
    assert all(len(lines) == 1 for lines in by_name.values()), by_name
    for name in IMAGES:
        line = by_name[name][0]
        assert line["status"] == "stored" and line["sr_sop"] == str(srs[sources[name].SOPInstanceUID].SOPInstanceUID)
    for name, reason in REFUSED.items():
        line = by_name[name][0]
        assert line["status"] == "refused" and reason in line["error"] and "\n" not in line["error"], line
    audit = (out / "audit.jsonl").read_text()
    assert orthanc_server.PASSWORD not in audit and orthanc_server.PASSWORD not in (out / "results.jsonl").read_text()
    assert all(json.loads(line)["who"]["archive_user"] == orthanc_server.USER for line in audit.splitlines())

    # a second run: nothing new (the results file); a fresh job folder: found in the archive, not written twice
    assert run_node(orthanc, model_path, out, study) in (0, pacs_cli.SOME_REFUSED)
    fresh = tmp_path / "fresh"
    run_node(orthanc, model_path, fresh, study)
    fresh_lines = read_lines(fresh / "results.jsonl")
    assert sorted(r["source"]["sop"] for r in fresh_lines if r["status"] == "already stored") == \
        sorted(str(sources[name].SOPInstanceUID) for name in IMAGES)
    own = [r for r in fresh_lines if r["source"]["modality"] == "SR" and r["source"]["sop"] in
           {str(s.SOPInstanceUID) for s in srs.values()}]
    assert len(own) == len(IMAGES) and all("its own output included" in r["error"] for r in own)
    assert len(srs_in(orthanc, study)) == len(IMAGES)


def _subprocess_node(orthanc, model_path, out, study, env_extra=None):
    env = {**os.environ, pacs_cli.PASSWORD_ENV: orthanc_server.PASSWORD, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "robust_student_runtime", "pacs", "run", "--url", orthanc.dicomweb,
                           "--user", orthanc_server.USER, "--model", str(model_path), "--study", study, "--out",
                           str(out), "--batch-size", "2"], env=env, capture_output=True, text=True, timeout=300)


def test_killed_mid_batch_and_restarted_finishes_with_no_duplicate_and_no_missing_sr(orthanc, model_path,
                                                                                    tmp_path):
    from pydicom.uid import generate_uid

    from robust_student_runtime.pacs.node import KILL_AFTER_STORES

    study = generate_uid()
    files = corpus(tmp_path / "corpus", study)
    upload(orthanc, files)
    out = tmp_path / "job"
    killed = _subprocess_node(orthanc, model_path, out, study, {KILL_AFTER_STORES: "3"})
    assert killed.returncode == -9, killed.stderr[-2000:]  # SIGKILL before recording the 3rd stored SR
    before = read_lines(out / "results.jsonl")
    # batches of 2, their SRs stored by one STOW-RS each: the batch of the 3rd is in the archive, not recorded
    at_kill = len(srs_in(orthanc, study))
    assert len([r for r in before if r["status"] == "stored"]) == 2 and at_kill > 2
    again = _subprocess_node(orthanc, model_path, out, study)
    assert again.returncode == pacs_cli.SOME_REFUSED, again.stderr[-2000:]
    results = read_lines(out / "results.jsonl")
    sources = {str(pydicom.dcmread(path).SOPInstanceUID): name for name, path in files.items()}
    per_source = {}
    for line in results:
        per_source.setdefault(line["source"]["sop"], []).append(line)
    assert set(sources) <= set(per_source) and all(len(v) == 1 for k, v in per_source.items() if k in sources)
    statuses = sorted(per_source[sop][0]["status"] for sop, name in sources.items() if name in IMAGES)
    already = at_kill - 2  # stored before the kill, not recorded: found, not written again
    assert statuses == ["already stored"] * already + ["stored"] * (len(IMAGES) - already)
    assert len(srs_in(orthanc, study)) == len(IMAGES)


def test_orthanc_down_means_bounded_retries_then_one_clear_error_and_nothing_half_written(orthanc, model_path,
                                                                                          tmp_path):
    from pydicom.uid import generate_uid

    study = generate_uid()
    upload(orthanc, {"one": fx.save(fx.image_dataset(seed=11, study=study), tmp_path / "one.dcm")})
    orthanc.stop()
    try:
        started = time.monotonic()
        out = tmp_path / "job"
        code = run_node(orthanc, model_path, out, study, "--retries", "2", "--backoff", "0.05")
        assert code == pacs_cli.UNAVAILABLE and time.monotonic() - started < 30
        assert read_lines(out / "results.jsonl") == []
    finally:
        orthanc.start()
    assert run_node(orthanc, model_path, out, study) == 0
    assert [r["status"] for r in read_lines(out / "results.jsonl")] == ["stored"]


def test_transient_errors_are_retried_and_permanent_ones_are_not():
    import requests

    from robust_student_runtime.pacs.dicomweb import Archive, ArchiveRejected, ArchiveUnavailable

    archive = Archive("http://127.0.0.1:9/dicom-web", retries=3, backoff=0.0, sleep=lambda s: None)

    def http_error(status):
        response = requests.Response()
        response.status_code = status
        return requests.HTTPError(f"{status} error", response=response)

    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise http_error(503)
        return "ok"

    assert archive._call("x", flaky) == "ok" and len(calls) == 3
    calls.clear()
    with pytest.raises(ArchiveRejected, match=r"HTTP 400"):
        archive._call("x", lambda: calls.append(1) or (_ for _ in ()).throw(http_error(400)))
    assert len(calls) == 1  # never retried
    with pytest.raises(ArchiveUnavailable, match="unavailable after 4 attempts"):
        archive._call("x", lambda: (_ for _ in ()).throw(requests.ConnectionError("refused")))


def test_a_tampered_model_refuses_to_start(orthanc, model_path, tmp_path, capsys):
    data = bytearray(model_path.read_bytes())
    index = data.find(b"W") + 40  # inside the weight initializer's raw data
    data[index] ^= 0x01
    tampered = tmp_path / "tampered.onnx"
    tampered.write_bytes(bytes(data))
    code = run_node(orthanc, tampered, tmp_path / "job", "1.2.3")
    err = capsys.readouterr().err
    assert code == pacs_cli.USAGE and "digest does not match" in err and not (tmp_path / "job" / "results.jsonl").exists()


def _send(port: int, datasets) -> list[int]:
    """C-STORE ``datasets`` to the node's SCP as a PACS would (pynetdicom SCU)."""
    from pynetdicom import AE

    ae = AE(ae_title="TESTPACS")
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="RSNODE")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def test_pacs_listen_stores_acknowledges_and_reports_each_complete_series(orthanc, model_path, tmp_path):
    from pydicom.uid import generate_uid

    study, series = generate_uid(), generate_uid()
    images = [fx.image_dataset(seed=20 + k, study=study, series=series) for k in range(3)]
    for k, ds in enumerate(images, start=1):
        ds.InstanceNumber = k
    report = fx.non_image("SR", study=study)
    out = tmp_path / "listen"
    code, err = _listen(orthanc, model_path, out, [images[:2], [images[2], report]], wait_for=4)
    assert code == pacs_cli.SOME_REFUSED, err[-2000:]
    srs = srs_in(orthanc, study)
    model = OnnxStudent(model_path)
    referenced = {str(sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
                      .ReferencedSOPSequence[0].ReferencedSOPInstanceUID): sr for sr in srs}
    assert sorted(referenced) == sorted(str(ds.SOPInstanceUID) for ds in images)
    for ds in images:
        expected = model.predict([ds])[0]
        group = hd.sr.srread(_as_file(referenced[str(ds.SOPInstanceUID)])).content.get_image_measurement_groups()[0]
        assert group.finding_type.meaning == expected.label
        assert abs(group.get_measurements()[0].value - expected.probability) < 1e-5
    results = read_lines(out / "results.jsonl")
    assert sorted(r["status"] for r in results) == ["refused", "stored", "stored", "stored"]
    assert not list((out / "spool").glob("*.dcm"))  # every spooled instance has its result line


def _listen(orthanc, model_path, out: Path, batches: list[list], wait_for: int) -> tuple[int, str]:
    """Run ``pacs listen`` (STOW-RS back to ``orthanc``), C-STORE ``batches`` to it (one association each), wait
    until its results file has ``wait_for`` lines, stop it (SIGTERM); its exit code and stderr."""
    import signal

    port = orthanc_server.free_port()
    env = {**os.environ, pacs_cli.PASSWORD_ENV: orthanc_server.PASSWORD}
    process = subprocess.Popen(
        [sys.executable, "-m", "robust_student_runtime", "pacs", "listen", "--port", str(port), "--model",
         str(model_path), "--url", orthanc.dicomweb, "--user", orthanc_server.USER, "--out", str(out),
         "--stable-seconds", "1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        fx.wait_for_port(port, process)
        for batch in batches:
            assert _send(port, batch) == [0] * len(batch)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and len(read_lines(out / "results.jsonl")) < wait_for:
            time.sleep(0.5)
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    return process.returncode, err


def test_pacs_listen_records_an_sr_already_in_the_archive_in_its_results_and_its_audit(orthanc, model_path,
                                                                                     tmp_path):
    from pydicom.uid import generate_uid

    study, series = generate_uid(), generate_uid()
    images = [fx.image_dataset(seed=30 + k, study=study, series=series) for k in range(2)]
    upload(orthanc, {str(k): fx.save(ds, tmp_path / f"{k}.dcm") for k, ds in enumerate(images)})
    assert run_node(orthanc, model_path, tmp_path / "run", study) == 0  # their SRs, stored by `pacs run`
    out = tmp_path / "listen"
    code, err = _listen(orthanc, model_path, out, [images], wait_for=len(images))
    assert code == 0, err[-2000:]
    results = read_lines(out / "results.jsonl")
    assert [r["status"] for r in results] == ["already stored"] * 2
    found = [a for a in read_lines(out / "audit.jsonl") if a["action"] == "found SR"]
    assert sorted(a["source"]["sop"] for a in found) == sorted(str(ds.SOPInstanceUID) for ds in images)
    assert {a["sr_sop"] for a in found} == {r["sr_sop"] for r in results}
    assert all(a["store_status"] == "already stored" and a["destination"] == orthanc.dicomweb for a in found)
    assert len(srs_in(orthanc, study)) == len(images)


def _as_file(ds):
    buffer = io.BytesIO()
    ds.save_as(buffer)
    buffer.seek(0)
    return buffer
