"""Input message bodies -> tensors (pure; no model needed: :func:`.signature.bind` checks them
against the serving model's signature when the batch is served).

Which format a message is, by its content type:

- ``application/json`` (the default): ``{"inputs": {name: nested list, ...}}``, one entry per model
  input; or the shortcut ``{"input": [[...], ...]}`` (rows, or one row) for a model with a single
  2-D input. An optional ``"label"`` (an integer) is the expected answer.
- ``application/x-npy``: one NumPy ``.npy`` array for a single-input model, or for the input named
  by the application property ``input``.
- ``application/x-npz``: a NumPy ``.npz`` archive (``np.savez``, compressed or not), one member per
  input, named as the inputs.

``.npy``/``.npz`` bodies are read with ``allow_pickle=False``; an ``.npz`` is checked before
anything is decompressed (member count, declared sizes). Every refusal is an
:class:`.signature.InputError` with a ``RUNNER_*`` code.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edb.schemas import CONTENT_TYPE_JSON, CONTENT_TYPE_NPY, MessageError, decode_json
from inference_runner.signature import BAD_INPUT, TENSOR_TOO_LARGE, InputError

CONTENT_TYPE_NPZ = "application/x-npz"
UNSUPPORTED_CONTENT_TYPE = "RUNNER_UNSUPPORTED_CONTENT_TYPE"
MAX_TENSORS = 64  # named tensors in one request (the TEE takes at most 64 parameters)
MAX_NAME = 256


@dataclass(frozen=True)
class DecodedInput:
    """One request's tensors: by input name, or ``{None: tensor}`` for one unnamed tensor."""

    tensors: Mapping[str | None, np.ndarray]
    label: int | None = None

    @property
    def rows(self) -> int:
        """Rows along the first dimension (for batching; 1 for a scalar or a lone row)."""
        first = next(iter(self.tensors.values()))
        return int(first.shape[0]) if first.ndim >= 2 else 1


def media_type(content_type: str | None) -> str:
    return (content_type or CONTENT_TYPE_JSON).split(";")[0].strip().lower()


def decode_body(data: bytes | bytearray | memoryview | str | None, content_type: str | None,
                properties: Mapping[str, Any] | None = None, *, max_bytes: int = 64 * 1024 * 1024) -> DecodedInput:
    kind = media_type(content_type)
    props = properties or {}
    if data is None:
        raise InputError("the message has no body")
    if kind == CONTENT_TYPE_JSON:
        return _from_json(data)
    if isinstance(data, str):
        raise InputError(f"a {kind} body must be binary")
    if kind == CONTENT_TYPE_NPY:
        name = props.get("input")
        if name is not None and (not isinstance(name, str) or not 0 < len(name) <= MAX_NAME):
            raise InputError("the 'input' property must name a model input")
        return DecodedInput({name: _npy(bytes(data))}, _label_property(props))
    if kind == CONTENT_TYPE_NPZ:
        return DecodedInput(_npz(bytes(data), max_bytes), _label_property(props))
    raise InputError(f"unsupported content type {kind[:40]!r}", code=UNSUPPORTED_CONTENT_TYPE)


def _label_property(props: Mapping[str, Any]) -> int | None:
    label = props.get("label")
    return int(label) if isinstance(label, str) and label.isdigit() and len(label) < 6 else None


def _from_json(data: bytes | bytearray | memoryview | str) -> DecodedInput:
    try:
        body = decode_json(bytes(data) if isinstance(data, memoryview) else data)
    except MessageError as exc:
        raise InputError(str(exc)) from None
    raw_label = body.get("label")
    label = raw_label if isinstance(raw_label, int) and not isinstance(raw_label, bool) else None
    if "inputs" in body:
        inputs = body["inputs"]
        if not isinstance(inputs, dict) or not inputs or len(inputs) > MAX_TENSORS:
            raise InputError(f"'inputs' must map 1 to {MAX_TENSORS} input names to nested lists")
        tensors: dict[str | None, np.ndarray] = {}
        for name, value in inputs.items():
            if not 0 < len(name) <= MAX_NAME:
                raise InputError("an input name must be 1 to 256 characters")
            tensors[name] = from_nested(value, name)
        return DecodedInput(tensors, label)
    rows = from_nested(body.get("input"), "input")
    if rows.ndim == 1:
        rows = rows.reshape(1, -1)
    if rows.ndim != 2:
        raise InputError("'input' must be a row or a list of rows (use 'inputs' for other shapes)")
    return DecodedInput({None: rows}, label)


def from_nested(value: object, name: str) -> np.ndarray:
    """A nested JSON list as an array (numbers, booleans or strings; rectangular)."""
    if not isinstance(value, list) or not value:
        raise InputError(f"tensor {name[:60]!r} must be a non-empty nested list")
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError):
        raise InputError(f"tensor {name[:60]!r} is not rectangular (rows of different lengths)") from None
    if arr.dtype.kind not in "biufU":
        raise InputError(f"tensor {name[:60]!r} must hold only numbers, booleans or strings of one kind")
    return arr


def _npy(data: bytes) -> np.ndarray:
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError):
        raise InputError("body is not a valid .npy document") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biufU":
        raise InputError("an .npy input must be a numeric, boolean or string array")
    return arr


def _npz(data: bytes, max_bytes: int) -> dict[str | None, np.ndarray]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError):
        raise InputError("body is not a valid .npz archive") from None
    if not members or len(members) > MAX_TENSORS:
        raise InputError(f"an .npz input must hold 1 to {MAX_TENSORS} arrays")
    declared = sum(m.file_size for m in members)  # checked before anything is decompressed
    if declared > max_bytes:
        raise InputError(f"the .npz archive declares {declared} bytes, above the limit of {max_bytes}",
                         code=TENSOR_TOO_LARGE)
    tensors: dict[str | None, np.ndarray] = {}
    for member in members:
        name = member.filename[:-4] if member.filename.endswith(".npy") else member.filename
        if not 0 < len(name) <= MAX_NAME or name in tensors:
            raise InputError("an .npz member must be named as a model input, once")
        try:
            with archive.open(member) as f:
                raw = f.read(member.file_size + 1)
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, RuntimeError):
            raise InputError(f".npz member {name[:60]!r} cannot be read") from None
        if len(raw) != member.file_size:
            raise InputError(f".npz member {name[:60]!r} is not the size it declares", code=BAD_INPUT)
        tensors[name] = _npy(raw)
    return tensors


def encode_npz(arrays: Mapping[str, np.ndarray]) -> bytes:
    """Outputs as an ``.npz`` archive (uncompressed; string outputs as unicode arrays)."""
    buf = io.BytesIO()
    plain: dict[str, Any] = {name: (a.astype(str) if a.dtype.kind == "O" else a) for name, a in arrays.items()}
    np.savez(buf, allow_pickle=False, **plain)
    return buf.getvalue()
