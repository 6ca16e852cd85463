"""OnnxStudent, the torch-free runner: every input kind with torch blocked, each bad input with its message, DICOM
(rescale, window, MONOCHROME1) round trips, the CLI's JSON lines, and the providers it reports.

One tiny exported student (resnet_tiny, 16 px, random weights) serves every test.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from PIL import Image  # noqa: E402

import robust_student as rs  # noqa: E402
from robust_student.cli import main  # noqa: E402
from robust_student.export import InputError, OnnxStudent, export_onnx  # noqa: E402

from conftest import TinyTeacher  # noqa: E402

EXPORT_DIR = Path(rs.__file__).resolve().parent.parent / "export"
SIZE = 16


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """(student, folder with model.onnx + the saved student, path)."""
    folder = tmp_path_factory.mktemp("runner")
    teacher = TinyTeacher()
    teacher.set_classes(["apple", "boat", "cat"], ["a photo of a {}."])
    torch.manual_seed(0)
    student = rs.create_student("resnet_tiny", teacher, image_size=SIZE, width=8).eval()
    rs.save_student(student, folder)
    export_onnx(folder, folder / "model.onnx")
    return student, folder, folder / "model.onnx"


def _torch_probabilities(student, chw: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(student(torch.from_numpy(chw)[None].double().float()), 1)[0].numpy()


def write_dicom(path: Path, raw: np.ndarray, *, photometric: str, slope: float | None = None,
                intercept: float | None = None, window: tuple[float, float] | None = None) -> Path:
    """A minimal single-frame 16-bit grayscale DICOM file written with pydicom."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientName = "CR", "Test^Phantom"
    ds.Rows, ds.Columns = raw.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = raw.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def files(model, tmp_path_factory):
    """One file of every kind the runner must read or refuse."""
    pytest.importorskip("pydicom")
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(d / "rgb.png")
    Image.fromarray(np.dstack([rgb, rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)])).save(d / "rgba.png")
    gray = rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
    Image.fromarray(gray).save(d / "gray.png")
    gray16 = rng.integers(0, 65536, (SIZE, SIZE), dtype=np.uint16)
    Image.fromarray(gray16).save(d / "gray16.png")
    Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(d / "photo.jpg", quality=90)
    Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(d / "big.png")
    Image.fromarray(rgb[:4, :4]).save(d / "tiny.png")
    (d / "notes.txt").write_text("not an image\n")
    (d / "truncated.png").write_bytes((d / "big.png").read_bytes()[:200])
    (d / "folder").mkdir()
    (d / "fake.dcm").write_text("not DICOM either\n")
    write_dicom(d / "scan.dcm", rng.integers(0, 4096, (20, 18)), photometric="MONOCHROME1", slope=2.0,
                intercept=-100.0, window=(1500.0, 2000.0))
    return d


