"""OnnxStudent: run an exported student with onnxruntime, numpy and pillow only (no torch).

    model = OnnxStudent("model.onnx")                  # verifies the weights and graph digests first
    result = model.predict(["a.png", "b.dcm", array])  # files, PIL images, arrays (HW, HWC, CHW, NCHW)
    result.labels, result.probabilities, result.failed

The model's metadata (written by ``robust_student.export.export_onnx``) says its classes, input size, threat
model, teacher and licence, and how it was validated; :attr:`OnnxStudent.provider` is the execution provider
that really runs (onnxruntime-gpu falls back to the CPU silently when CUDA libraries are missing).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from .digest import DigestError, model_digests
from .images import ImageSpec, InputError, check_contrast, describe, load, one_line

FORMAT = "robust_student/onnx"
INPUT_NAME = "pixel_values"
DIGEST_KEYS = ("weights_sha256", "graph_sha256")
# Folders written by save_pretrained hold these files; from_pretrained picks one by precision.
FILENAMES = {"fp32": "model.onnx", "int8": "model.int8.onnx"}


class TamperedModelError(ValueError):
    """The model's weights or graph do not match the digests recorded at export."""


@dataclass
class Prediction:
    """One image's result: ``class_index``, ``label`` (the data's label name), ``class_name`` (the classifier's
    class name), ``probability`` of that class and all ``probabilities``; or ``error`` when it failed."""

    index: int
    source: str
    class_index: int | None = None
    label: str | None = None
    class_name: str | None = None
    probability: float | None = None
    probabilities: list[float] | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self, probabilities: bool = False) -> dict[str, Any]:
        out = asdict(self)
        if not probabilities:
            out.pop("probabilities")
        return out

    def to_json(self, probabilities: bool = False) -> str:
        return json.dumps(self.to_dict(probabilities))


@dataclass
class Predictions:
    """Every input's :class:`Prediction`, in input order (an NCHW array contributes one per image)."""

    items: list[Prediction] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Prediction]:
        return iter(self.items)

    def __getitem__(self, index: int) -> Prediction:
        return self.items[index]

    @property
    def succeeded(self) -> list[Prediction]:
        return [p for p in self.items if p.ok]

    @property
    def failed(self) -> list[Prediction]:
        """The inputs that could not be classified, each with its ``source`` and ``error``."""
        return [p for p in self.items if not p.ok]

    @property
    def class_indices(self) -> np.ndarray:
        return np.array([p.class_index for p in self.succeeded], dtype=np.int64)

    @property
    def labels(self) -> list[str]:
        return [p.label for p in self.succeeded]

    @property
    def class_names(self) -> list[str]:
        return [p.class_name for p in self.succeeded]

    @property
    def probabilities(self) -> np.ndarray:
        """``[n_succeeded, C]`` class probabilities (softmax of the logits)."""
        rows = [p.probabilities for p in self.succeeded]
        return np.array(rows, dtype=np.float32) if rows else np.zeros((0, 0), dtype=np.float32)


def _local_or_hub(source: str | os.PathLike, files: list[str]) -> Path:
    """A local folder as it is; ``org/name`` / ``hf-hub:org/name`` (not an existing path) fetched from the Hub."""
    text = str(source)
    if Path(text).exists() or not (text.startswith("hf-hub:") or text.count("/") == 1 and not text.startswith(
            (".", "/", "~"))):
        return Path(text)
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:
        raise FileNotFoundError(f"{text} is not a local folder; fetching it from the Hugging Face Hub needs "
                                "huggingface_hub: pip install 'robust-student-runtime[hub]'") from None

    repo_id = text.removeprefix("hf-hub:")
    endpoint = os.environ.get("HF_ENDPOINT") or None  # read now: huggingface_hub reads it once, at import
    try:
        return Path(snapshot_download(repo_id, allow_patterns=files,
                                      endpoint=endpoint.rstrip("/") if endpoint else None))
    except LocalEntryNotFoundError:
        raise FileNotFoundError(f"{repo_id} is not a local folder, and it is not in the Hugging Face cache while "
                                "the Hub cannot be reached (offline?)") from None
    except HfHubHTTPError as err:
        raise FileNotFoundError(f"cannot fetch {repo_id} from the Hub ({str(err).splitlines()[0]})") from None


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def _metadata_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, TypeError):
        return raw


