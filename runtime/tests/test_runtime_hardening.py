"""The hardened runner: what the model may see is decided from the header (SOP class allow-list, modality), blank
inputs are refused, every per-item failure is that item's one-line refusal naming the tag, and every input gets
exactly one result line, in order, whatever the batch size; decoder hints; a property test over mutated headers.

Torch-free: the model is a tiny linear classifier built with onnx.helper.
"""

from __future__ import annotations

import io
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pydicom = pytest.importorskip("pydicom")

from PIL import Image  # noqa: E402

import runtime_fixtures as fx  # noqa: E402
from robust_student_runtime import InputError, OnnxStudent, write_predictions  # noqa: E402
from robust_student_runtime import cli as runner_cli  # noqa: E402
from robust_student_runtime import dicom as rdicom  # noqa: E402


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return fx.make_model(tmp_path_factory.mktemp("model") / "model.onnx")


@pytest.fixture(scope="module")
def model(model_path):
    return OnnxStudent(model_path)


@pytest.fixture(scope="module")
def cr_only(tmp_path_factory):
    path = fx.make_model(tmp_path_factory.mktemp("crmodel") / "model.onnx", extra={"modalities": ["CR", "DX"]})
    return OnnxStudent(path)


def _one(model, item) -> str:
    result = model.predict([item], errors="skip")
    assert len(result) == 1
    return result[0].error


# -- what the model may see -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, name", [
    ("RTDOSE", "RT Dose Storage"), ("SEG", "Segmentation Storage"), ("SR", "Comprehensive SR Storage"),
    ("KO", "Key Object Selection Document Storage"), ("PDF", "Encapsulated PDF Storage"),
    ("DICOMDIR", "Media Storage Directory Storage"), ("PR", "Grayscale Softcopy Presentation State Storage"),
])
def test_non_images_are_refused_with_their_sop_class_before_pixels_are_read(model, tmp_path, kind, name,
                                                                         monkeypatch):
    ds = fx.non_image(kind)
    if "PixelData" in ds:
        ds.PixelData = ds.PixelData[:7]  # garbage pixels: never looked at
    path = fx.save(ds, tmp_path / f"{kind}.dcm")
    monkeypatch.setattr(rdicom, "decode", lambda ds: pytest.fail("pixel data was decoded"))
    error = _one(model, str(path))
    assert error.startswith(f"SOP class {name} ({fx.SOP[kind]}) is not an image storage class"), error
    with pytest.raises(InputError, match=f"{kind}.dcm: SOP class {name}"):
        model.predict(str(path))


def test_a_missing_sop_class_is_refused(model, tmp_path):
    ds = fx.image_dataset()
    del ds.SOPClassUID
    ds.file_meta.MediaStorageSOPClassUID = ""
    path = tmp_path / "nosop.dcm"
    ds.save_as(path, enforce_file_format=False)
    assert "(0008,0016) SOPClassUID is missing" in _one(model, str(path))


def test_the_models_modalities_from_its_metadata_are_enforced(cr_only, model, tmp_path):
    assert cr_only.spec.modalities == ("CR", "DX") and model.spec.modalities is None
    mr = fx.save(fx.image_dataset(modality="MR"), tmp_path / "mr.dcm")
    cr = fx.save(fx.image_dataset(modality="CR"), tmp_path / "cr.dcm")
    assert _one(cr_only, str(mr)) == "(0008,0060) Modality is MR; this model was trained on CR, DX only"
    assert _one(cr_only, str(cr)) is None and _one(model, str(mr)) is None
    assert OnnxStudent(cr_only.path, modalities=["MR"]).spec.modalities == ("MR",)


# -- blank inputs ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("where, message", [("above", "lies above its window"), ("below", "lies below its window")])
def test_an_image_entirely_outside_its_window_is_refused(model, tmp_path, where, message):
    raw = np.random.default_rng(1).integers(3000, 4000, (20, 18)) if where == "above" else \
        np.random.default_rng(1).integers(0, 100, (20, 18))
    path = fx.save(fx.image_dataset(raw, window=(1500.0, 400.0)), tmp_path / "w.dcm")
    error = _one(model, str(path))
    assert message in error and "(0028,1050) WindowCenter 1500" in error


