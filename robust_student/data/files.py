"""Datasets read from image files: ``imagefolder:PATH`` (class folders, e.g. CRC100K) and ``csv:PATH`` (RSNA style).

``imagefolder:PATH`` expects ``PATH/<CLASS>/<images>`` (NCT-CRC-HE-100K's layout); label names are the sorted
class folder names. When ``PATH`` holds split folders (``train``/``training``, ``val``/``valid``/``validation``,
``test``/``testing``), each holds class folders and is used as that split.

``csv:PATH`` reads a CSV with an image column and a label column (auto-detected, or ``image_column=`` and
``label_column=``); images are found relative to the CSV's folder or ``images_dir=``, and ids written without
an extension (RSNA's ``patientId``) are tried with the common image extensions. RSNA has one row per box, so
repeated ids with the same label collapse to one image; conflicting labels raise. A ``split`` column, when
present, gives the splits.

Without explicit splits, the data are split 70/15/15, stratified: each class is split with
:func:`~robust_student.data.base.seeded_split` under a seed derived from the run seed and the class name, so a
class's split does not depend on which other classes are present. A missing ``val`` or ``test`` split is carved
the same way (15% each) out of ``train``. Items are stored in a seeded shuffled order, so the first ``n``
items of a split (``max_train_examples``, ``EvalConfig.n_examples``) are a random sample, not one class.
"""

from __future__ import annotations

import csv
import logging
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from . import register_dataset
from .base import LabeledImages, seeded_split
from .prompts import PromptSet

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation"),
    "test": ("test", "testing"),
}
DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)
IMAGE_COLUMNS = ("image", "image_path", "path", "filename", "file", "image_id", "patientId")
LABEL_COLUMNS = ("label", "target", "class")
SPLIT_COLUMN = "split"
SHOW_NAMES = 5  # how many file names an error or warning lists
SIZE_CHECK_FILES = 256  # image headers read at build time to catch mixed sizes early (they are in a random order)


class CorruptImageError(ValueError):
    """An image file that exists but cannot be decoded; ``path`` names it."""

    def __init__(self, path: str | os.PathLike, reason: object) -> None:
        self.path = Path(path)
        super().__init__(f"Cannot read image {self.path}: {reason}. Delete or replace the file, or skip unreadable "
                         "images (dataset.skip_corrupt=true; --skip-corrupt for robust-student eval / zeroshot)")


# -- reading one image ------------------------------------------------------------------------------------


