"""export_onnx: a student as an ONNX file whose input is [0, 1] pixels, optionally validated and quantized.

    result = export_onnx(student, "model.onnx", validate=test_set)            # refused unless it passes
    result = export_onnx(student, "model.int8.onnx", quantize="int8", calibration=train_set, validate=test_set)

The graph input ``pixel_values`` is float32 ``[batch, C, H, W]`` in [0, 1] (normalisation is inside the graph, so
``eps`` keeps its pixel meaning); outputs are ``logits`` and optionally the L2-normalised ``embedding`` (for
open-vocabulary use with the teacher's text encoder). The exporter is torch's dynamo exporter
(``torch.onnx.export(..., dynamo=True)``): ``torch.export`` traces the batch dimension symbolically and fails
loudly if the model would bake a batch size in, where the legacy TorchScript tracer only warns (its
``TracerWarning``s on the ViT students). It is slower (3-15 s instead of 0.1-7 s for the students here), which an
export can afford. Everything is written to a temporary file beside ``path`` and moved into place only when
validation passes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from robust_student import load_student
from robust_student.attacks import eval_mode, make_threat
from robust_student.attacks.threat import Threat
from robust_student.formatting import format_eps
from robust_student.students import Student
from robust_student.students.io import read_student_config, student_config

from .metadata import build_metadata, read_metadata, write_metadata
from .quantize import DEFAULT_CALIBRATION_IMAGES, quantize_int8
from .runner.student import INPUT_NAME
from .validate import (DEFAULT_ATTACKS, DEFAULT_EXAMPLES, DEFAULT_SQUARE_QUERIES, ExportReport, ExportValidationError,
                       Thresholds, validate_onnx)

logger = logging.getLogger(__name__)

OUTPUTS = ("logits", "embedding")
EXPORTER = "torch.onnx dynamo"


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote: the file, its digests and metadata, and the validation report (None when
    it was exported without validation)."""

    path: Path
    precision: str
    weights_sha256: str
    graph_sha256: str
    opset: int
    outputs: tuple[str, ...]
    report: ExportReport | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def validated(self) -> bool:
        return self.report is not None and bool(self.report.passed)


class _Graph(nn.Module):
    """What the ONNX graph computes: the student's logits (and its embedding) from [0, 1] pixels."""

    def __init__(self, student: Student, outputs: tuple[str, ...]) -> None:
        super().__init__()
        self.student = student
        self.with_embedding = "embedding" in outputs

    def forward(self, pixel_values: torch.Tensor):
        if not self.with_embedding:
            return self.student(pixel_values)
        embedding = self.student.encode_image(pixel_values)
        logits = self.student.logit_scale * embedding @ self.student.classifier  # Student.forward, sharing the tower
        return logits, embedding


# The exporter's libraries log every optimisation pass at INFO; an export is one line in our own log instead.
_CHATTY_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx", "torch.export", "torch._dynamo", "torch.fx")


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in _CHATTY_LOGGERS]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _check_outputs(outputs: Sequence[str]) -> tuple[str, ...]:
    outputs = tuple(outputs)
    unknown = [o for o in outputs if o not in OUTPUTS]
    if unknown or not outputs or outputs[0] != "logits" or len(set(outputs)) != len(outputs):
        raise ValueError(f"outputs must be ('logits',) or ('logits', 'embedding'), got {outputs}")
    return outputs