def test_constant_inputs_are_refused_and_the_check_can_be_turned_off(model, model_path, tmp_path):
    Image.fromarray(np.full((16, 16), 200, np.uint8)).save(tmp_path / "flat.png")
    assert "near-constant image" in _one(model, str(tmp_path / "flat.png"))
    assert "near-constant image" in _one(model, np.zeros((3, 16, 16), np.float32))
    flat = fx.save(fx.image_dataset(np.full((20, 18), 700)), tmp_path / "flat.dcm")
    assert "near-constant image" in _one(model, str(flat))
    assert _one(OnnxStudent(model_path, min_contrast=0), np.zeros((3, 16, 16), np.float32)) is None


def test_voi_lut_and_monochrome1_and_8_bit_are_read(model, tmp_path):
    for k, kwargs in enumerate([dict(voi_lut=True), dict(photometric="MONOCHROME1"), dict(bits=8),
                                dict(slope=2.0, intercept=-1024.0, window=(3000.0, 6000.0))]):
        path = fx.save(fx.image_dataset(seed=k, **kwargs), tmp_path / f"{k}.dcm")
        assert _one(model, str(path)) is None, kwargs


# -- malformed headers: one refusal naming the tag, the batch goes on -----------------------------------------

@pytest.mark.parametrize("keyword, raw, message", [
    ("NumberOfFrames", "abc", "(0028,0008) NumberOfFrames"),
    ("Rows", None, "(0028,0010) Rows is missing"),
    ("Columns", None, "(0028,0011) Columns is missing"),
    ("BitsAllocated", 12, "(0028,0100) BitsAllocated = 12: 1, 8, 16 or 32 expected"),
    ("PhotometricInterpretation", "PALETTE COLOR", "(0028,0004) PhotometricInterpretation = 'PALETTE COLOR'"),
    ("WindowWidth", "wide", "(0028,1051) WindowWidth"),
    ("RescaleSlope", "steep", "(0028,1053) RescaleSlope"),
    ("SamplesPerPixel", 2, "(0028,0002) SamplesPerPixel = 2"),
])
def test_a_malformed_header_is_that_files_refusal_naming_the_tag(model, tmp_path, keyword, raw, message,
                                                                capsys):
    ds = fx.image_dataset(window=(2000.0, 4000.0), slope=1.0, intercept=0.0)
    if raw is None:
        delattr(ds, keyword)
    else:
        fx.set_raw(ds, keyword, raw)
    bad = tmp_path / "bad.dcm"
    ds.save_as(bad, enforce_file_format=True)
    good = fx.save(fx.image_dataset(seed=5), tmp_path / "good.dcm")
    result = model.predict([str(good), str(bad), str(good)], errors="skip", batch_size=1)
    assert [r.ok for r in result] == [True, False, True]
    assert message in result[1].error and "\n" not in result[1].error, result[1].error
    with pytest.raises(InputError, match=r"bad\.dcm: .*" + message.split(")")[0][1:]):
        model.predict(str(bad))
    # the CLI: one line per input, the bad one naming the file and the tag
    out = io.StringIO()
    write_predictions(model, [str(good), str(bad), str(good)], out, jsonl=False, batch_size=2)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and lines[1].startswith(f"{bad}\tERROR\t") and message in lines[1]


def test_any_exception_while_loading_becomes_a_one_line_refusal(model, tmp_path, monkeypatch):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16), np.uint8)).save(tmp_path / "a.png")

    def broken(path):
        raise SyntaxError("broken PNG\nchunk")

    monkeypatch.setattr(Image, "open", broken)
    error = _one(model, str(tmp_path / "a.png"))
    assert error == "cannot decode the image (corrupt?): SyntaxError: broken PNG chunk"

    from robust_student_runtime import student as rstudent

    def explode(item, spec):
        raise KeyError("odd\tthing\nhappened")

    monkeypatch.setattr(rstudent, "load", explode)
    out = io.StringIO()
    write_predictions(model, ["x\ty.png", "z.png"], out, jsonl=False)
    lines = out.getvalue().splitlines()
    assert lines == ["x\\ty.png\tERROR\tunexpected KeyError: 'odd\\tthing\\nhappened'",
                     "z.png\tERROR\tunexpected KeyError: 'odd\\tthing\\nhappened'"]