def read_image(path: str | os.PathLike, image_size: int | None = None) -> Tensor:
    """Read an image file as float ``[C, H, W]`` in [0, 1], ``C`` = 1 (grayscale) or 3 (everything else).

    16-bit images (``I;16`` PNG/TIFF X-rays) are divided by 65535; 32-bit integer images (mode ``I``) by
    65535 when a value exceeds 255 and by 255 otherwise; float images (mode ``F``) are kept when already in
    [0, 1] and divided by 255 otherwise. With ``image_size`` the image is resized to a square
    ``image_size`` x ``image_size`` here, with PIL's antialiased bilinear filter (and JPEG draft decoding),
    so large files are shrunk before they become tensors. Raises :class:`CorruptImageError` naming the file
    when it cannot be decoded, and ``FileNotFoundError`` when it does not exist.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            size = (image_size, image_size) if image_size else None
            if size is not None:
                image.draft(image.mode, size)  # JPEG: decode at a reduced scale (no-op for other formats)
            image.load()
            array = _to_array(image, size)
    except FileNotFoundError:
        raise
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ... on bad files
        raise CorruptImageError(path, err) from err
    # convert in numpy: a tiny op that torch's intra-op thread pool only slows down on busy machines
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / np.float32(255.0)
    else:
        array = np.clip(array, 0.0, 1.0, out=array)
    chw = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(chw))


def _to_array(image: Image.Image, size: tuple[int, int] | None) -> np.ndarray:
    """A decoded PIL image -> ``uint8`` (H, W[, 3]) or ``float32`` (H, W) in [0, 1], resized to ``size``."""
    resample = Image.Resampling.BILINEAR
    if image.mode.startswith("I") or image.mode == "F":  # high bit depth grayscale: go through float32
        values = np.asarray(image).astype(np.float32)
        if image.mode.startswith("I;16"):
            scale = 65535.0
        elif image.mode == "I":
            scale = 65535.0 if values.size and values.max() > 255 else 255.0
        else:
            scale = 255.0 if values.size and values.max() > 1.0 else 1.0
        gray = Image.fromarray(values / np.float32(scale))  # float32 array -> mode "F"
        if size is not None and gray.size != size:
            gray = gray.resize(size, resample)
        return np.array(gray, dtype=np.float32)
    if image.mode in ("1", "L", "LA", "La"):
        image = image.convert("L")
    elif image.mode != "RGB":
        image = image.convert("RGB")  # RGBA, P, CMYK, YCbCr, ...
    if size is not None and image.size != size:
        image = image.resize(size, resample)
    return np.array(image, dtype=np.uint8)


# -- the dataset ------------------------------------------------------------------------------------------


class ImageFiles(LabeledImages):
    """Images read from files on demand, with their integer labels.

    With ``skip_corrupt=True`` every file is decoded once when the dataset is built; unreadable ones are
    dropped, listed in ``skipped_files`` (``num_skipped`` counts them) and reported in one warning. Without
    ``image_size`` every image must have the same size (they are batched as they are): the headers of the first
    :data:`SIZE_CHECK_FILES` files are checked when the dataset is built, and every image when it is read; a
    different size names the file and the option to set.
    """

    def __init__(self, files: Sequence[Path], targets: Sequence[int], labels: Sequence[str], *,
                 image_size: int | None = None, prompts: PromptSet | str | None = None, name: str = "",
                 skip_corrupt: bool = False) -> None:
        super().__init__(labels, image_size=image_size, prompts=prompts, name=name)
        if len(files) != len(targets):
            raise ValueError(f"{len(files)} files but {len(targets)} targets")
        self.files = [Path(f) for f in files]
        self._targets = [int(t) for t in targets]
        self.skipped_files: list[Path] = []
        self._first_size: tuple[tuple[int, int], Path] | None = None  # (width, height) and the file it came from
        if skip_corrupt:
            self._drop_unreadable()
        if image_size is None:
            self._check_header_sizes()

    @property
    def num_skipped(self) -> int:
        return len(self.skipped_files)

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, index: int) -> tuple[Tensor, int]:
        image = read_image(self.files[index], self.image_size)
        if self.image_size is None:
            self._check_size(self.files[index], (int(image.shape[-1]), int(image.shape[-2])))
        return image, self._targets[index]

    def _check_size(self, path: Path, size: tuple[int, int]) -> None:
        """Images batched as they are must share one size (width, height)."""
        if self._first_size is None:
            self._first_size = (size, path)
            return
        first, first_path = self._first_size
        if size != first:
            raise ValueError(f"{self.name or 'dataset'}: images differ in size: {path} is {size[0]}x{size[1]} but "
                             f"{first_path} is {first[0]}x{first[1]}; set dataset.image_size (e.g. "
                             f"--set dataset.image_size={max(first)}) to resize every image")

    def _check_header_sizes(self) -> None:
        for path in self.files[:SIZE_CHECK_FILES]:
            try:
                with Image.open(path) as image:
                    size = image.size
            except Exception:  # noqa: BLE001 - unreadable files are reported when they are read
                continue
            self._check_size(path, size)

    def targets(self) -> list[int]:
        return list(self._targets)

    def _drop_unreadable(self) -> None:
        def readable(path: Path) -> bool:
            try:
                read_image(path, self.image_size)
            except (CorruptImageError, OSError):
                return False
            return True

        workers = max(1, min(8, os.cpu_count() or 1))  # PIL decoders release the GIL
        with ThreadPoolExecutor(max_workers=workers) as pool:
            ok = list(pool.map(readable, self.files))
        if all(ok):
            return
        self.skipped_files = [f for f, good in zip(self.files, ok) if not good]
        self.files = [f for f, good in zip(self.files, ok) if good]
        self._targets = [t for t, good in zip(self._targets, ok) if good]
        logger.warning("%s: skipped %d unreadable image(s) of %d: %s", self.name or "dataset",
                       self.num_skipped, self.num_skipped + len(self.files), _some(self.skipped_files))


# -- splits -----------------------------------------------------------------------------------------------

Pool = tuple[list[Path], list[int]]  # files and their label indices


def stratified_split(targets: Sequence[int], labels: Sequence[str], seed: int,
                     fractions: tuple[float, float, float] = DEFAULT_FRACTIONS) -> dict[str, np.ndarray]:
    """Split indices of ``targets`` into train/val/test with :func:`seeded_split` applied per class.

    Each class uses a seed derived from ``seed`` and its label name, so its split is the same whichever other
    classes are present. Split sizes are rounded per class.
    """
    targets_array = np.asarray(targets, dtype=np.int64)
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for k in np.unique(targets_array):
        members = np.flatnonzero(targets_array == k)
        class_seed = int(np.random.SeedSequence([seed, zlib.crc32(labels[k].encode())]).generate_state(1)[0])
        for split, chosen in seeded_split(len(members), class_seed, fractions).items():
            parts[split].append(members[chosen])
    return {s: np.sort(np.concatenate(p)) if p else np.zeros(0, dtype=np.int64) for s, p in parts.items()}


def select_split(explicit: dict[str, Pool], split: str, labels: Sequence[str], seed: int, source: str) -> Pool:
    """The files of ``split``: an explicit split as given, or carved (stratified, seeded) from ``train``.

    ``explicit`` maps split names to pools and must hold ``train``; with only ``train`` the split is
    70/15/15, and a single missing ``val`` or ``test`` takes 15% of ``train``. Returned in a seeded order.
    """
    missing = [s for s in ("val", "test") if s not in explicit]
    if split in explicit and (split != "train" or not missing):
        files, targets = explicit[split]
        chosen = np.arange(len(files))
    else:
        files, targets = explicit["train"]
        val = DEFAULT_FRACTIONS[1] if "val" in missing else 0.0
        test = DEFAULT_FRACTIONS[2] if "test" in missing else 0.0
        if len(missing) == 1:
            logger.info("%s: no %s split given; using a seeded %d%% of train", source, missing[0],
                        round(100 * (val + test)))
        chosen = stratified_split(targets, labels, seed, (1.0 - val - test, val, test))[split]
    order = chosen[np.random.default_rng([seed, SPLITS.index(split)]).permutation(len(chosen))]
    return [files[i] for i in order], [targets[i] for i in order]


def _split_name(text: str) -> str | None:
    lowered = text.strip().lower()
    for split, aliases in SPLIT_ALIASES.items():
        if lowered in aliases:
            return split
    return None


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _existing(path: str, kind: str) -> Path:
    root = Path(path).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"{kind} {root} does not exist. Point the dataset spec at your data, e.g. "
                                "'imagefolder:/data/CRC100K' or 'csv:/data/rsna/labels.csv'.")
    return root


# -- imagefolder:PATH -------------------------------------------------------------------------------------


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_under(folder: Path) -> list[Path]:
    found = []
    for directory, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(directory) / name for name in sorted(filenames) if _is_image(Path(name)))
    return found


def _scan_class_folders(folder: Path) -> dict[str, list[Path]]:
    """``{class name: image files}`` for the class folders of ``folder``; empty folders raise."""
    classes = {d.name: _images_under(d) for d in _subdirs(folder)}
    if not classes:
        loose = any(_is_image(p) for p in folder.iterdir())
        hint = " It holds images directly: put them in one folder per class." if loose else ""
        raise ValueError(f"{folder} has no class folders; expected {folder}/<CLASS>/<image files>.{hint}")
    empty = [name for name, files in classes.items() if not files]
    if empty:
        raise ValueError(f"Class folder(s) {', '.join(str(folder / n) for n in empty)} hold no images "
                         f"(looked for {', '.join(IMAGE_EXTENSIONS)}, any case). Remove them or add images.")
    return classes


@register_dataset("imagefolder", takes_arg=True, usage="imagefolder:PATH")
def imagefolder(path: str, *, split: str, image_size: int | None = None, seed: int = 0,
                skip_corrupt: bool = False, prompts: PromptSet | str | None = None) -> ImageFiles:
    """``PATH/<CLASS>/<images>``, or ``PATH/{train,val,test}/<CLASS>/<images>``; see the module docstring."""
    _check_split(split)
    root = _existing(path, "Image folder")
    if not root.is_dir():
        raise ValueError(f"imagefolder:{path} must name a folder, not a file")
    split_dirs: dict[str, Path] = {}
    for d in _subdirs(root):
        name = _split_name(d.name)
        if name is not None:
            if name in split_dirs:
                raise ValueError(f"{root} has two {name} folders: {split_dirs[name].name} and {d.name}")
            split_dirs[name] = d
    if split_dirs and "train" not in split_dirs:
        raise ValueError(f"{root} has split folder(s) {sorted(d.name for d in split_dirs.values())} but no "
                         "train/training folder")
    if split_dirs:
        others = [d.name for d in _subdirs(root) if d not in split_dirs.values()]
        if others:
            logger.warning("%s: using split folders %s; ignoring other folders %s", root,
                           [d.name for d in split_dirs.values()], others)
        scanned = {s: _scan_class_folders(d) for s, d in split_dirs.items()}
    else:
        scanned = {"train": _scan_class_folders(root)}
    labels = sorted({name for classes in scanned.values() for name in classes})
    index = {name: i for i, name in enumerate(labels)}
    explicit = {s: ([f for name in classes for f in classes[name]],
                    [index[name] for name in classes for _ in classes[name]]) for s, classes in scanned.items()}
    name = f"imagefolder:{path}"
    files, targets = select_split(explicit, split, labels, seed, name)
    return ImageFiles(files, targets, labels, image_size=image_size, prompts=prompts, name=name,
                      skip_corrupt=skip_corrupt)


# -- csv:PATH ---------------------------------------------------------------------------------------------


def _find_column(header: Sequence[str], wanted: str | None, candidates: Sequence[str], role: str,
                 option: str, csv_path: Path) -> str:
    by_lower = {h.lower(): h for h in header}
    if wanted is not None:
        if wanted in header:
            return wanted
        if wanted.lower() in by_lower:
            return by_lower[wanted.lower()]
        raise ValueError(f"{csv_path} has no column {wanted!r}; its columns are {list(header)}")
    for candidate in candidates:
        if candidate.lower() in by_lower:
            return by_lower[candidate.lower()]
    raise ValueError(f"{csv_path}: cannot tell which column holds the {role} (looked for {list(candidates)}); "
                     f"its columns are {list(header)}. Pass {option}=<column>.")


def _label_names(values: set[str]) -> tuple[list[str], dict[str, str]]:
    """Sorted label names and a map from raw values to them; integral numbers ('1', '1.0') become '1'."""
    try:
        numbers = {v: float(v) for v in values}
    except ValueError:
        return sorted(values), {v: v for v in values}
    if all(x.is_integer() for x in numbers.values()):
        canonical = {v: str(int(x)) for v, x in numbers.items()}
        return sorted(set(canonical.values()), key=int), canonical
    return sorted(values, key=lambda v: numbers[v]), {v: v for v in values}


class _ImageLocator:
    """Find ``base/<id>`` as written or with one of the image extensions (the last one that worked first)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.order = [e for ext in IMAGE_EXTENSIONS for e in (ext, ext.upper())]

    def __call__(self, value: str) -> Path | None:
        candidate = self.base / value
        if candidate.is_file():
            return candidate
        for i, ext in enumerate(self.order):
            candidate = self.base / f"{value}{ext}"
            if candidate.is_file():
                self.order.insert(0, self.order.pop(i))
                return candidate
        return None


