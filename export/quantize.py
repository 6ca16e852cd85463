"""INT8 static quantization of an exported FP32 model with onnxruntime's quantization tools (QDQ format).

Activations are uint8 and weights int8 per channel ("U8S8", onnxruntime's fast path on x86: 2.58x the FP32
throughput of ResNet-18 here, where int8 activations ran no faster than FP32), the ranges calibrated on training
images: the quantized model is only as good as the images it was calibrated on, and calibrating on test images
would leak them. ``Conv``, ``MatMul`` and ``Gemm`` are quantized (the compute: the backbone, the projection head
and the cosine classifier's MatMul); normalisation and L2-normalisation stay in float. Quantization can change
robustness, which is why an INT8 export is validated against the FP32 torch student
(:func:`~.validate.validate_onnx`). ``keep_float`` leaves chosen Conv / Gemm / MatMul nodes in float too (the
pixel-reading stem, the projection head and classifier, or nodes by name): the knob to try when an INT8 export
is refused for lost robustness; ``benchmarks/int8_settings.py`` measures what each setting costs and keeps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from robust_student.evaluation import check_inputs, collect_examples

from .runner.student import INPUT_NAME

QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
ACTIVATION_TYPES = {"uint8": "QUInt8", "int8": "QInt8"}
# MinMax ranges are the extremes of the calibration sample, so they move with the sample: the quickstart's
# fine-tuned student, calibrated on 256 images, lost 5.5 PGD-20 points on 200 test images and was refused; on 1024
# images it lost none, same graph and speed; over 4 calibration draws 256 failed once, 1024 never
# (benchmarks/results/int8_settings_quickstart.md). MinMax keeps only per-batch minima and maxima: 4x the images
# cost 4x the calibration forward passes, and no memory.
DEFAULT_CALIBRATION_IMAGES = 1024
# Roles of nodes that can be kept in float (``keep_float``): "stem" is the first quantizable node, the one that
# reads the (normalised) pixels, so its input quantization step is what an L-inf perturbation meets first; "head" is the
# projection Linear and the cosine classifier (every student's ``head`` and ``classifier``), where the logits'
# margins are decided.
FLOAT_ROLES = ("stem", "head")
HEAD_WEIGHTS = ("student.head.weight", "student.classifier")
DEFAULT_KEEP_FLOAT: tuple[str, ...] = ()


def float_nodes(model: Any, keep_float: Sequence[str]) -> list[str]:
    """Names of the quantizable nodes of ``model`` (an ``onnx.ModelProto``) that ``keep_float`` selects: the roles
    ``"stem"`` / ``"head"`` (:data:`FLOAT_ROLES`) or node names, which must exist (a typo would silently quantize
    the node it meant to protect)."""
    quantizable = [n for n in model.graph.node if n.op_type in QUANTIZED_OPS]
    by_role = {"stem": [n.name for n in quantizable[:1]],
               "head": [n.name for n in quantizable if any(i in HEAD_WEIGHTS for i in n.input)]}
    names = {n.name for n in quantizable}
    selected: list[str] = []
    for item in keep_float:
        found = by_role.get(item) or ([item] if item in names else None)
        if not found:
            raise ValueError(f"keep_float: {item!r} is neither a role {FLOAT_ROLES} nor a quantizable node of the "
                             f"graph ({sorted(names)})")
        selected += [name for name in found if name not in selected]
    return selected


def quantize_int8(fp32_path: str | Path, int8_path: str | Path, calibration: Any, *,
                  n_images: int = DEFAULT_CALIBRATION_IMAGES, method: str = "minmax", per_channel: bool = True,
                  activations: str = "uint8", keep_float: Sequence[str] = DEFAULT_KEEP_FLOAT,
                  extra_options: Mapping[str, Any] | None = None,
                  batch_size: int = 32, seed: int = 0, dataset_name: str | None = None) -> dict[str, Any]:
    """Write the INT8 QDQ model of ``fp32_path`` to ``int8_path``, calibrated on ``n_images`` of ``calibration``
    (anything :func:`robust_student.evaluation.collect_examples` takes, or an image tensor; use training
    images). ``keep_float`` names nodes left in float (:func:`float_nodes`: roles ``"stem"`` / ``"head"`` or node
    names, onnxruntime's ``nodes_to_exclude``); ``extra_options`` go to onnxruntime's ``quantize_static`` as they
    are (e.g. ``{"CalibPercentile": 99.99}``). Returns the ``quantization`` metadata entry (settings and the
    calibration set)."""
    import onnx
    import onnxruntime
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if activations not in ACTIVATION_TYPES:
        raise ValueError(f"activations must be one of {sorted(ACTIVATION_TYPES)}, got {activations!r}")
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method must be one of {CALIBRATION_METHODS}, got {method!r}")
    if isinstance(calibration, torch.Tensor):  # images alone: calibration needs no labels
        calibration = (calibration, torch.zeros(len(calibration), dtype=torch.long))
    x, _, selection = collect_examples(calibration, n_images, seed)
    check_inputs(x, torch.zeros(0, dtype=torch.long), 1)  # the pixels only
    images = x.numpy().astype(np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{INPUT_NAME: images[i:i + batch_size]} for i in range(0, len(images), batch_size)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    prepared = int8_path.with_name(int8_path.stem + ".pre.onnx")
    # ONNX shape inference only: onnxruntime's symbolic shape inference fails on the dynamo exporter's ViT graphs.
    quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
    calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}[method]
    try:
        excluded = float_nodes(onnx.load(str(prepared)), keep_float)
        quantize_static(str(prepared), str(int8_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=getattr(QuantType, ACTIVATION_TYPES[activations]),
                        weight_type=QuantType.QInt8, calibrate_method=calibrate,
                        op_types_to_quantize=list(QUANTIZED_OPS), nodes_to_exclude=excluded,
                        extra_options=dict(extra_options or {}))
    finally:
        prepared.unlink(missing_ok=True)
    return {"precision": "int8", "format": "QDQ", "tool": f"onnxruntime {onnxruntime.__version__} quantize_static",
            "activations": f"{activations} (per tensor)", "weights": f"int8 ({'per channel' if per_channel else 'per tensor'})",
            "ops": list(QUANTIZED_OPS), "float_nodes": {"requested": list(keep_float), "nodes": excluded},
            "extra_options": dict(extra_options or {}), "calibration": {"method": method, "n_images": int(len(images)),
                                                        "selection": selection, "dataset": dataset_name or ""}}


__all__ = ["quantize_int8", "float_nodes", "QUANTIZED_OPS", "FLOAT_ROLES", "DEFAULT_KEEP_FLOAT", "CALIBRATION_METHODS",
           "ACTIVATION_TYPES", "DEFAULT_CALIBRATION_IMAGES"]
