"""Torch-free fixtures for the runtime's tests: a tiny ONNX classifier built with ``onnx.helper`` (metadata and
digests as ``robust-student export`` writes them) and DICOM objects of every kind built with pydicom."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np

from robust_student_runtime import digest as _digest
from robust_student_runtime.student import FORMAT, INPUT_NAME

SIZE = 16
CLASSES = ["normal", "effusion", "pneumothorax"]


def make_model(path: Path, *, classes: list[str] = CLASSES, size: int = SIZE, seed: int = 0,
               extra: dict[str, Any] | None = None) -> Path:
    """A [N, 3, size, size] -> [N, len(classes)] linear classifier whose outputs depend on every pixel."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weight = rng.normal(0, 0.05, (3 * size * size, len(classes))).astype(np.float32)
    bias = rng.normal(0, 0.1, (len(classes),)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", [INPUT_NAME], ["flat"], axis=1),
         helper.make_node("Gemm", ["flat", "W", "B"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(classes)])],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests")
    model.ir_version = 8
    metadata = {
        "format": FORMAT, "format_version": 1, "class_names": classes, "labels": classes,
        "num_classes": len(classes), "image_size": [size, size],
        "threat": {"norm": "linf", "eps": 2 / 255, "eps_text": "2/255"},
        "method": "rslad", "architecture": {"name": "tiny-linear"}, "robust_student_version": "0.1.0",
        "validation_status": "passed",
        "validation": {"status": "passed", "robust_accuracy": 0.61, "clean_accuracy": 0.83, "attack": "apgd-ce"},
        **(extra or {}),
    }
    digests = _digest.model_digests(model.SerializeToString())
    for key, value in {**metadata, **digests}.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, json.dumps(value)
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


SOP = {
    "CR": "1.2.840.10008.5.1.4.1.1.1", "DX": "1.2.840.10008.5.1.4.1.1.1.1", "MR": "1.2.840.10008.5.1.4.1.1.4",
    "SC": "1.2.840.10008.5.1.4.1.1.7", "RTDOSE": "1.2.840.10008.5.1.4.1.1.481.2",
    "SEG": "1.2.840.10008.5.1.4.1.1.66.4", "SR": "1.2.840.10008.5.1.4.1.1.88.33",
    "KO": "1.2.840.10008.5.1.4.1.1.88.59", "PDF": "1.2.840.10008.5.1.4.1.1.104.1",
    "DICOMDIR": "1.2.840.10008.1.3.10", "PR": "1.2.840.10008.5.1.4.1.1.11.1",
}


def image_dataset(raw: np.ndarray | None = None, *, modality: str = "CR", sop: str | None = None,
                  photometric: str = "MONOCHROME2", bits: int = 16, window: tuple[float, float] | None = None,
                  slope: float | None = None, intercept: float | None = None, voi_lut: bool = False,
                  study: str | None = None, series: str | None = None, patient: str = "PAT-001", seed: int = 0):
    """A single-frame grayscale image dataset (uncompressed, explicit VR little endian) with patient/study."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    if raw is None:
        high = 4095 if bits == 16 else 255
        raw = np.random.default_rng(seed).integers(0, high + 1, (20, 18))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop or SOP.get(modality, SOP["SC"])
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128  # written by save_as(enforce_file_format=False) too
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.Modality, ds.PatientName, ds.PatientID = modality, "Test^Phantom", patient
    ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20260101", "120000", "ACC1", "1"
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.Rows, ds.Columns = raw.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    if bits == 16:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = raw.astype(np.uint16).tobytes()
    else:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = raw.astype(np.uint8).tobytes()
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_lut:
        item = Dataset()
        item.LUTDescriptor = [256, 0, 8]
        item.add_new(0x00283006, "US", [min(255, i // 16) for i in range(256)])  # LUTData
        ds.VOILUTSequence = [item]
    return ds


def save(ds, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def non_image(kind: str, **kwargs):
    """An object the runner must refuse although it may carry Pixel Data (RT Dose, SEG) or none (SR, KOS...)."""
    ds = image_dataset(modality={"RTDOSE": "RTDOSE", "SEG": "SEG", "SR": "SR", "KO": "KO", "PDF": "DOC",
                                 "DICOMDIR": "OT", "PR": "PR"}[kind], sop=SOP[kind], **kwargs)
    if kind in ("SR", "KO", "PDF", "DICOMDIR", "PR"):
        del ds.PixelData
    return ds


def set_raw(ds, keyword: str, value, vr: str | None = None) -> None:
    """Put ``value`` into ``ds`` as the bytes a writer would store, unvalidated (a malformed header)."""
    from pydicom.dataelem import RawDataElement
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.tag import Tag

    tag = Tag(tag_for_keyword(keyword))
    vr = vr or dictionary_VR(tag).split(" or ")[0]
    packed = {"US": "<H", "SS": "<h", "UL": "<L", "SL": "<l", "FL": "<f", "FD": "<d"}
    if isinstance(value, bytes):
        data = value
    elif vr in packed and isinstance(value, (int, float)):
        import struct

        try:
            data = struct.pack(packed[vr], value)
        except struct.error:
            data = str(value).encode()
    elif isinstance(value, (list, tuple)):
        data = "\\".join(str(v) for v in value).encode("latin-1", "replace")
    else:
        data = str(value).encode("latin-1", "replace")
    if len(data) % 2:
        data += b"\0" if vr in ("UI", "OB", "UN") else b" "
    ds._dict[tag] = RawDataElement(tag, vr, len(data), data, 0, False, True)


def wait_for_port(port: int, process, timeout: float = 60.0) -> None:
    """Wait until a server ``process`` started by a test accepts connections on loopback ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read()[-2000:] if process.stderr else ""
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")
