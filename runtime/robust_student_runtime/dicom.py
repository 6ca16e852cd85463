"""What a DICOM object is, decided from its header before its pixels are read, and then its pixels.

1. **What it is.** The SOP Class UID (0008,0016) must be on :data:`IMAGE_STORAGE`, an allow-list of single-image
   and photo storage classes (CR, DX, MG, IO, CT, MR, US, XA/RF, NM, PET, secondary capture, visible light).
   Everything else is refused with its SOP class named: RT Dose / Plan / Structure Set, Segmentation, Structured
   Reports, Presentation States, Key Object Selection, encapsulated PDF, waveforms, DICOMDIR, ... The modality
   (0008,0060) must be one of the model's (``modalities`` in its metadata) when the model names some.
2. **Whether it is readable.** Rows, Columns, Samples per Pixel, Bits Allocated/Stored, Photometric
   Interpretation and Number of Frames are checked one by one; a missing or malformed value is refused with its
   tag named (``(0028,0008) NumberOfFrames = 'abc' is not a whole number``), never raised past the batch.
3. **Its pixels.** Rescale slope/intercept (modality LUT), then the file's VOI LUT or window centre/width;
   without either, the image's own min-max; MONOCHROME1 is inverted so that bright means dense in every image.
   An image entirely outside its own window, or constant, is refused (it would become a blank model input).
   A compressed transfer syntax without a decoder names what to install; with the decoders present it says
   the data is not decodable.

pydicom >= 3 is required (``pip install 'robust-student-runtime[dicom]'``); the decoders for compressed transfer
syntaxes come with the same extra (pylibjpeg, pylibjpeg-openjpeg, pylibjpeg-rle; JPEG baseline through
Pillow). JPEG-LS and lossless JPEG need a GPL decoder (pylibjpeg-libjpeg) or python-gdcm, installed separately.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .images import ImageSpec, InputError, check_size, one_line

DICOM_EXTRA = "pip install 'robust-student-runtime[dicom]'"
PYDICOM_MIN = (3, 0)

# The SOP classes whose pixel data is an image the model may see (PS3.4 B.5). Multi-frame objects of these
# classes are refused later, by their frame count.
IMAGE_STORAGE: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.1.2": "Digital Mammography X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.2.1": "Digital Mammography X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.1.3": "Digital Intra-Oral X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.3.1": "Digital Intra-Oral X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.6.1": "Ultrasound Image Storage",
    "1.2.840.10008.5.1.4.1.1.3.1": "Ultrasound Multi-frame Image Storage",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.12.1": "X-Ray Angiographic Image Storage",
    "1.2.840.10008.5.1.4.1.1.12.2": "X-Ray Radiofluoroscopic Image Storage",
    "1.2.840.10008.5.1.4.1.1.20": "Nuclear Medicine Image Storage",
    "1.2.840.10008.5.1.4.1.1.128": "Positron Emission Tomography Image Storage",
    "1.2.840.10008.5.1.4.1.1.77.1.1": "VL Endoscopic Image Storage",
    "1.2.840.10008.5.1.4.1.1.77.1.2": "VL Microscopic Image Storage",
    "1.2.840.10008.5.1.4.1.1.77.1.3": "VL Slide-Coordinates Microscopic Image Storage",
    "1.2.840.10008.5.1.4.1.1.77.1.4": "VL Photographic Image Storage",
    "1.2.840.10008.5.1.4.1.1.77.1.5.1": "Ophthalmic Photography 8 Bit Image Storage",
    "1.2.840.10008.5.1.4.1.1.77.1.5.2": "Ophthalmic Photography 16 Bit Image Storage",
}
# Modalities whose objects the PACS node must never classify (its own output included): a loop guard.
NEVER_MODALITIES = ("SR", "PR", "SEG", "KO", "RTDOSE", "RTPLAN", "RTSTRUCT", "RTIMAGE", "DOC", "REG")
# Transfer syntaxes the [dicom] extra's decoders read (pydicom natively, Pillow, pylibjpeg-openjpeg / -rle).
EXTRA_DECODES = {
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51",  # JPEG baseline / extended (Pillow)
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",  # JPEG 2000 (pylibjpeg-openjpeg, Pillow)
    "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203",  # HTJ2K
    "1.2.840.10008.1.2.5",  # RLE lossless (pydicom, pylibjpeg-rle)
}


def tag_name(keyword: str) -> str:
    """``(0028,0008) NumberOfFrames`` for ``"NumberOfFrames"``."""
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {keyword}" if tag is not None else keyword


def _short(value: Any) -> str:
    text = one_line(repr(value))
    return text if len(text) <= 40 else text[:37] + "..."


_MISSING = object()


def value(ds: Any, keyword: str, convert: Callable[[Any], Any] = lambda v: v, what: str = "valid",
          default: Any = _MISSING) -> Any:
    """``convert(ds.<keyword>)``; a missing (without ``default``), unparsable or unconvertible value is an
    :class:`InputError` naming the tag."""
    try:
        raw = ds.get(keyword)
    except Exception as err:  # noqa: BLE001 - pydicom parses values lazily and raises many types
        raise InputError(f"{tag_name(keyword)} cannot be parsed ({one_line(str(err)) or type(err).__name__})") from None
    if raw is None or (isinstance(raw, (str, bytes)) and not raw.strip()):
        if default is _MISSING:
            raise InputError(f"{tag_name(keyword)} is missing")
        return default
    try:
        return convert(raw)
    except Exception:  # noqa: BLE001
        raise InputError(f"{tag_name(keyword)} = {_short(raw)} is not {what}") from None


def _whole(raw: Any) -> int:
    if isinstance(raw, (list, tuple)) or hasattr(raw, "__iter__") and not isinstance(raw, (str, bytes)):
        raise ValueError("multi-valued")
    number = float(raw)
    if not np.isfinite(number) or number != int(number):
        raise ValueError("not whole")
    return int(number)


def _number(raw: Any) -> float:
    if hasattr(raw, "__iter__") and not isinstance(raw, (str, bytes)):
        values = list(raw)
        if not values:
            raise ValueError("empty")
        raw = values[0]
    number = float(raw)
    if not np.isfinite(number):
        raise ValueError("not finite")
    return number


def import_pydicom() -> Any:
    """pydicom, checked to be >= 3 (its pixel API); otherwise the one-line install hint."""
    try:
        import pydicom
    except ImportError:
        raise InputError(f"reading DICOM needs pydicom >= 3: {DICOM_EXTRA} (or pip install 'pydicom>=3')") from None
    version = tuple(int(p) for p in pydicom.__version__.split(".")[:2] if p.isdigit())
    if version < PYDICOM_MIN:
        raise InputError(f"reading DICOM needs pydicom >= 3, found {pydicom.__version__}: {DICOM_EXTRA} (or pip "
                         "install -U 'pydicom>=3')")
    return pydicom


def read_header(path: Path) -> Any:
    """The dataset of a DICOM file without its pixel data (nothing decoded yet)."""
    pydicom = import_pydicom()
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(str(path), stop_before_pixels=True)
    except InvalidDicomError:
        raise InputError("not a readable DICOM file: no 'DICM' marker at byte 128 and no File Meta header (a "
                         "DICOM Part 10 file is expected)") from None
    except Exception as err:  # noqa: BLE001 - truncated / malformed headers raise many types
        raise InputError(f"not a readable DICOM file: {type(err).__name__}: {one_line(str(err))}") from None


def sop_class(ds: Any) -> str:
    uid = value(ds, "SOPClassUID", str, "a UID", default="")
    if not uid:
        meta = getattr(ds, "file_meta", None)
        uid = str(meta.get("MediaStorageSOPClassUID", "") or "") if meta is not None else ""
    return uid.strip()


def sop_class_name(uid: str) -> str:
    if uid in IMAGE_STORAGE:
        return IMAGE_STORAGE[uid]
    try:
        from pydicom.uid import UID

        name = UID(uid).name
        return name if name and name != uid else "unknown SOP class"
    except Exception:  # noqa: BLE001
        return "unknown SOP class"


def check_object(ds: Any, modalities: Sequence[str] | None = None) -> None:
    """Refuse (:class:`InputError`) what the model must not see, from the header alone."""
    uid = sop_class(ds)
    if not uid:
        raise InputError(f"{tag_name('SOPClassUID')} is missing: cannot tell what this DICOM object is")
    if uid not in IMAGE_STORAGE:
        raise InputError(f"SOP class {sop_class_name(uid)} ({uid}) is not an image storage class this model reads "
                         f"(allowed: CR, DX, MG, IO, CT, MR, US, XA, RF, NM, PT, SC, VL)")
    modality = str(value(ds, "Modality", str, "a code string", default="")).strip().upper()
    if modality in NEVER_MODALITIES:
        raise InputError(f"{tag_name('Modality')} is {modality}: not an image to classify")
    if modalities:
        allowed = [m.upper() for m in modalities]
        if modality not in allowed:
            raise InputError(f"{tag_name('Modality')} is {modality or 'missing'}; this model was trained on "
                             f"{', '.join(allowed)} only")


def check_geometry(ds: Any, spec: ImageSpec) -> tuple[int, int, int, str]:
    """``(rows, columns, samples, photometric)`` after checking the Image Pixel module's values."""
    frames = value(ds, "NumberOfFrames", _whole, "a whole number", default=1)
    if frames < 1:
        raise InputError(f"{tag_name('NumberOfFrames')} = {frames}: no frame to classify")
    if frames > 1:
        raise InputError(f"multi-frame DICOM ({tag_name('NumberOfFrames')} = {frames}): extract the frame to "
                         "classify and pass it as an array")
    rows = value(ds, "Rows", _whole, "a whole number")
    columns = value(ds, "Columns", _whole, "a whole number")
    check_size(rows, columns, spec)
    samples = value(ds, "SamplesPerPixel", _whole, "a whole number", default=1)
    if samples not in (1, 3):
        raise InputError(f"{tag_name('SamplesPerPixel')} = {samples}: 1 (grayscale) or 3 (colour) expected")
    bits = value(ds, "BitsAllocated", _whole, "a whole number")
    if bits not in (1, 8, 16, 32):
        raise InputError(f"{tag_name('BitsAllocated')} = {bits}: 1, 8, 16 or 32 expected")
    stored = value(ds, "BitsStored", _whole, "a whole number", default=bits)
    if not 1 <= stored <= bits:
        raise InputError(f"{tag_name('BitsStored')} = {stored} with {tag_name('BitsAllocated')} = {bits}")
    photometric = str(value(ds, "PhotometricInterpretation", str, "a code string")).strip().upper()
    if samples == 1 and photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise InputError(f"{tag_name('PhotometricInterpretation')} = {photometric!r} is not read (MONOCHROME1/2, "
                         "RGB and YBR are)")
    if samples == 3 and not (photometric == "RGB" or photometric.startswith("YBR")):
        raise InputError(f"{tag_name('PhotometricInterpretation')} = {photometric!r} with 3 samples per pixel "
                         "(RGB or YBR expected)")
    return rows, columns, samples, photometric