@pytest.mark.parametrize("batch_size", [1, 2, 3, 5, 32])
def test_exactly_one_line_per_input_in_order_whatever_the_batch_size(model, tmp_path, batch_size, monkeypatch):
    rng = np.random.default_rng(2)
    paths = []
    for k in range(11):
        if k % 3 == 0:
            path = tmp_path / f"{k}.png"
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), np.uint8)).save(path)
        elif k % 3 == 1:
            path = fx.save(fx.non_image("SR") if k == 4 else fx.image_dataset(seed=k), tmp_path / f"{k}.dcm")
        else:
            path = tmp_path / f"{k}.txt"
            path.write_text("not an image")
        paths.append(str(path))
    paths.append(str(tmp_path / "missing.png"))
    out = io.StringIO()
    result = write_predictions(model, paths, out, jsonl=True, batch_size=batch_size)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["source"] for line in lines] == paths and [line["index"] for line in lines] == list(range(12))
    assert [line["error"] is None for line in lines] == [r.ok for r in result]
    assert sum(r.ok for r in result) == 7  # 4 PNGs + 3 image DICOMs
    # and from stdin, through main(): the same lines
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(paths) + "\n"))
    code = runner_cli.main([str(model.path), "--jsonl", "--batch-size", str(batch_size)])
    assert code == runner_cli.SOME_FAILED


# -- decoders -------------------------------------------------------------------------------------------------

