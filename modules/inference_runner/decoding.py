"""Input messages -> tensors. JSON (``{"input": [[...], ...], "label": n}``) or a NumPy ``.npy`` body.

Every malformed input becomes a :class:`InputError` with a ``RUNNER_*`` code; the runner answers it
with an error result instead of dropping it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from edb.errors import EdbError
from edb.schemas import CONTENT_TYPE_JSON, CONTENT_TYPE_NPY, MessageError, decode_json

MAX_ROWS = 256
MAX_FEATURES = 4096


class InputError(EdbError):
    code = "RUNNER_BAD_INPUT"


@dataclass(frozen=True)
class DecodedInput:
    tensor: np.ndarray  # float32, shape (rows, features)
    label: int | None


def decode_input(data: bytes | bytearray | str, content_type: str | None, features: int | None = None) -> DecodedInput:
    """``features`` (from the model's input shape) is checked when known."""
    kind = (content_type or CONTENT_TYPE_JSON).split(";")[0].strip().lower()
    if kind == CONTENT_TYPE_NPY:
        if isinstance(data, str):
            raise InputError("an .npy body must be binary")
        tensor = _from_npy(bytes(data))
        label = None
    elif kind == CONTENT_TYPE_JSON:
        try:
            body = decode_json(data)
        except MessageError as exc:
            raise InputError(str(exc)) from None
        tensor = _from_rows(body.get("input"))
        raw_label = body.get("label")
        label = raw_label if isinstance(raw_label, int) and not isinstance(raw_label, bool) else None
    else:
        raise InputError(f"unsupported content type {kind[:40]!r}", code="RUNNER_UNSUPPORTED_CONTENT_TYPE")
    if tensor.ndim == 1:
        tensor = tensor.reshape(1, -1)
    if tensor.ndim != 2 or tensor.shape[0] == 0 or tensor.shape[0] > MAX_ROWS or tensor.shape[1] > MAX_FEATURES:
        raise InputError(f"input shape {tensor.shape} is not (1..{MAX_ROWS}, features)")
    if features is not None and tensor.shape[1] != features:
        raise InputError(f"input has {tensor.shape[1]} features, the model expects {features}")
    if not np.all(np.isfinite(tensor)):
        raise InputError("input contains NaN or infinity")
    return DecodedInput(np.ascontiguousarray(tensor, dtype=np.float32), label)


def _from_rows(value: object) -> np.ndarray:
    if not isinstance(value, list) or not value:
        raise InputError("input must be a non-empty list of numbers or of rows")
    try:
        tensor = np.asarray(value, dtype=np.float32)
    except (ValueError, TypeError):
        raise InputError("input must be numbers in equal-length rows") from None
    return tensor


def _from_npy(data: bytes) -> np.ndarray:
    try:
        tensor = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError):
        raise InputError("body is not a valid .npy document") from None
    if not isinstance(tensor, np.ndarray) or tensor.dtype.kind not in "fiu":
        raise InputError("an .npy input must be a numeric array")
    return tensor.astype(np.float32, copy=False)