def _transfer_syntax(ds: Any) -> tuple[str, str]:
    meta = getattr(ds, "file_meta", None)
    uid = str(meta.get("TransferSyntaxUID", "") or "") if meta is not None else ""
    try:
        from pydicom.uid import UID

        name = UID(uid).name if uid else "unknown"
    except Exception:  # noqa: BLE001
        name = uid
    return uid, name


def decode_hint(ds: Any, err: BaseException) -> str:
    """Why the pixel data could not be decoded, and what to install when a decoder is missing."""
    uid, name = _transfer_syntax(ds)
    where = f"transfer syntax {name} ({uid})" if uid and name != uid else f"transfer syntax {uid or 'unknown'}"
    decoder = None
    try:
        from pydicom.pixels import get_decoder

        decoder = get_decoder(uid)
    except Exception:  # noqa: BLE001 - NotImplementedError: no decoder for this syntax at all
        decoder = None
    if decoder is None:
        return f"{tag_name('PixelData')}: no pixel data decoder exists in pydicom for {where}"
    if decoder.is_native or decoder.is_available:
        return (f"{tag_name('PixelData')}: not decodable ({where}; decoders present: "
                f"{', '.join(decoder.available_plugins) or 'pydicom'}): {type(err).__name__}: {one_line(str(err))}")
    if uid in EXTRA_DECODES:
        return f"{tag_name('PixelData')}: {where} needs a decoder that is not installed: {DICOM_EXTRA}"
    missing = "; ".join(getattr(decoder, "missing_dependencies", []) or [])
    return (f"{tag_name('PixelData')}: {where} needs a decoder outside the [dicom] extra (pip install "
            f"pylibjpeg-libjpeg, GPL-3.0, or python-gdcm){f': {one_line(missing)}' if missing else ''}")


