"""The ONNX metadata of an exported student: what a deployment needs to trust and run it, as JSON strings.

Keys (``onnx.ModelProto.metadata_props``, read back with ``session.get_modelmeta().custom_metadata_map``):
``format`` / ``format_version``; ``class_names`` and ``labels``; ``num_classes``; ``input`` (name, layout,
channels, height, width, range [0, 1], dtype) and ``image_size``; ``normalization`` (mean/std, applied inside the
graph); ``outputs``; ``threat`` (norm, eps, eps_text); ``teacher`` and ``teachers`` (provenance with licence);
``method``; ``architecture``; versions (``robust_student_version``, ``torch_version``, ``onnx_opset``,
``exporter``); ``weights_sha256`` and ``graph_sha256`` (see :mod:`.runner.digest`); ``quantization`` (INT8
only); ``validation_status`` (``passed`` / ``failed`` / ``not validated``) and ``validation`` (the
:class:`~.validate.ExportReport` as JSON).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from .runner.digest import model_digests
from .runner.student import FORMAT, INPUT_NAME

FORMAT_VERSION = 1


def build_metadata(student: Any, *, config: Mapping[str, Any], outputs: tuple[str, ...], threat: Mapping[str, Any],
                   method: str | None, exporter: str, opset: int) -> dict[str, Any]:
    """The metadata of ``student`` (its saved-format ``config``, see ``robust_student.students.io``)."""
    import torch

    from robust_student import __version__

    size = config["input"]
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "class_names": list(config["class_names"]), "labels": list(config["labels"]),
        "num_classes": int(config["num_classes"]),
        "input": {"name": INPUT_NAME, **dict(size)},
        "image_size": [int(size["height"]), int(size["width"])],
        "normalization": {**dict(config["normalization"]), "inside_graph": True},
        "outputs": list(outputs),
        "threat": dict(threat),
        "teacher": dict(config.get("teacher") or {}), "teachers": dict(config.get("teachers") or {}),
        "method": method or config.get("method") or "",
        "architecture": dict(config["architecture"]),
        "logit_scale": float(config["logit_scale"]),
        "robust_student_version": __version__, "torch_version": torch.__version__,
        "onnx_opset": int(opset), "exporter": exporter,
        "validation_status": "not validated",
    }


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of an ONNX file as Python values (JSON decoded)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    out = {}
    for prop in model.metadata_props:
        try:
            out[prop.key] = json.loads(prop.value)
        except json.JSONDecodeError:
            out[prop.key] = prop.value
    return out


def write_metadata(path: str | Path, metadata: Mapping[str, Any]) -> dict[str, str]:
    """Replace the metadata of the ONNX file at ``path`` with ``metadata`` plus its digests (computed from the
    file, which metadata never changes); returns the digests. Every value is stored as JSON."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path))
    del model.metadata_props[:]
    digests = model_digests(model.SerializeToString())
    entries = {**{k: v for k, v in metadata.items() if k not in digests}, **digests}
    for key, value in entries.items():
        prop = model.metadata_props.add()
        prop.key = key
        prop.value = json.dumps(value)
    data = model.SerializeToString()
    if model_digests(data) != digests:  # metadata must never change what the digests cover
        raise RuntimeError(f"{path}: writing metadata changed the model's digest (a bug; please report it)")
    path.write_bytes(data)
    return digests


__all__ = ["build_metadata", "read_metadata", "write_metadata", "FORMAT_VERSION"]
