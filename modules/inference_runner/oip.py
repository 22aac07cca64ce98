"""Open Inference Protocol (KServe v2 REST) requests and responses (pure: bytes in, arrays out).

Inference requests are JSON (``{"id", "inputs": [{name, shape, datatype, data}], "outputs",
"parameters"}``), optionally followed by raw tensors (the binary tensor data extension: the JSON
header's length in ``Inference-Header-Content-Length``, each binary input's byte count in its
``parameters.binary_data_size``, little-endian row-major data, BYTES elements as a 4-byte
little-endian length then the bytes). Every declared size is checked against the shape, the
datatype and the body before an array is made; the data must be exactly the body's remainder.
What is refused is an :class:`OipError` with an HTTP status and a ``RUNNER_OIP_*`` (or input) code.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edb.errors import EdbError
from inference_runner.signature import BAD_INPUT, INPUT_MISMATCH, TENSOR_TOO_LARGE, Limits, Signature

#: OIP datatype <-> numpy dtype (little-endian); BYTES is a string tensor
DATATYPES: dict[str, str] = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
    "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
    "FP16": "float16", "FP32": "float32", "FP64": "float64", "BYTES": "string",
}
OIP_TYPES = {v: k for k, v in DATATYPES.items()}
MAX_INPUTS = 64
MAX_RANK = 8
MAX_ID = 256

BAD_REQUEST = "RUNNER_OIP_BAD_REQUEST"
UNKNOWN_MODEL = "RUNNER_OIP_UNKNOWN_MODEL"
TOO_LARGE = "RUNNER_OIP_TOO_LARGE"
BUSY = "RUNNER_OIP_BUSY"
NOT_READY = "RUNNER_OIP_NOT_READY"


class OipError(EdbError):
    code = BAD_REQUEST

    def __init__(self, message: str, *, code: str | None = None, status: int = 400) -> None:
        super().__init__(message, code=code)
        self.status = status


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    tensors: dict[str | None, np.ndarray]
    outputs: tuple[RequestedOutput, ...] | None  # None: every output, binary if ``binary_default``
    binary_default: bool
    expected: int | None = None  # parameters.expected: the answer the caller expects (for accuracy metrics)


def split_body(body: bytes | memoryview, header_length: str | None) -> tuple[Any, memoryview]:
    """The JSON header and the binary remainder of an inference request body."""
    view = memoryview(body)
    if header_length is None:
        n = len(view)
    else:
        if not header_length.isdigit() or len(header_length) > 12:
            raise OipError("Inference-Header-Content-Length must be a byte count")
        n = int(header_length)
        if n > len(view):
            raise OipError(f"Inference-Header-Content-Length {n} is longer than the body ({len(view)} bytes)")
        if n == 0:
            raise OipError("a raw binary request (header length 0) is not supported; send a JSON header")
    try:
        header = json.loads(bytes(view[:n]))
    except (ValueError, UnicodeDecodeError):
        raise OipError("the request header is not JSON") from None
    return header, view[n:]


def _shape(value: object, name: str, limits: Limits) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > MAX_RANK or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40 for d in value):
        raise OipError(f"input {name[:60]!r}: shape must be a list of at most {MAX_RANK} non-negative integers")
    count = math.prod(value)
    if count > limits.max_elements:
        raise OipError(f"input {name[:60]!r} has {count} elements, above the runner's limit of "
                       f"{limits.max_elements} (limits.maxElements)", code=TENSOR_TOO_LARGE, status=413)
    return tuple(value)


def parse_infer(header: object, binary: memoryview, signature: Signature, limits: Limits) -> InferRequest:
    if not isinstance(header, dict):
        raise OipError("the request must be a JSON object")
    rid = header.get("id")
    if rid is not None and (not isinstance(rid, str) or len(rid) > MAX_ID):
        raise OipError(f"id must be a string of at most {MAX_ID} characters")
    params = header.get("parameters") or {}
    if not isinstance(params, dict):
        raise OipError("parameters must be an object")
    binary_default = params.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise OipError("parameters.binary_data_output must be true or false")
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs or len(inputs) > MAX_INPUTS:
        raise OipError(f"inputs must be a list of 1 to {MAX_INPUTS} tensors")
    tensors: dict[str | None, np.ndarray] = {}
    offset = 0
    for item in inputs:
        arr, used = _input(item, binary, offset, signature, limits)
        name = item["name"]
        if name in tensors:
            raise OipError(f"input {name[:60]!r} appears twice")
        tensors[name] = arr
        offset += used
    if offset != len(binary):
        raise OipError(f"the binary data is {len(binary)} bytes but the inputs declare {offset}")
    expected = params.get("expected")
    if expected is not None and (not isinstance(expected, int) or isinstance(expected, bool) or
                                 not 0 <= expected < 1_000_000):
        raise OipError("parameters.expected must be a non-negative integer")
    return InferRequest(rid, tensors, _outputs(header.get("outputs"), signature), binary_default, expected)


def _input(item: object, binary: memoryview, offset: int, signature: Signature,
           limits: Limits) -> tuple[np.ndarray, int]:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not 0 < len(item["name"]) <= 256:
        raise OipError("each input must be an object with a name")
    name: str = item["name"]
    label = f"input {name[:60]!r}"
    spec = signature.input(name)
    if spec is None:
        raise OipError(f"the model has no {label}", code=INPUT_MISMATCH)
    datatype = item.get("datatype")
    if datatype not in DATATYPES:
        raise OipError(f"{label}: unknown datatype {str(datatype)[:20]!r}")
    if DATATYPES[datatype] != spec.dtype:
        raise OipError(f"{label} is {OIP_TYPES.get(spec.dtype, spec.dtype)}, the request says {datatype}",
                       code=INPUT_MISMATCH)
    shape = _shape(item.get("shape"), name, limits)
    count = math.prod(shape)
    params = item.get("parameters") or {}
    if not isinstance(params, dict):
        raise OipError(f"{label}: parameters must be an object")
    size = params.get("binary_data_size")
    if size is None:
        if "data" not in item:
            raise OipError(f"{label} has neither data nor parameters.binary_data_size")
        return _from_json(item["data"], datatype, shape, count, label), 0
    if "data" in item:
        raise OipError(f"{label} has both data and parameters.binary_data_size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise OipError(f"{label}: binary_data_size must be a non-negative integer")
    if size > len(binary) - offset:
        raise OipError(f"{label} declares {size} bytes of binary data; only {len(binary) - offset} remain")
    if size > limits.max_input_bytes:
        raise OipError(f"{label} is {size} bytes, above the runner's limit of {limits.max_input_bytes} "
                       "(limits.maxInputBytes)", code=TENSOR_TOO_LARGE, status=413)
    chunk = binary[offset:offset + size]
    if datatype == "BYTES":
        return _bytes_elements(chunk, shape, count, label), size
    dtype = np.dtype(DATATYPES[datatype]).newbyteorder("<")
    if size != count * dtype.itemsize:
        raise OipError(f"{label}: binary_data_size {size} is not {count} x {dtype.itemsize} bytes for shape "
                       f"{list(shape)} {datatype}")
    arr = np.frombuffer(chunk, dtype=dtype).reshape(shape)  # a view of the body: no copy
    if datatype == "BOOL" and size and int(np.frombuffer(chunk, np.uint8).max()) > 1:
        raise OipError(f"{label}: BOOL bytes must be 0 or 1")
    return arr, size


def _from_json(data: object, datatype: str, shape: tuple[int, ...], count: int, label: str) -> np.ndarray:
    if not isinstance(data, list):
        raise OipError(f"{label}: data must be a list")
    flat = _flatten(data, label)
    if len(flat) != count:
        raise OipError(f"{label}: data has {len(flat)} elements, shape {list(shape)} needs {count}")
    if datatype == "BYTES":
        if not all(isinstance(v, str) for v in flat):
            raise OipError(f"{label}: BYTES data must be strings")
        return np.array(flat, dtype=object).reshape(shape)
    if datatype == "FP16":
        raise OipError(f"{label}: FP16 cannot travel in JSON; use the binary data extension")
    kind = np.dtype(DATATYPES[datatype]).kind
    if not all(_element_ok(v, kind) for v in flat):
        what = "booleans" if kind == "b" else "integers" if kind in "iu" else "numbers"
        raise OipError(f"{label}: data elements must be {what}", code=INPUT_MISMATCH)
    try:
        return np.array(flat, dtype=DATATYPES[datatype]).reshape(shape)
    except OverflowError:
        raise OipError(f"{label}: a value is out of range for {datatype}", code=INPUT_MISMATCH) from None


def _element_ok(value: object, kind: str) -> bool:
    if kind == "b":
        return isinstance(value, bool)
    if kind in "iu":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, int | float) and not isinstance(value, bool)


def _flatten(data: list[Any], label: str, depth: int = 0) -> list[Any]:
    if depth > MAX_RANK:
        raise OipError(f"{label}: data is nested deeper than {MAX_RANK}")
    if not any(isinstance(v, list) for v in data):
        return data
    out: list[Any] = []
    for v in data:
        if not isinstance(v, list):
            raise OipError(f"{label}: data mixes lists and values")
        out.extend(_flatten(v, label, depth + 1))
    return out


_LEN = struct.Struct("<I")


def _bytes_elements(chunk: memoryview, shape: tuple[int, ...], count: int, label: str) -> np.ndarray:
    values: list[str] = []
    pos = 0
    end = len(chunk)
    while pos < end:
        if pos + 4 > end:
            raise OipError(f"{label}: a BYTES element length runs past its data")
        (n,) = _LEN.unpack_from(chunk, pos)
        pos += 4
        if n > end - pos:
            raise OipError(f"{label}: a BYTES element of {n} bytes runs past its data")
        try:
            values.append(bytes(chunk[pos:pos + n]).decode("utf-8"))
        except UnicodeDecodeError:
            raise OipError(f"{label}: BYTES elements must be UTF-8 text for this model", code=INPUT_MISMATCH) from None
        pos += n
        if len(values) > count:
            break
    if len(values) != count:
        raise OipError(f"{label}: {len(values)} BYTES elements for shape {list(shape)} ({count})")
    return np.array(values, dtype=object).reshape(shape)


def _outputs(value: object, signature: Signature) -> tuple[RequestedOutput, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > 256:
        raise OipError("outputs must be a list")
    names = {o.name for o in signature.outputs}
    requested = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise OipError("each requested output must be an object with a name")
        if item["name"] not in names:
            raise OipError(f"the model has no output {item['name'][:60]!r}", code=INPUT_MISMATCH)
        params = item.get("parameters") or {}
        binary = params.get("binary_data", None) if isinstance(params, dict) else None
        if binary is not None and not isinstance(binary, bool):
            raise OipError("binary_data must be true or false")
        requested.append(RequestedOutput(item["name"], binary if binary is not None else False))
    return tuple(requested)


# -- responses -------------------------------------------------------------------------------------


def encode_response(model: str, version: str, request: InferRequest,
                    arrays: Mapping[str, np.ndarray]) -> tuple[bytes, list[memoryview | bytes]]:
    """The JSON header and the binary chunks (in output order) of an inference response."""
    if request.outputs is None:
        wanted = [(name, request.binary_default) for name in arrays]
    else:
        wanted = [(o.name, o.binary or request.binary_default) for o in request.outputs]
    outputs: list[dict[str, Any]] = []
    chunks: list[memoryview | bytes] = []
    for name, binary in wanted:
        arr = arrays.get(name)
        if arr is None:
            raise OipError(f"output {name[:60]!r} did not cross the TEE boundary", code=BAD_INPUT, status=500)
        is_text = arr.dtype.kind in "OUS"
        entry: dict[str, Any] = {"name": name, "shape": list(arr.shape),
                                 "datatype": "BYTES" if is_text else OIP_TYPES.get(str(arr.dtype), "")}
        if not entry["datatype"]:
            raise OipError(f"output {name[:60]!r} has dtype {arr.dtype}, which OIP cannot carry", status=500)
        if binary:
            data = _bytes_payload(arr) if is_text else \
                memoryview(np.ascontiguousarray(arr, arr.dtype.newbyteorder("<"))).cast("B")  # type: ignore[arg-type]
            entry["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            if arr.dtype == np.float16:
                raise OipError(f"output {name[:60]!r} is FP16, which cannot travel in JSON; ask for binary_data")
            if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
                raise OipError(f"output {name[:60]!r} holds NaN or infinity, which JSON cannot carry; ask for "
                               "binary_data", code="RUNNER_OUTPUT_NOT_FINITE", status=500)
            entry["data"] = [str(v) for v in arr.reshape(-1)] if is_text else arr.reshape(-1).tolist()
        outputs.append(entry)
    body: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": outputs}
    if request.id is not None:
        body["id"] = request.id
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode(), chunks


def _bytes_payload(arr: np.ndarray) -> bytes:
    parts = []
    for v in arr.reshape(-1):
        raw = v if isinstance(v, bytes) else str(v).encode("utf-8")
        parts.append(_LEN.pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)


def model_metadata(name: str, version: str, signature: Signature, metadata: Any | None) -> dict[str, Any]:
    def tensor(t: Any) -> dict[str, Any]:
        shape = [-1 if d is None else d for d in t.shape] if t.shape is not None else [-1]
        return {"name": t.name, "datatype": OIP_TYPES.get(t.dtype, t.dtype.upper()), "shape": shape}
    body: dict[str, Any] = {"name": name, "versions": [version], "platform": "onnxruntime_onnx",
                            "inputs": [tensor(i) for i in signature.inputs],
                            "outputs": [tensor(o) for o in signature.outputs]}
    if metadata is not None:
        body["parameters"] = {"producer": f"{metadata.producer_name} {metadata.producer_version}".strip(),
                              "opsets": {(k or "ai.onnx"): v for k, v in metadata.opsets.items()},
                              "custom_metadata_map": dict(metadata.custom)}
    return body


def error_body(code: str, message: str) -> dict[str, Any]:
    """OIP's ``{"error": message}`` (what tritonclient reads), with the stable code beside it."""
    return {"error": message, "code": code}
