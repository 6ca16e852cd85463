"""Digests of an ONNX file's weights and graph, read straight from its protobuf bytes (no ``onnx`` package).

The exporter stores both digests in the model's metadata; :class:`~.student.OnnxStudent` recomputes them on
load, so a graph or a weight changed after export is refused. Both skip the metadata itself (``metadata_props``,
where the digests and the validation report live), so writing metadata never changes them.

* ``weights_sha256``: sha256 over every initializer of the main graph (``GraphProto.initializer`` and
  ``sparse_initializer``), each as its serialized ``TensorProto``, length-prefixed, in file order.
* ``graph_sha256``: sha256 over every top-level ``ModelProto`` field except ``metadata_props``: the graph (ops,
  weights, inputs, outputs), opsets, IR version and local functions.

Reading protobuf's wire format takes a few lines, so the runner needs only onnxruntime, numpy and pillow.
"""

from __future__ import annotations

import hashlib
from typing import Iterator

# Field numbers from onnx.proto (stable since ONNX 1.0).
MODEL_GRAPH = 7
MODEL_METADATA_PROPS = 14
GRAPH_INITIALIZER = 5
GRAPH_SPARSE_INITIALIZER = 15
TENSOR_EXTERNAL_DATA = 13
LENGTH_DELIMITED = 2


class DigestError(ValueError):
    """The bytes are not a readable ONNX protobuf (truncated, or not an ONNX file)."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data) or shift > 63:
            raise DigestError("truncated or malformed protobuf (bad varint)")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def fields(data: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int, int, int, int]]:
    """Yield ``(field_number, wire_type, field_start, value_start, value_end)`` for each field of a message.

    ``field_start`` is where the field's tag begins, so ``data[field_start:value_end]`` is the whole field.
    """
    end = len(data) if end is None else end
    pos = start
    while pos < end:
        field_start = pos
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:  # varint
            _, pos = _varint(data, pos)
            value_start = value_end = pos
        elif wire == 1:  # 64-bit
            value_start, value_end = pos, pos + 8
        elif wire == LENGTH_DELIMITED:
            length, value_start = _varint(data, pos)
            value_end = value_start + length
        elif wire == 5:  # 32-bit
            value_start, value_end = pos, pos + 4
        else:
            raise DigestError(f"unsupported protobuf wire type {wire} (not an ONNX file?)")
        if value_end > end or number == 0:
            raise DigestError("truncated or malformed protobuf (a field runs past the end)")
        pos = value_end
        yield number, wire, field_start, value_start, value_end


def model_digests(data: bytes) -> dict[str, str]:
    """``{"weights_sha256", "graph_sha256"}`` of a serialized ONNX model (see the module docstring).

    Raises :class:`DigestError` for bytes that are not an ONNX model, and for weights stored outside the file
    (external data), which a digest of the file cannot cover.
    """
    graph_hash, weights_hash = hashlib.sha256(), hashlib.sha256()
    graphs = 0
    for number, wire, field_start, value_start, value_end in fields(data):
        if number == MODEL_METADATA_PROPS:
            continue
        graph_hash.update(data[field_start:value_end])
        if number != MODEL_GRAPH or wire != LENGTH_DELIMITED:
            continue
        graphs += 1
        for g_number, g_wire, _, g_start, g_end in fields(data, value_start, value_end):
            if g_number in (GRAPH_INITIALIZER, GRAPH_SPARSE_INITIALIZER) and g_wire == LENGTH_DELIMITED:
                if any(n == TENSOR_EXTERNAL_DATA for n, *_ in fields(data, g_start, g_end)):
                    raise DigestError("the model keeps weights in external data files; robust_student exports "
                                      "single-file models whose digest covers every weight")
                weights_hash.update((g_end - g_start).to_bytes(8, "little"))
                weights_hash.update(data[g_start:g_end])
    if graphs != 1:
        raise DigestError(f"not an ONNX model: found {graphs} graphs (expected one)")
    return {"weights_sha256": weights_hash.hexdigest(), "graph_sha256": graph_hash.hexdigest()}


__all__ = ["model_digests", "fields", "DigestError"]
