"""Turning what a pipeline hands over (files, PIL images, arrays, DICOM) into the model's [0, 1] pixels.

Every input becomes float32 ``[C, H, W]`` in [0, 1] at the model's size: grayscale is replicated to three
channels (RGB is reduced to luminance for a one-channel model), an alpha channel is dropped, and images are
resized with Pillow's antialiased bilinear filter. Anything that would give a meaningless prediction raises
:class:`InputError` with one line saying what is wrong and what to do: wrong channels, NaN, floats outside
[0, 1], integer types whose range is ambiguous, unreadable or non-image files, absurd sizes.

DICOM (``.dcm`` files, or any file with the ``DICM`` marker) is read by :mod:`.dicom` (pydicom >= 3): what the
object is (SOP class, modality) is decided from its header before its pixels are read. A near-constant model
input (blank, or an image entirely outside its own window) is refused: it would still get a label.
Needs only numpy and pillow (pydicom for DICOM): no torch.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

DICOM_SUFFIXES = (".dcm", ".dicom")
COLOUR_CHANNELS = (1, 3, 4)  # grayscale, RGB, RGBA


class InputError(ValueError):
    """An input that cannot become a model image; the message names it, what is wrong and what to do."""


@dataclass(frozen=True)
class ImageSpec:
    """What the model takes (from its metadata) and the size limits an input must respect.

    ``min_side``: a smaller image carries too little to classify after upscaling; ``max_pixels``: larger inputs
    (whole-slide images, mistaken raw dumps) must be tiled or downsampled first rather than exhaust memory.
    """

    channels: int
    height: int
    width: int
    min_side: int = 8
    max_pixels: int = 40_000_000
    modalities: tuple[str, ...] | None = None  # DICOM Modality values the model takes (None: any image)
    min_contrast: float = 2 / 255  # a model input whose max - min is smaller is refused as blank


def one_line(text: str) -> str:
    """``text`` on one line (messages go into tab-separated and JSON-lines output)."""
    return " ".join(str(text).split())


def describe(item: Any) -> str:
    """A short name for an input, used in results and error messages."""
    if isinstance(item, (str, os.PathLike)):
        return str(item)
    if isinstance(item, Image.Image):
        return f"<PIL image {item.mode} {item.width}x{item.height}>"
    if _is_dataset(item):
        return f"<DICOM {getattr(item, 'SOPInstanceUID', 'without SOPInstanceUID')}>"
    shape = getattr(item, "shape", None)
    dtype = getattr(item, "dtype", None)
    if shape is not None:
        return f"<array {dtype} {tuple(shape)}>"
    return f"<{type(item).__name__}>"


# -- decoding -------------------------------------------------------------------------------------------------

def load(item: Any, spec: ImageSpec) -> list[np.ndarray]:
    """The model images ``[C, H, W]`` float32 in [0, 1] held by one input (an NCHW array holds several)."""
    if isinstance(item, (str, os.PathLike)):
        images = [read_file(Path(item), spec)]
    elif isinstance(item, Image.Image):
        check_size(item.height, item.width, spec)
        images = [pil_to_hwc(item)]
    elif _is_dataset(item):
        from .dicom import dataset_to_hwc

        images = [dataset_to_hwc(item, spec)]
    elif hasattr(item, "__array__") or isinstance(item, (list, tuple)):
        images = array_to_hwc(np.asarray(item))
    else:
        raise InputError(f"cannot use a {type(item).__name__} as an image: give a file path, a PIL image or an "
                         "array (HW, HWC, CHW or NCHW; uint8, uint16, or float in [0, 1])")
    return [fit(image, spec) for image in images]


def _is_dataset(item: Any) -> bool:
    """A pydicom Dataset (received over DICOMweb or DIMSE), recognised without importing pydicom."""
    return type(item).__module__.startswith("pydicom.") and hasattr(item, "file_meta")


def is_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def read_file(path: Path, spec: ImageSpec) -> np.ndarray:
    """An image file as float32 HWC in [0, 1] (DICOM through pydicom, everything else through Pillow)."""
    if not path.exists():
        raise InputError("no such file")
    if not path.is_file():
        raise InputError("not a file (a folder?); give image files, one per input")
    if is_dicom(path):
        from .dicom import read_dicom

        return read_dicom(path, spec)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                check_size(image.height, image.width, spec)  # from the header, before decoding the pixels
                image.load()
                return pil_to_hwc(image)
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError("not an image Pillow can read (PNG, JPEG, TIFF, BMP, ...) and not DICOM") from None
    except Image.DecompressionBombError as err:
        raise InputError(f"absurdly large image ({one_line(str(err))}); tile or downsample it first") from None
    except OSError as err:
        raise InputError(f"cannot read the image (truncated or corrupt?): {one_line(str(err))}") from None
    except Exception as err:  # noqa: BLE001 - Pillow's plugins raise SyntaxError, ValueError, struct.error, ...
        raise InputError(f"cannot decode the image (corrupt?): {type(err).__name__}: {one_line(str(err))}") from None


def check_contrast(chw: np.ndarray, spec: ImageSpec) -> None:
    """Refuse a near-constant model input: it would be classified although it shows nothing."""
    if chw.size and spec.min_contrast > 0:
        low, high = float(chw.min()), float(chw.max())
        if high - low < spec.min_contrast:
            raise InputError(f"near-constant image (every model input value within [{low:.3f}, {high:.3f}]): "
                             "blank, or entirely outside its window; nothing to classify")


def pil_to_hwc(image: Image.Image) -> np.ndarray:
    """A PIL image as float32 HWC in [0, 1]: 8-bit modes / 255, 16-bit / 65535, float mode checked."""
    mode = image.mode
    if mode.startswith("I;16"):
        return _with_channels(np.asarray(image).astype(np.float32) / 65535.0)
    if mode == "I":
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise InputError(f"32-bit integer image with values in [{values.min()}, {values.max()}]: the range is "
                             "ambiguous; save it as 8- or 16-bit, or pass a float array in [0, 1]")
        return _with_channels(values.astype(np.float32) / 65535.0)
    if mode == "F":
        return _with_channels(_check_float(np.asarray(image, dtype=np.float32)))
    if mode in ("1", "L"):
        return _with_channels(np.asarray(image.convert("L"), dtype=np.float32) / 255.0)
    if mode == "LA":
        return _with_channels(np.asarray(image.getchannel("L"), dtype=np.float32) / 255.0)
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode not in ("RGB", "RGBA"):
        image = image.convert("RGB")  # CMYK, YCbCr, LAB, HSV
    return np.asarray(image, dtype=np.float32) / 255.0


def _with_channels(gray: np.ndarray) -> np.ndarray:
    return gray[:, :, None]


# -- arrays ---------------------------------------------------------------------------------------------------

def array_to_hwc(array: np.ndarray) -> list[np.ndarray]:
    """An array as a list of float32 HWC images in [0, 1].

    Layouts: HW; HWC or CHW with 1, 3 or 4 channels (CHW when both readings fit, the package's layout); NCHW.
    Types: bool, uint8 (/ 255), uint16 (/ 65535), float16/32/64 already in [0, 1] (NaN and values outside
    [0, 1] are refused: they usually mean 0-255 values or normalised images).
    """
    values = _scaled(array)
    if values.ndim == 2:
        return [values[:, :, None]]
    if values.ndim == 3:
        return [_hwc(values)]
    if values.ndim == 4:
        n, c = values.shape[:2]
        if c not in COLOUR_CHANNELS:
            hint = " (it looks like NHWC: transpose to NCHW)" if values.shape[-1] in COLOUR_CHANNELS else ""
            raise InputError(f"a 4-d array must be NCHW with 1, 3 or 4 channels; got shape {tuple(array.shape)}"
                             f"{hint}")
        if n == 0:
            raise InputError("an empty batch (N = 0)")
        return [np.moveaxis(v, 0, -1) for v in values]
    raise InputError(f"arrays must be HW, HWC, CHW or NCHW; got {values.ndim} dimensions {tuple(array.shape)}")


def _hwc(values: np.ndarray) -> np.ndarray:
    first, last = values.shape[0], values.shape[-1]
    if first in COLOUR_CHANNELS:
        return np.moveaxis(values, 0, -1)
    if last in COLOUR_CHANNELS:
        return values
    raise InputError(f"cannot find the channels in shape {tuple(values.shape)}: expected 1 (grayscale), 3 (RGB) "
                     "or 4 (RGBA) channels, first (CHW) or last (HWC)")


def _scaled(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if np.issubdtype(array.dtype, np.floating):
        return _check_float(array.astype(np.float32))
    if np.issubdtype(array.dtype, np.integer):
        raise InputError(f"{array.dtype} pixels have no fixed range: convert to uint8 (0-255), uint16, or float "
                         "in [0, 1]")
    raise InputError(f"an array of {array.dtype} is not an image")


def _check_float(values: np.ndarray) -> np.ndarray:
    finite = np.isfinite(values)
    if not finite.all():
        raise InputError(f"{int((~finite).sum())} pixel(s) are NaN or infinite")
    if values.size:
        low, high = float(values.min()), float(values.max())
        if low < 0 or high > 1:
            hint = ("they look like 0-255 values: divide by 255 (or pass uint8)" if low >= 0 and high <= 255
                    else "normalisation happens inside the model: pass pixels in [0, 1]")
            raise InputError(f"float pixels range over [{low:g}, {high:g}], outside [0, 1]; {hint}")
    return values


# -- to the model's shape -------------------------------------------------------------------------------------

def fit(hwc: np.ndarray, spec: ImageSpec) -> np.ndarray:
    """Channels converted, size checked and resized: float32 ``[spec.channels, spec.height, spec.width]``."""
    channels = hwc.shape[2]
    if channels not in COLOUR_CHANNELS:
        raise InputError(f"{channels} channels: expected 1 (grayscale), 3 (RGB) or 4 (RGBA)")
    if channels == 4:
        hwc = hwc[:, :, :3]  # alpha dropped
    check_size(hwc.shape[0], hwc.shape[1], spec)
    if spec.channels == 3 and hwc.shape[2] == 1:
        hwc = np.repeat(hwc, 3, axis=2)
    elif spec.channels == 1 and hwc.shape[2] == 3:
        hwc = (hwc @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[:, :, None]  # ITU-R 601 luma, as PIL
    elif hwc.shape[2] != spec.channels:
        raise InputError(f"{hwc.shape[2]} channels for a model that takes {spec.channels}")
    if hwc.shape[:2] != (spec.height, spec.width):
        hwc = np.stack([_resize(hwc[:, :, c], spec) for c in range(hwc.shape[2])], axis=-1)
    return np.ascontiguousarray(np.moveaxis(hwc, -1, 0), dtype=np.float32)


def _resize(channel: np.ndarray, spec: ImageSpec) -> np.ndarray:
    image = Image.fromarray(np.ascontiguousarray(channel, dtype=np.float32), mode="F")
    resized = image.resize((spec.width, spec.height), Image.Resampling.BILINEAR)  # antialiased when shrinking
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def check_size(height: int, width: int, spec: ImageSpec) -> None:
    if height < spec.min_side or width < spec.min_side:
        raise InputError(f"image is {width}x{height} px; a side under {spec.min_side} px carries too little to "
                         f"classify (the model takes {spec.width}x{spec.height})")
    if height * width > spec.max_pixels:
        raise InputError(f"image is {width}x{height} px ({height * width:,} pixels, limit {spec.max_pixels:,}): "
                         "tile or downsample it first (whole-slide images need tiling)")


__all__ = ["InputError", "ImageSpec", "load", "describe", "read_file", "pil_to_hwc", "array_to_hwc", "fit",
           "is_dicom", "check_size", "check_contrast", "one_line"]