class _Row(NamedTuple):
    label: str
    split: str | None
    line: int


def _read_rows(csv_path: Path, image_column: str | None, label_column: str | None) -> dict[str, _Row]:
    """``{image id: (label, split, first line)}``; repeated ids must agree on label and split."""
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in reader.fieldnames or []]
        reader.fieldnames = header
        image_col = _find_column(header, image_column, IMAGE_COLUMNS, "image ids", "image_column", csv_path)
        label_col = _find_column(header, label_column, LABEL_COLUMNS, "labels", "label_column", csv_path)
        split_col = {h.lower(): h for h in header}.get(SPLIT_COLUMN)
        rows: dict[str, _Row] = {}
        for line, row in enumerate(reader, start=2):
            image, label = (row.get(image_col) or "").strip(), (row.get(label_col) or "").strip()
            if not image or not label:
                raise ValueError(f"{csv_path}, line {line}: empty {image_col if not image else label_col!r}")
            row_split = None
            if split_col is not None:
                row_split = _split_name(row.get(split_col) or "")
                if row_split is None:
                    valid = [alias for aliases in SPLIT_ALIASES.values() for alias in aliases]
                    raise ValueError(f"{csv_path}, line {line}: {split_col} {row.get(split_col)!r} is not one of "
                                     f"{valid}")
            seen = rows.setdefault(image, _Row(label, row_split, line))
            if seen.label != label:
                raise ValueError(f"{csv_path}: image {image!r} has conflicting labels {seen.label!r} (line "
                                 f"{seen.line}) and {label!r} (line {line})")
            if seen.split != row_split:
                raise ValueError(f"{csv_path}: image {image!r} is in split {seen.split!r} (line {seen.line}) and "
                                 f"{row_split!r} (line {line})")
    if not rows:
        raise ValueError(f"{csv_path} lists no images")
    return rows


