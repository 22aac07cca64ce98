"""Open Inference Protocol requests the camera sends (binary tensor data extension) and the
answers it reads (pure; the HTTP call is in main)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

HEADER_LENGTH = "Inference-Header-Content-Length"


def infer_request(tensor: np.ndarray, *, input_name: str = "x", expected: int | None = None,
                  request_id: str | None = None) -> tuple[bytes, dict[str, str]]:
    """A float32 image batch as a binary-extension request; outputs asked for in binary too."""
    data = np.ascontiguousarray(tensor, dtype="<f4")
    header: dict[str, Any] = {"inputs": [{"name": input_name, "datatype": "FP32", "shape": list(data.shape),
                                          "parameters": {"binary_data_size": data.nbytes}}],
                              "parameters": {"binary_data_output": True}}
    if expected is not None:
        header["parameters"]["expected"] = expected
    if request_id is not None:
        header["id"] = request_id
    head = json.dumps(header, separators=(",", ":")).encode()
    return head + data.tobytes(), {HEADER_LENGTH: str(len(head)), "Content-Type": "application/octet-stream"}


def read_outputs(body: bytes, header_length: str | None) -> dict[str, np.ndarray]:
    """The outputs of an answer (binary or JSON), checked against the declared sizes."""
    n = int(header_length) if header_length is not None else len(body)
    header = json.loads(body[:n])
    types = {"FP32": "<f4", "FP64": "<f8", "INT64": "<i8", "INT32": "<i4", "UINT8": "u1", "BOOL": "?"}
    out: dict[str, np.ndarray] = {}
    offset = n
    for o in header["outputs"]:
        dtype = np.dtype(types[o["datatype"]])
        size = (o.get("parameters") or {}).get("binary_data_size")
        if size is None:
            out[o["name"]] = np.asarray(o["data"], dtype=dtype).reshape(o["shape"])
            continue
        if offset + size > len(body):
            raise ValueError("an answer's binary output runs past its body")
        out[o["name"]] = np.frombuffer(body, dtype, count=size // dtype.itemsize, offset=offset).reshape(o["shape"])
        offset += size
    return out