BLOCKED_CHILD = textwrap.dedent('''
    import importlib.abc, json, sys

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision", "timm", "open_clip", "robust_student"):
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Refuse())
    model_path, d = sys.argv[2], sys.argv[3]
    import numpy as np
    from PIL import Image
    from robust_student_runtime import InputError, OnnxStudent

    m = OnnxStudent(model_path)
    out = {"provider": m.provider, "verified": m.verified, "labels": m.labels}
    probs = lambda images: m.predict(images).probabilities.tolist()
    rgb = np.asarray(Image.open(f"{d}/rgb.png"))
    gray = np.asarray(Image.open(f"{d}/gray.png"))
    good = {
        "png": f"{d}/rgb.png", "pil": Image.open(f"{d}/rgb.png"), "uint8_hwc": rgb, "uint8_chw": rgb.transpose(2, 0, 1),
        "float_chw": rgb.transpose(2, 0, 1).astype(np.float32) / 255, "float64_hwc": rgb / 255.0,
        "rgba_png": f"{d}/rgba.png", "gray_png": f"{d}/gray.png", "gray_hw": gray,
        "gray_as_rgb": np.repeat(gray[:, :, None], 3, axis=2), "gray_chw1": gray[None],
        "gray16_png": f"{d}/gray16.png",
        "gray16_float": np.asarray(Image.open(f"{d}/gray16.png")).astype(np.float32) / 65535,
        "jpeg": f"{d}/photo.jpg", "big_png": f"{d}/big.png",
        "big_float": np.asarray(Image.open(f"{d}/big.png")).astype(np.float32) / 255, "dicom": f"{d}/scan.dcm",
    }
    out["good"] = {k: probs(v) for k, v in good.items()}
    out["nchw"] = probs(np.stack([rgb.transpose(2, 0, 1)] * 3).astype(np.float32) / 255)
    out["list"] = [p.source for p in m.predict([f"{d}/rgb.png", rgb, Image.open(f"{d}/gray.png")])]
    bad = {
        "two_channels": np.zeros((2, 16, 16), np.float32), "five_channels": np.zeros((16, 16, 5), np.uint8),
        "nchw_two_channels": np.zeros((1, 2, 16, 16), np.float32), "nhwc": np.zeros((2, 16, 16, 3), np.float32),
        "nan": np.full((3, 16, 16), np.nan, np.float32), "range_255": rgb.astype(np.float32),
        "normalised": rgb.astype(np.float32) / 127.5 - 1, "int32": gray.astype(np.int32),
        "one_dim": np.zeros(10, np.uint8), "number": 3.5, "text_file": f"{d}/notes.txt",
        "truncated": f"{d}/truncated.png", "missing": f"{d}/missing.png", "folder": f"{d}/folder",
        "tiny": f"{d}/tiny.png", "fake_dicom": f"{d}/fake.dcm",
    }
    out["bad"] = {}
    for key, value in bad.items():
        try:
            m.predict(value)
            out["bad"][key] = None
        except InputError as err:
            out["bad"][key] = str(err)
    small = OnnxStudent(model_path, max_pixels=1000)
    try:
        small.predict(f"{d}/big.png")
    except InputError as err:
        out["bad"]["huge"] = str(err)
    skipped = m.predict([f"{d}/rgb.png", f"{d}/notes.txt", bad["nan"], rgb], errors="skip")
    out["skip"] = [[p.index, p.source, p.ok, p.error] for p in skipped]
    out["skip_labels"] = skipped.labels
    out["modules"] = sorted(k for k in sys.modules if k.split(".")[0] in ("torch", "robust_student"))
    print(json.dumps(out))
''')