def _jpeg_dataset(tmp_path, quality=95):
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    raw = np.random.default_rng(3).integers(0, 256, (24, 24)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(raw).save(buffer, format="JPEG", quality=quality)
    ds = fx.image_dataset(raw, bits=8)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ds


def test_compressed_dicom_is_decoded_and_a_missing_decoder_names_the_extra(model, tmp_path, monkeypatch):
    from pydicom.uid import RLELossless

    jpeg = fx.save(_jpeg_dataset(tmp_path), tmp_path / "jpeg.dcm")
    rle = fx.image_dataset(seed=4)
    rle.compress(RLELossless)
    rle = fx.save(rle, tmp_path / "rle.dcm")
    assert _one(model, str(jpeg)) is None and _one(model, str(rle)) is None

    from pydicom.pixels.decoders import base

    monkeypatch.setattr(base.Decoder, "is_available", property(lambda self: False))
    monkeypatch.setattr(base.Decoder, "is_native", property(lambda self: False))
    monkeypatch.setattr(type(pydicom.dcmread(jpeg)), "pixel_array",
                        property(lambda self: (_ for _ in ()).throw(RuntimeError("no plugin"))))
    error = _one(model, str(jpeg))
    assert error == ("(7FE0,0010) PixelData: transfer syntax JPEG Baseline (Process 1) (1.2.840.10008.1.2.4.50) "
                     "needs a decoder that is not installed: pip install 'robust-student-runtime[dicom]'"), error


def test_undecodable_data_with_decoders_present_says_not_decodable(model, tmp_path):
    from pydicom.encaps import encapsulate

    ds = _jpeg_dataset(tmp_path)
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xe0garbage" * 4])
    path = fx.save(ds, tmp_path / "garbage.dcm")
    error = _one(model, str(path))
    assert error.startswith("(7FE0,0010) PixelData: not decodable (transfer syntax JPEG Baseline") and \
        "decoders present: pillow" in error and "\n" not in error, error


def test_a_syntax_outside_the_extra_says_which_decoder(model, tmp_path):
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLosslessSV1

    if get_decoder(JPEGLosslessSV1).is_available:
        pytest.skip("a lossless JPEG decoder is installed here")
    ds = _jpeg_dataset(tmp_path)
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    error = _one(model, str(fx.save(ds, tmp_path / "ljpeg.dcm")))
    assert "needs a decoder outside the [dicom] extra (pip install pylibjpeg-libjpeg, GPL-3.0, or python-gdcm)" \
        in error, error


def test_pydicom_2_is_refused_with_the_upgrade(model, tmp_path, monkeypatch):
    path = fx.save(fx.image_dataset(), tmp_path / "cr.dcm")
    monkeypatch.setattr(pydicom, "__version__", "2.4.4")
    assert _one(model, str(path)) == ("reading DICOM needs pydicom >= 3, found 2.4.4: pip install "
                                      "'robust-student-runtime[dicom]' (or pip install -U 'pydicom>=3')")


def test_not_dicom_says_no_force_option(model, tmp_path):
    (tmp_path / "fake.dcm").write_bytes(b"\0" * 300)
    error = _one(model, str(tmp_path / "fake.dcm"))
    assert error.startswith("not a readable DICOM file") and "force" not in error


def test_datasets_from_the_network_are_inputs_too(model, tmp_path):
    ds = fx.image_dataset(seed=9)
    path = fx.save(ds, tmp_path / "net.dcm")
    from_file = model.predict(str(path)).probabilities
    from_dataset = model.predict(pydicom.dcmread(path))
    np.testing.assert_allclose(from_dataset.probabilities, from_file, atol=1e-7)
    assert from_dataset[0].source == f"item 0 <DICOM {ds.SOPInstanceUID}>" or \
        from_dataset[0].source == f"<DICOM {ds.SOPInstanceUID}>"
    assert "SOP class Comprehensive SR Storage" in _one(model, fx.non_image("SR"))


# -- the property: mutated headers never crash and never lose a result ----------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

KEYWORDS = ["NumberOfFrames", "Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "BitsStored", "HighBit",
            "PixelRepresentation", "PhotometricInterpretation", "WindowCenter", "WindowWidth", "RescaleSlope",
            "RescaleIntercept", "SOPClassUID", "Modality", "PixelData", "VOILUTSequence", "TransferSyntaxUID"]
VALUES = st.one_of(st.none(), st.integers(-2 ** 31, 2 ** 31), st.floats(allow_nan=True, allow_infinity=True),
                   st.text(max_size=12), st.binary(max_size=24), st.lists(st.integers(-5, 70000), max_size=4))
VRS = ["UN", "OB", "LO", "US", "SS", "DS", "IS", "UL", "FD", "SQ", "CS", "UI"]
MUTATION = st.tuples(st.sampled_from(KEYWORDS),
                     st.sampled_from(["delete", "value", "vr", "empty", "truncate"]), VALUES, st.sampled_from(VRS))


def _mutated(mutations, seed: int):
    from pydicom.dataelem import DataElement
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    ds = fx.image_dataset(seed=seed, window=(2000.0, 4000.0), slope=1.0, intercept=0.0, voi_lut=seed % 2 == 1)
    for keyword, action, raw, vr in mutations:
        tag = tag_for_keyword(keyword)
        target = ds.file_meta if keyword == "TransferSyntaxUID" else ds
        try:
            if action == "delete":
                if tag in target:
                    del target[tag]
            elif action == "empty":
                target[tag] = DataElement(tag, dictionary_VR(tag), None)
            elif action == "truncate":
                if "PixelData" in ds:
                    ds.PixelData = ds.PixelData[: len(ds.PixelData) * (abs(hash(str(raw))) % 100) // 100]
            elif action == "vr":
                fx.set_raw(target, keyword, raw if raw is not None else b"", "UN" if vr == "SQ" else vr)
            elif raw is None:
                target[tag] = DataElement(tag, dictionary_VR(tag).split(" or ")[0], None)
            else:
                fx.set_raw(target, keyword, raw)
        except Exception:  # noqa: BLE001 - pydicom refused to even hold the value: try the next mutation
            continue
    return ds


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(corpus=st.lists(st.tuples(st.lists(MUTATION, min_size=1, max_size=4), st.integers(0, 50),
                                 st.integers(0, 100)), min_size=1, max_size=6),
       batch_size=st.integers(1, 4))
def test_mutated_headers_never_crash_and_never_lose_a_result(model, corpus, batch_size):
    from pydicom import config

    with tempfile.TemporaryDirectory() as folder:
        paths = []
        old = config.settings.writing_validation_mode
        config.settings.writing_validation_mode = config.IGNORE
        try:
            for k, (mutations, seed, cut) in enumerate(corpus):
                path = Path(folder) / f"{k}.dcm"
                try:
                    _mutated(mutations, seed).save_as(path, enforce_file_format=False)
                except Exception:  # noqa: BLE001 - unwritable: the bytes of a good file, cut short instead
                    fx.save(fx.image_dataset(seed=seed), path)
                    data = path.read_bytes()
                    path.write_bytes(data[: len(data) * cut // 100])
                paths.append(str(path))
                if k % 2:
                    paths.append(str(Path(folder) / "missing.png"))
        finally:
            config.settings.writing_validation_mode = old
        result = model.predict(paths, batch_size=batch_size, errors="skip")
        assert [r.source for r in result] == paths
        for r in result:
            assert r.ok or (r.error and "\n" not in r.error and "\t" not in r.error), r.error
            assert r.ok == (r.probability is not None)
        for jsonl in (True, False):
            out = io.StringIO()
            write_predictions(model, paths, out, jsonl=jsonl, batch_size=batch_size)
            lines = out.getvalue().splitlines()
            assert len(lines) == len(paths)
            sources = [json.loads(line)["source"] for line in lines] if jsonl else \
                [line.split("\t")[0] for line in lines]
            assert sources == paths and all(len(line.split("\t")) == 3 for line in lines if not jsonl)