class OnnxStudent:
    """An exported robust_student model served by onnxruntime.

    Args:
        path: the ``.onnx`` file (written by ``export_onnx``).
        providers: onnxruntime execution providers in order of preference (default: CPU only); a requested
            provider that onnxruntime could not start is reported by a warning and by :attr:`provider`.
        verify: check the weights and graph digests in the metadata against the file (default); a file changed
            after export is refused. ``verify=False`` loads any ONNX classifier with a ``[N, C, H, W]`` input.
        threads: onnxruntime intra-op threads (default: onnxruntime's choice).
        min_side, max_pixels: input size limits (see :class:`~.images.ImageSpec`).
        modalities: the DICOM modalities the model takes (default: ``modalities`` in its metadata when there is
            one; otherwise any image modality); other DICOM objects are refused.
        min_contrast: a model input whose values all lie within this span is refused as blank (0: off).
    """

    def __init__(self, path: str | os.PathLike, providers: Sequence[str] | None = None, *, verify: bool = True,
                 threads: int | None = None, min_side: int = 8, max_pixels: int = 40_000_000,
                 modalities: Sequence[str] | None = None, min_contrast: float = 2 / 255) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ImportError("OnnxStudent needs onnxruntime: pip install onnxruntime (or onnxruntime-gpu)") from None
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such ONNX file")
        data = self.path.read_bytes()  # hashed and loaded from the same bytes: nothing can swap the file between
        options = ort.SessionOptions()
        if threads is not None:
            if isinstance(threads, bool) or int(threads) != threads or threads < 1:
                raise ValueError(f"threads must be a whole number >= 1 (or None: onnxruntime's choice), "
                                 f"got {threads!r}")
            options.intra_op_num_threads = int(threads)
        options.log_severity_level = 3  # onnxruntime's own warnings are noise here; fallbacks are reported below
        self.requested_providers = list(providers or ["CPUExecutionProvider"])
        try:
            self.session = ort.InferenceSession(data, sess_options=options, providers=self.requested_providers)
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise ValueError(f"{self.path}: onnxruntime cannot load it: {err}") from None
        meta = self.session.get_modelmeta()
        self.metadata: dict[str, Any] = {k: _metadata_value(v) for k, v in meta.custom_metadata_map.items()}
        self.verified = False
        if verify:
            self._verify(data)
        self.providers: list[str] = list(self.session.get_providers())
        if self.providers[0] != self.requested_providers[0]:
            warnings.warn(f"{self.path.name}: requested {self.requested_providers[0]} but onnxruntime runs "
                          f"{self.providers[0]} (its libraries could not be loaded)", RuntimeWarning, stacklevel=2)
        self._input = self.session.get_inputs()[0]
        shape = list(self._input.shape)
        if len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
            raise ValueError(f"{self.path}: expected an image input [N, C, H, W] with fixed C, H, W; got {shape}")
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        if modalities is None:
            modalities = _modalities(self.metadata.get("modalities"))
        self.spec = ImageSpec(channels=shape[1], height=shape[2], width=shape[3], min_side=min_side,
                              max_pixels=max_pixels, modalities=tuple(m.upper() for m in modalities or ()) or None,
                              min_contrast=float(min_contrast))
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.num_classes = int(self.session.get_outputs()[0].shape[1]) if isinstance(
            self.session.get_outputs()[0].shape[1], int) else None
        self.class_names = [str(c) for c in self.metadata.get("class_names") or []]
        self.labels = [str(c) for c in self.metadata.get("labels") or []] or list(self.class_names)

    # -- loading ----------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, precision: str = "fp32", **kwargs: Any) -> "OnnxStudent":
        """Load ``model.onnx`` (or ``model.int8.onnx`` with ``precision="int8"``) from a saved student folder, or
        from the Hub (``"org/name"`` or ``"hf-hub:org/name"``: only that file and ``config.json`` are fetched,
        into the Hugging Face cache; with ``HF_HUB_OFFLINE=1`` from the cache alone), checking that its classes
        are those of the folder's ``config.json`` when there is one."""
        if precision not in FILENAMES:
            raise ValueError(f"precision must be one of {sorted(FILENAMES)}, got {precision!r}")
        directory = _local_or_hub(directory, [FILENAMES[precision], "config.json"])
        path = directory / FILENAMES[precision]
        if not path.is_file():
            found = sorted(p.name for p in directory.glob("*.onnx")) if directory.is_dir() else []
            raise FileNotFoundError(f"{directory} has no {FILENAMES[precision]} (ONNX files there: "
                                    f"{', '.join(found) or 'none'}); export one with robust-student export "
                                    f"{directory} --out {path}")
        model = cls(path, **kwargs)
        config_path = directory / "config.json"
        if config_path.is_file():
            try:
                config = json.loads(config_path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as err:
                raise ValueError(f"{config_path} is not valid JSON: {err}") from None
            names = [str(c) for c in config.get("class_names", [])]
            if names and model.class_names and names != model.class_names:
                raise ValueError(f"{path.name} classifies {model.class_names} but {config_path.name} says "
                                 f"{names}: the folder mixes two models")
        return model

    def _verify(self, data: bytes) -> None:
        if self.metadata.get("format") != FORMAT:
            raise TamperedModelError(f"{self.path}: not a robust_student export (no {FORMAT!r} metadata), so its "
                                     "weights cannot be verified; pass verify=False to load it anyway")
        try:
            found = model_digests(data)
        except DigestError as err:
            raise TamperedModelError(f"{self.path}: cannot compute its digest: {err}") from None
        for key in DIGEST_KEYS:
            expected = self.metadata.get(key)
            if found[key] != expected:
                what = "weights" if key.startswith("weights") else "graph"
                raise TamperedModelError(
                    f"{self.path}: the {what} digest does not match the one recorded at export (expected "
                    f"{str(expected)[:16]}..., found {found[key][:16]}...): the file was changed after export; "
                    "refusing to load it (verify=False loads it anyway)")
        self.verified = True

    # -- what it is -------------------------------------------------------------------------------------
    @property
    def provider(self) -> str:
        """The execution provider that actually runs the model (``session.get_providers()[0]``)."""
        return self.providers[0]

    @property
    def image_size(self) -> tuple[int, int]:
        return self.spec.height, self.spec.width

    @property
    def precision(self) -> str:
        quantization = self.metadata.get("quantization")
        return str(quantization.get("precision", "int8")) if isinstance(quantization, dict) else "fp32"

    @property
    def threat(self) -> dict[str, Any] | None:
        return self.metadata.get("threat")

    @property
    def validation(self) -> dict[str, Any] | None:
        """The validation report recorded at export (None when it was exported without validation)."""
        report = self.metadata.get("validation")
        return report if isinstance(report, dict) else None

    def __repr__(self) -> str:
        return (f"OnnxStudent({str(self.path)!r}, {len(self.class_names)} classes, input "
                f"{self.spec.channels}x{self.spec.height}x{self.spec.width}, {self.precision}, {self.provider}, "
                f"verified={self.verified})")

    # -- running ----------------------------------------------------------------------------------------
    def run(self, pixels: np.ndarray, output: str = "logits") -> np.ndarray:
        """The graph's ``output`` for float32 ``[N, C, H, W]`` pixels in [0, 1] at the model's size (no
        preprocessing: the raw artifact, as attacks and validation query it)."""
        if output not in self.output_names:
            raise ValueError(f"this model has outputs {self.output_names}; {output!r} was not exported "
                             "(export_onnx(..., outputs=('logits', 'embedding')))")
        x = np.asarray(pixels, dtype=np.float32)
        expected = (self.spec.channels, self.spec.height, self.spec.width)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise InputError(f"expected pixels [N, {', '.join(map(str, expected))}], got {tuple(x.shape)}; "
                             "predict() converts and resizes images")
        if self.fixed_batch is None:
            return self.session.run([output], {self._input.name: x})[0]
        parts = [self.session.run([output], {self._input.name: x[i:i + self.fixed_batch]})[0]
                 for i in range(0, x.shape[0], self.fixed_batch)]
        return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        return self.run(pixels, "logits")

    __call__ = logits  # a numpy logits function: robust_student's query attacks (Square) call it directly

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        """Image embeddings (exported with ``outputs=("logits", "embedding")``)."""
        return self.run(pixels, "embedding")

    def predict(self, images: Any, batch_size: int = 32, errors: str = "raise") -> Predictions:
        """Classify ``images``: a file path, PIL image, array or pydicom Dataset, or a sequence of them.

        Arrays may be HW, HWC, CHW or NCHW (each image of a batch is one result), uint8, uint16 or float in
        [0, 1]. With ``errors="raise"`` (default) the first bad input raises :class:`InputError` naming it;
        with ``errors="skip"`` every input gets exactly one result, in order, whatever the batch size: its
        prediction, or its one-line refusal in ``error`` (whatever raised it, a malformed header included).
        """
        if errors not in ("raise", "skip"):
            raise ValueError(f"errors must be 'raise' or 'skip', got {errors!r}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        results = Predictions()
        pending: list[tuple[Prediction, np.ndarray]] = []
        for source, item in _items(images):
            try:
                with warnings.catch_warnings():  # pydicom warns about each odd value; the refusal says it once
                    warnings.simplefilter("ignore")
                    pixels = load(item, self.spec)
                for image in pixels:
                    check_contrast(image, self.spec)
            except Exception as err:  # noqa: BLE001 - every per-item failure is that item's refusal
                reason = refusal(err)
                if errors == "raise":
                    raise InputError(f"{source}: {reason}") from None
                results.items.append(Prediction(index=len(results.items), source=source, error=reason))
                continue
            for k, image in enumerate(pixels):
                name = source if len(pixels) == 1 else f"{source}[{k}]"
                result = Prediction(index=len(results.items), source=name)
                results.items.append(result)
                pending.append((result, image))
            if len(pending) >= batch_size:
                self._classify(pending, errors)
                pending = []
        if pending:
            self._classify(pending, errors)
        return results

    def _classify(self, pending: list[tuple[Prediction, np.ndarray]], errors: str = "raise") -> None:
        try:
            logits = self.logits(np.stack([image for _, image in pending]))
        except Exception as err:  # noqa: BLE001 - onnxruntime's own types; every pending item gets the reason
            if errors == "raise":
                raise
            for result, _ in pending:
                result.error = f"the model failed on this batch: {refusal(err)}"
            return
        for (result, _), row in zip(pending, _softmax(logits.astype(np.float64))):
            k = int(row.argmax())
            result.class_index = k
            result.label = self.labels[k] if k < len(self.labels) else str(k)
            result.class_name = self.class_names[k] if k < len(self.class_names) else result.label
            result.probability = float(row[k])
            result.probabilities = [float(p) for p in row]


def refusal(err: BaseException) -> str:
    """An exception as a one-line refusal: an :class:`InputError`'s own message, anything else with its type."""
    text = one_line(str(err))
    if isinstance(err, InputError):
        return text
    return f"unexpected {type(err).__name__}: {text}" if text else f"unexpected {type(err).__name__}"


def _modalities(raw: Any) -> list[str]:
    if isinstance(raw, str):
        return [m.strip() for m in raw.replace(",", " ").split() if m.strip()]
    if isinstance(raw, (list, tuple)):
        return [str(m).strip() for m in raw if str(m).strip()]
    return []


def _items(images: Any) -> Iterable[tuple[str, Any]]:
    """``(source, item)`` pairs: a single input, or each element of a list / tuple / iterator of inputs."""
    many = isinstance(images, (list, tuple)) or (isinstance(images, Iterator) and not hasattr(images, "__array__"))
    sequence = images if many else [images]
    for position, item in enumerate(sequence):
        source = describe(item)
        if not isinstance(item, (str, os.PathLike)):
            source = f"item {position} {source}"
        yield source, item


__all__ = ["OnnxStudent", "Prediction", "Predictions", "TamperedModelError", "FORMAT", "INPUT_NAME", "FILENAMES",
           "refusal"]