@register_dataset("csv", takes_arg=True, usage="csv:PATH")
def csv_dataset(path: str, *, split: str, image_size: int | None = None, seed: int = 0,
                skip_corrupt: bool = False, prompts: PromptSet | str | None = None,
                image_column: str | None = None, label_column: str | None = None,
                images_dir: str | None = None) -> ImageFiles:
    """A CSV of image ids/paths and labels; see the module docstring. ``images_dir`` is relative to the CSV."""
    _check_split(split)
    csv_path = _existing(path, "CSV file")
    if not csv_path.is_file():
        raise ValueError(f"csv:{path} must name a CSV file, not a folder")
    base = csv_path.parent if images_dir is None else csv_path.parent / Path(images_dir).expanduser()
    if not base.is_dir():
        raise FileNotFoundError(f"Image folder {base} (images_dir={images_dir!r}) does not exist")
    rows = _read_rows(csv_path, image_column, label_column)

    labels, canonical = _label_names({row.label for row in rows.values()})
    index = {name: i for i, name in enumerate(labels)}
    locate = _ImageLocator(base)
    explicit: dict[str, Pool] = {}
    missing: list[str] = []
    for image, row in rows.items():
        found = locate(image)
        if found is None:
            missing.append(image)
            continue
        files, targets = explicit.setdefault(row.split or "train", ([], []))
        files.append(found)
        targets.append(index[canonical[row.label]])
    if missing:
        dicom = " They are DICOM files, which are not read: convert them to PNG first." if (
            (base / f"{missing[0]}.dcm").is_file()) else " Pass images_dir= if the images live in another folder."
        raise FileNotFoundError(f"{len(missing)} of {len(rows)} image(s) listed in {csv_path} were not found in "
                                f"{base} (as written or with {', '.join(IMAGE_EXTENSIONS)}): "
                                f"{_some(missing)}.{dicom}")
    if "train" not in explicit:
        raise ValueError(f"{csv_path}: the split column names no training rows")
    name = f"csv:{path}"
    files, targets = select_split(explicit, split, labels, seed, name)
    return ImageFiles(files, targets, labels, image_size=image_size, prompts=prompts, name=name,
                      skip_corrupt=skip_corrupt)


def _some(names: Sequence[object]) -> str:
    """The first few names, and how many more there are."""
    shown = ", ".join(str(n) for n in names[:SHOW_NAMES])
    return shown + (f" and {len(names) - SHOW_NAMES} more" if len(names) > SHOW_NAMES else "")


__all__ = ["CorruptImageError", "ImageFiles", "read_image", "stratified_split", "select_split"]