@pytest.fixture(scope="module")
def blocked(model, files):
    """The runner's results on every input kind, computed in a subprocess where importing torch fails."""
    result = subprocess.run([sys.executable, "-c", BLOCKED_CHILD, str(EXPORT_DIR), str(model[2]), str(files)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_runner_needs_no_torch_and_reports_its_provider(blocked):
    assert blocked["modules"] == [] and blocked["verified"] is True
    assert blocked["provider"] == "CPUExecutionProvider" and blocked["labels"] == ["apple", "boat", "cat"]


def test_every_input_kind_gives_the_same_prediction_as_torch(model, files, blocked):
    student = model[0]
    rgb = np.asarray(Image.open(files / "rgb.png")).transpose(2, 0, 1).astype(np.float32) / 255
    reference = _torch_probabilities(student, rgb)
    good = {k: np.array(v) for k, v in blocked["good"].items()}
    assert all(v.shape == (1, 3) for v in good.values())
    for key in ("png", "pil", "uint8_hwc", "uint8_chw", "float_chw", "float64_hwc", "rgba_png"):
        np.testing.assert_allclose(good[key][0], reference, atol=1e-5, err_msg=key)  # alpha is dropped
    for key in ("gray_hw", "gray_as_rgb", "gray_chw1"):
        np.testing.assert_allclose(good[key], good["gray_png"], atol=1e-6, err_msg=key)
    np.testing.assert_allclose(good["gray16_png"], good["gray16_float"], atol=1e-6)
    np.testing.assert_allclose(good["big_png"], good["big_float"], atol=1e-6)  # resized the same either way
    assert np.allclose(np.array(blocked["nchw"]), reference, atol=1e-5) and len(blocked["nchw"]) == 3
    assert np.allclose(good["jpeg"].sum(), 1.0) and np.allclose(good["dicom"].sum(), 1.0)
    assert blocked["list"][0].endswith("rgb.png") and blocked["list"][1].startswith("item 1 <array uint8")


@pytest.mark.parametrize("key, message", [
    ("two_channels", "cannot find the channels in shape (2, 16, 16)"),
    ("five_channels", "cannot find the channels in shape (16, 16, 5)"),
    ("nchw_two_channels", "a 4-d array must be NCHW with 1, 3 or 4 channels"),
    ("nhwc", "it looks like NHWC: transpose to NCHW"),
    ("nan", "768 pixel(s) are NaN or infinite"),
    ("range_255", "outside [0, 1]; they look like 0-255 values: divide by 255"),
    ("normalised", "normalisation happens inside the model: pass pixels in [0, 1]"),
    ("int32", "int32 pixels have no fixed range"),
    ("one_dim", "arrays must be HW, HWC, CHW or NCHW; got 1 dimensions"),
    ("number", "cannot use a float as an image"),
    ("text_file", "not an image Pillow can read"),
    ("truncated", "cannot read the image (truncated or corrupt?)"),
    ("missing", "missing.png: no such file"),
    ("folder", "not a file (a folder?)"),
    ("tiny", "image is 4x4 px; a side under 8 px carries too little"),
    ("huge", "image is 40x48 px (1,920 pixels, limit 1,000): tile or downsample it first"),
    ("fake_dicom", "not a readable DICOM file"),
])
def test_each_bad_input_is_refused_with_its_message(blocked, key, message):
    assert blocked["bad"][key] is not None and message in blocked["bad"][key], blocked["bad"][key]


def test_skip_keeps_the_batch_going_and_reports_each_failure(blocked):
    (i0, s0, ok0, e0), (i1, s1, ok1, e1), (i2, s2, ok2, e2), (i3, s3, ok3, e3) = blocked["skip"]
    assert [i0, i1, i2, i3] == [0, 1, 2, 3] and ok0 and ok3 and not ok1 and not ok2
    assert s1.endswith("notes.txt") and "not an image" in e1 and "NaN" in e2 and e0 is None
    assert len(blocked["skip_labels"]) == 2


def _window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 LINEAR windowing onto [0, 1], written out here independently of pydicom."""
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def test_dicom_round_trip_rescale_window_and_monochrome1(model, tmp_path):
    pytest.importorskip("pydicom")
    onnx_model = OnnxStudent(model[2])
    raw = np.random.default_rng(3).integers(0, 4096, (20, 18))
    path = write_dicom(tmp_path / "cr.dcm", raw, photometric="MONOCHROME1", slope=2.0, intercept=-100.0,
                       window=(1500.0, 2000.0))
    expected = 1.0 - _window(raw * 2.0 - 100.0, 1500.0, 2000.0)  # modality LUT, VOI window, MONOCHROME1 inverted
    got = onnx_model.predict(path).probabilities
    np.testing.assert_allclose(got, onnx_model.predict(expected.astype(np.float32)).probabilities, atol=1e-6)
    assert not np.allclose(got, onnx_model.predict((1.0 - expected).astype(np.float32)).probabilities, atol=1e-4)

    plain = write_dicom(tmp_path / "mr.dcm", raw, photometric="MONOCHROME2")  # no window: the image's own range
    scaled = (raw - raw.min()) / (raw.max() - raw.min())
    np.testing.assert_allclose(onnx_model.predict(plain).probabilities,
                               onnx_model.predict(scaled.astype(np.float32)).probabilities, atol=1e-6)


def test_dicom_without_pydicom_says_how_to_install(model, tmp_path, monkeypatch):
    pytest.importorskip("pydicom")
    path = write_dicom(tmp_path / "cr.dcm", np.zeros((16, 16)), photometric="MONOCHROME2")
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(InputError, match=r"pip install 'robust-student-runtime\[dicom\]'"):
        OnnxStudent(model[2]).predict(path)


def test_from_pretrained_reads_a_saved_folder(model, tmp_path):
    student, folder, _ = model
    loaded = OnnxStudent.from_pretrained(folder)
    assert loaded.class_names == student.classnames and loaded.image_size == (SIZE, SIZE)
    with pytest.raises(FileNotFoundError, match="model.int8.onnx"):
        OnnxStudent.from_pretrained(folder, precision="int8")
    (tmp_path / "model.onnx").write_bytes((folder / "model.onnx").read_bytes())
    (tmp_path / "config.json").write_text(json.dumps({"class_names": ["x", "y", "z"]}))
    with pytest.raises(ValueError, match="mixes two models"):
        OnnxStudent.from_pretrained(tmp_path)


def test_a_provider_that_cannot_start_is_reported(model):
    with pytest.warns(RuntimeWarning, match="requested CUDAExecutionProvider but onnxruntime runs"):
        run = OnnxStudent(model[2], providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert run.provider == "CPUExecutionProvider" and run.requested_providers[0] == "CUDAExecutionProvider"


def test_cli_predict_writes_one_json_line_per_image(model, files, capsys, monkeypatch):
    paths = [str(files / "rgb.png"), str(files / "notes.txt"), str(files / "scan.dcm")]
    assert main(["predict", str(model[2]), *paths, "--jsonl"]) == 3  # some images failed
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["source"] for line in lines] == paths
    assert lines[0]["label"] in ("apple", "boat", "cat") and 0 < lines[0]["probability"] <= 1
    assert lines[0]["error"] is None and lines[1]["label"] is None and "not an image" in lines[1]["error"]
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{paths[0]}\n\n{paths[2]}\n"))
    assert main(["predict", str(model[2]), "--jsonl", "--probabilities"]) == 0  # paths from stdin
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2 and len(lines[1]["probabilities"]) == 3 and lines[1]["source"] == paths[2]


def test_standalone_runner_cli_matches_the_robust_student_cli(model, files, capsys):
    from robust_student.export.runner.cli import main as runner_main

    argv = [str(model[2]), str(files / "rgb.png"), str(files / "gray.png"), "--jsonl"]
    assert runner_main(argv) == 0
    standalone = capsys.readouterr().out
    assert main(["predict", *argv]) == 0
    assert capsys.readouterr().out == standalone and len(standalone.splitlines()) == 2


CHILD_SDK_PREDICT = textwrap.dedent('''
    import sys
    from importlib.metadata import entry_points

    (script,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "robust-student"]
    code = script.load()(sys.argv[1:])
    print("TORCH" if "torch" in sys.modules else "NO-TORCH", code, file=sys.stderr)
''')


def test_robust_student_predict_does_not_import_torch(model, files):
    """The installed ``robust-student`` console script, run in a fresh interpreter: ``predict`` is the runtime's
    code and never imports torch (4-5 s and ~700 MB saved per call); other commands still reach the SDK."""
    argv = [str(model[2]), str(files / "rgb.png"), str(files / "scan.dcm"), "--jsonl"]
    result = subprocess.run([sys.executable, "-c", CHILD_SDK_PREDICT, "predict", *argv], capture_output=True,
                            text=True, timeout=120)
    assert result.stderr.strip().splitlines()[-1] == "NO-TORCH 0", result.stderr[-2000:]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["source"] for line in lines] == argv[1:3] and all(line["error"] is None for line in lines)
    other = subprocess.run([sys.executable, "-c", CHILD_SDK_PREDICT, "list", "--help"], capture_output=True,
                           text=True, timeout=120)
    assert "usage: robust-student list" in other.stdout, other.stderr[-2000:]


def test_the_sdk_runner_is_the_runtime():
    import robust_student_runtime
    from robust_student.export import runner

    assert runner.OnnxStudent is robust_student_runtime.OnnxStudent is OnnxStudent
    assert runner.cli is robust_student_runtime.cli and sys.modules["robust_student.export.runner.dicom"] is \
        robust_student_runtime.dicom