def torch_export(student: Student, path: str | Path, *, opset: int | None = None, dynamic_batch: bool = True,
                 outputs: Sequence[str] = ("logits",)) -> int:
    """Write the FP32 graph of ``student`` to ``path`` (dynamo exporter, single file) and check it with
    ``onnx.checker``; returns the opset. The student's train/eval modes are restored afterwards."""
    import onnx

    outputs = _check_outputs(outputs)
    size = int(student.spec.get("image_size", 224))
    channels = int(student.mean.shape[1])
    example = torch.rand(2 if dynamic_batch else 1, channels, size, size, device=student.mean.device)
    kwargs: dict[str, Any] = {}
    if dynamic_batch:
        kwargs["dynamic_shapes"] = {"pixel_values": {0: torch.export.Dim("batch", min=1)}}
    if opset is not None:
        kwargs["opset_version"] = int(opset)
    graph = _Graph(student, outputs)
    with eval_mode(graph), torch.no_grad(), _quiet_exporter(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        try:
            torch.onnx.export(graph, (example,), str(path), input_names=[INPUT_NAME], output_names=list(outputs),
                              dynamo=True, external_data=False, verbose=False, **kwargs)
        except Exception as err:  # noqa: BLE001 - the exporter raises many types; name the student and the cause
            raise RuntimeError(f"torch.onnx.export (dynamo) failed for {student.spec.get('name')}: "
                               f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    return int(next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")))


def _resolve_student(student: Student | str | Path,
                     config: Mapping[str, Any] | None) -> tuple[Student, dict[str, Any]]:
    """A student and its saved-format config (read from the folder when given one)."""
    if isinstance(student, (str, os.PathLike)):
        return load_student(student), dict(config or read_student_config(student))
    if not isinstance(student, Student):
        raise TypeError(f"export_onnx needs a robust_student Student or a saved student folder, got "
                        f"{type(student).__name__}")
    return student, dict(config or student_config(student))


def _threat_entry(threat: Threat | dict[str, Any] | None, config: dict[str, Any]) -> tuple[Threat, dict[str, Any]]:
    if threat is None:
        recorded = config.get("threat") or {"norm": "linf", "eps": 8 / 255}
        threat = make_threat(recorded["norm"], float(recorded["eps"]))
    elif isinstance(threat, dict):
        threat = make_threat(threat["norm"], float(threat["eps"]))
    return threat, {"norm": threat.norm, "eps": float(threat.eps), "eps_text": format_eps(threat.eps, threat.norm)}


def _validation_data(validate: Any, student: Student) -> Any:
    if isinstance(validate, str):  # a dataset spec: its test split at the student's size
        from robust_student import build_dataset
        from robust_student.config import DataConfig

        return build_dataset(DataConfig(name=validate, image_size=int(student.spec.get("image_size", 224))), "test")
    return validate


def export_onnx(
    student: Student | str | Path,
    path: str | Path,
    *,
    opset: int | None = None,
    dynamic_batch: bool = True,
    outputs: Sequence[str] = ("logits",),
    validate: Any = None,
    quantize: str | None = None,
    calibration: Any = None,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    calibration_method: str = "minmax",
    quantize_options: Mapping[str, Any] | None = None,
    thresholds: Thresholds | None = None,
    allow_failed: bool = False,
    overwrite: bool = False,
    threat: Threat | dict[str, Any] | None = None,
    method: str | None = None,
    n_examples: int = DEFAULT_EXAMPLES,
    attacks: Sequence[str] = DEFAULT_ATTACKS,
    square_queries: int = DEFAULT_SQUARE_QUERIES,
    batch_size: int = 100,
    seed: int = 0,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    dataset_name: str | None = None,
    config: Mapping[str, Any] | None = None,
) -> ExportResult:
    """Export ``student`` (a :class:`Student` or a saved student folder) to the ONNX file ``path``.

    Args:
        opset: ONNX opset (default: the exporter's, 20 with torch 2.14).
        dynamic_batch: a symbolic batch dimension (default); ``False`` fixes the batch at 1.
        outputs: ``("logits",)`` or ``("logits", "embedding")``.
        validate: data to validate on (a dataset, ``(x, y)`` tensors, a DataLoader, or a dataset spec whose test
            split is used): the artifact is written only if :func:`validate_onnx` passes (``thresholds``); on
            failure nothing is written and :class:`ExportValidationError` says which check failed by how much.
            ``allow_failed=True`` writes it anyway, with the failure in its metadata and a warning.
        quantize: ``"int8"`` writes the INT8 QDQ model calibrated on ``calibration`` (training images:
            ``calibration_images`` of them, ``calibration_method`` minmax / entropy / percentile) instead of FP32;
            ``quantize_options`` go to :func:`~.quantize.quantize_int8` (``activations``, ``per_channel``).
        overwrite: replace an existing file at ``path`` (refused by default, before any work).
        threat, method: recorded in the metadata; ``threat`` is also the validation's threat (default: the
            student's training threat from its saved config, else L-inf 8/255).
        n_examples, attacks, square_queries, batch_size, seed: the validation's settings (see validate_onnx).
        providers, threads: the onnxruntime session that validation runs the artifact in (default: CPU, and
            onnxruntime's own thread count; ``threads=1`` on a shared machine).
        config: the student's saved-format ``config.json`` to record (default: read from the folder, or built from
            the student); its teacher provenance, method and training threat go into the metadata.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it (it stays untouched unless the new "
                              "export passes)")
    if path.suffix != ".onnx":
        raise ValueError(f"{path}: an ONNX file name ends in .onnx")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path.parent} is not a folder")
    outputs = _check_outputs(outputs)
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
    if quantize and calibration is None:
        raise ValueError("INT8 quantization is calibrated on training images: pass calibration=<training data> "
                         "(never the test set)")
    student, config = _resolve_student(student, config)
    threat_obj, threat_meta = _threat_entry(threat, config)
    data = _validation_data(validate, student) if validate is not None else None

    workdir = Path(tempfile.mkdtemp(prefix=f".{path.stem}.", dir=path.parent))
    try:
        fp32 = workdir / "model.onnx"
        used_opset = torch_export(student, fp32, opset=opset, dynamic_batch=dynamic_batch, outputs=outputs)
        metadata = build_metadata(student, config=config, outputs=outputs, threat=threat_meta, method=method,
                                  exporter=EXPORTER, opset=used_opset)
        artifact = fp32
        if quantize:
            artifact = workdir / "model.int8.onnx"
            metadata["quantization"] = quantize_int8(fp32, artifact, calibration, n_images=calibration_images,
                                                     method=calibration_method, seed=seed,
                                                     dataset_name=getattr(calibration, "name", None),
                                                     **dict(quantize_options or {}))
        digests = write_metadata(artifact, metadata)
        report = None
        if data is not None:
            report = validate_onnx(artifact, student, data, threat=threat_obj, n_examples=n_examples, attacks=attacks,
                                   square_queries=square_queries, thresholds=thresholds, batch_size=batch_size,
                                   seed=seed, providers=providers, threads=threads, dataset_name=dataset_name)
            report.path = str(path)
            metadata["validation"] = report.to_dict()
            metadata["validation_status"] = "passed" if report.passed else "failed"
            write_metadata(artifact, metadata)
            if not report.passed:
                if not allow_failed:
                    kept = f" (the existing {path.name} is unchanged)" if path.exists() else ""
                    raise ExportValidationError(report, path, kept)
                warnings.warn(f"{path}: written although validation FAILED (allow_failed=True; recorded in its "
                              f"metadata): {report.failure_summary()}", RuntimeWarning, stacklevel=2)
        os.replace(artifact, path)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    logger.info("exported %s to %s (%s, %s)", student.spec.get("name"), path, "int8" if quantize else "fp32",
                metadata["validation_status"])
    return ExportResult(path=path, precision="int8" if quantize else "fp32", weights_sha256=digests["weights_sha256"],
                        graph_sha256=digests["graph_sha256"], opset=used_opset, outputs=outputs, report=report,
                        metadata=read_metadata(path))


__all__ = ["export_onnx", "torch_export", "ExportResult", "OUTPUTS", "EXPORTER"]
