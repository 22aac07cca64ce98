"""A loaded model's metadata from its ModelProto's top-level fields (pure: bytes in, record out).

Read from the graph section of the TEE's layout buffer (the weights are not in it), bounded by the
limits of :class:`edb.tee.types.ModelMetadata`: a value over them is left out and its key listed
in ``truncated``. Metadata is what the model's producer wrote (``metadata_props``, e.g. an OCR
recognizer's character list), not weights; it leaves the TEE only for the runner that loaded it.
"""

from __future__ import annotations

from edb.onnx_layout import _fields
from edb.tee import types as T

# ModelProto field numbers (onnx.proto)
_IR_VERSION, _PRODUCER, _PRODUCER_VERSION, _DOMAIN, _MODEL_VERSION, _DOC, _GRAPH, _OPSET = 1, 2, 3, 4, 5, 6, 7, 8
_METADATA_PROPS = 14
_GRAPH_NAME = 2  # in GraphProto


def _text(buf: memoryview, start: int, end: int, limit: int) -> str | None:
    if end - start > limit * 4:
        return None
    text = bytes(buf[start:end]).decode("utf-8", "replace")
    return text if len(text) <= limit else None


def read(model_proto: bytes | bytearray | memoryview, name: str, version: str) -> T.ModelMetadata:
    buf = memoryview(model_proto).cast("B")
    scalars = {_IR_VERSION: 0, _MODEL_VERSION: 0}
    texts = {_PRODUCER: "", _PRODUCER_VERSION: "", _DOMAIN: "", _DOC: ""}
    graph_name = ""
    opsets: dict[str, int] = {}
    custom: dict[str, str] = {}
    truncated: list[str] = []
    total = 0
    for f in _fields(buf, 0, len(buf)):
        if f.wire == 0 and f.number in scalars:
            scalars[f.number] = f.value if f.value < 1 << 62 else 0
        elif f.wire == 2 and f.number in texts:
            texts[f.number] = _text(buf, f.value_start, f.value_end, T.MAX_METADATA_TEXT) or ""
        elif f.wire == 2 and f.number == _GRAPH:
            for g in _fields(buf, f.value_start, f.value_end):
                if g.number == _GRAPH_NAME and g.wire == 2:
                    graph_name = _text(buf, g.value_start, g.value_end, T.MAX_METADATA_TEXT) or ""
        elif f.wire == 2 and f.number == _OPSET and len(opsets) < T.MAX_METADATA_ENTRIES:
            domain, op_version = "", 0
            for o in _fields(buf, f.value_start, f.value_end):
                if o.number == 1 and o.wire == 2:
                    text = _text(buf, o.value_start, o.value_end, T.MAX_METADATA_KEY)
                    domain = "?" if text is None else text
                elif o.number == 2 and o.wire == 0:
                    op_version = o.value if o.value < 1 << 62 else 0
            opsets[domain] = op_version
        elif f.wire == 2 and f.number == _METADATA_PROPS:
            key, value = None, ""
            span = (0, 0)
            for e in _fields(buf, f.value_start, f.value_end):
                if e.number == 1 and e.wire == 2:
                    key = _text(buf, e.value_start, e.value_end, T.MAX_METADATA_KEY)
                elif e.number == 2 and e.wire == 2:
                    span = (e.value_start, e.value_end)
            if key is None:
                continue
            text = _text(buf, span[0], span[1], T.MAX_METADATA_VALUE)
            if text is None or len(custom) >= T.MAX_METADATA_ENTRIES or total + len(text) > T.MAX_METADATA_TOTAL:
                if len(truncated) < T.MAX_METADATA_ENTRIES:
                    truncated.append(key)
                continue
            value = text
            custom[key] = value
            total += len(value)
    return T.ModelMetadata(name, version, scalars[_IR_VERSION], texts[_PRODUCER], texts[_PRODUCER_VERSION],
                           texts[_DOMAIN], scalars[_MODEL_VERSION], texts[_DOC], graph_name, opsets, custom,
                           tuple(truncated))