def decode(ds: Any) -> np.ndarray:
    """The pixel array (one frame), with the decoder hint when it cannot be decoded."""
    if "PixelData" not in ds:
        for other in ("FloatPixelData", "DoubleFloatPixelData"):
            if other in ds:
                raise InputError(f"{tag_name(other)}: float pixel data (a parametric map?) is not an image to classify")
        raise InputError(f"{tag_name('PixelData')} is missing (a report or structured document?)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(ds.pixel_array)
    except Exception as err:  # noqa: BLE001 - pydicom raises many types for missing decoders / bad data
        raise InputError(decode_hint(ds, err)) from None


def pixels(ds: Any, spec: ImageSpec, rows: int, columns: int, samples: int, photometric: str) -> np.ndarray:
    """The decoded image as float32 HWC in [0, 1] (the module docstring's pipeline)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    raw = decode(ds)
    expected = (rows, columns, 3) if samples == 3 else (rows, columns)
    if raw.shape != expected:
        raise InputError(f"{tag_name('PixelData')}: decoded shape {raw.shape}, expected {expected} from Rows, "
                         "Columns and SamplesPerPixel")
    if samples == 3:  # pydicom returns YBR as RGB
        bits = value(ds, "BitsStored", _whole, "a whole number", default=8)
        return np.asarray(raw, dtype=np.float32) / float(2 ** bits - 1)
    try:
        values = apply_modality_lut(raw, ds).astype(np.float64)  # rescale slope / intercept
    except Exception as err:  # noqa: BLE001
        raise InputError(f"{tag_name('RescaleSlope')} / {tag_name('RescaleIntercept')} (modality LUT) cannot be "
                         f"applied: {one_line(str(err))}") from None
    if not np.isfinite(values).all():
        raise InputError(f"{tag_name('RescaleSlope')} / {tag_name('RescaleIntercept')} give non-finite values")
    window = "the image's own range"
    try:
        if ds.get("VOILUTSequence"):
            window = tag_name("VOILUTSequence")
            depth = value(ds.VOILUTSequence[0], "LUTDescriptor", lambda d: int(d[2]), "a LUT descriptor")
            low, high = 0.0, float(2 ** depth - 1)
            values = apply_voi_lut(values.astype(np.int64), ds).astype(np.float64)
        elif "WindowCenter" in ds and "WindowWidth" in ds:
            center = value(ds, "WindowCenter", _number, "a number")
            width = value(ds, "WindowWidth", _number, "a number")
            if width < 1:
                raise InputError(f"{tag_name('WindowWidth')} = {width:g}: must be >= 1")
            window = f"its window ({tag_name('WindowCenter')} {center:g}, {tag_name('WindowWidth')} {width:g})"
            values = apply_voi_lut(values, ds, prefer_lut=False)
            # The window's output range: what the window maps values far below and far above it to.
            low, high = (float(v) for v in apply_voi_lut(np.array([-1e300, 1e300]), ds, prefer_lut=False))
        else:
            low, high = float(values.min()), float(values.max())  # no VOI in the file: the image's own range
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001
        raise InputError(f"{window} cannot be applied: {type(err).__name__}: {one_line(str(err))}") from None
    if high > low:
        if float(values.min()) >= high:
            raise InputError(f"the whole image lies above {window}: it would be a blank white input")
        if float(values.max()) <= low:
            raise InputError(f"the whole image lies below {window}: it would be a blank black input")
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    scaled = np.clip(scaled, 0.0, 1.0).astype(np.float32)
    if photometric == "MONOCHROME1":
        scaled = 1.0 - scaled  # MONOCHROME1: the minimum is white
    return scaled[:, :, None]


def dataset_to_hwc(ds: Any, spec: ImageSpec) -> np.ndarray:
    """A dataset (read from a file or received over the network) as float32 HWC in [0, 1]."""
    import_pydicom()
    check_object(ds, spec.modalities)
    return pixels(ds, spec, *check_geometry(ds, spec))


def read_dicom(path: Path, spec: ImageSpec) -> np.ndarray:
    """A single-frame DICOM image file as float32 HWC in [0, 1]: the header is checked before pixels are read."""
    header = read_header(path)
    check_object(header, spec.modalities)
    geometry = check_geometry(header, spec)
    pydicom = import_pydicom()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(str(path))
    except Exception as err:  # noqa: BLE001
        raise InputError(f"{tag_name('PixelData')} cannot be read (truncated file?): {type(err).__name__}: "
                         f"{one_line(str(err))}") from None
    return pixels(ds, spec, *geometry)


__all__ = ["IMAGE_STORAGE", "NEVER_MODALITIES", "DICOM_EXTRA", "read_dicom", "dataset_to_hwc", "check_object",
           "check_geometry", "decode_hint", "tag_name", "sop_class", "sop_class_name", "read_header", "value"]
