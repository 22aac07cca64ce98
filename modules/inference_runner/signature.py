"""A model's input signature and the checks that bind decoded tensors to it (pure).

The signature comes from the TEE's model handle (names, dtypes, shapes with dynamic dimensions).
:func:`bind` turns the tensors of one request (named, or one unnamed tensor for a single-input
model) into the feeds the TEE gets: every input present, each in its own dtype, each shape
compatible with the model's (rank, fixed dimensions), within the size limits, finite unless the
limits allow otherwise. Everything refused is an :class:`InputError` with a stable code that names
the tensor, so nothing unchecked ever reaches the TEE.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edb.errors import EdbError

#: dtypes an input can have (the ONNX fixed-size types numpy has, and strings)
NUMERIC_DTYPES = frozenset({"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                            "float16", "float32", "float64"})
STRING = "string"

BAD_INPUT = "RUNNER_BAD_INPUT"  # malformed: not a tensor, unparsable, ragged
INPUT_MISMATCH = "RUNNER_INPUT_MISMATCH"  # a valid tensor the model does not take (name, dtype, shape)
INPUT_NOT_FINITE = "RUNNER_INPUT_NOT_FINITE"  # NaN or infinity where the limits do not allow it
TENSOR_TOO_LARGE = "RUNNER_TENSOR_TOO_LARGE"  # above a runner limit; the message names the tensor and side


class InputError(EdbError):
    code = BAD_INPUT


@dataclass(frozen=True)
class TensorSig:
    name: str
    dtype: str  # numpy name, "string", or "unknown" (sequences, maps: cannot be fed)
    shape: tuple[int | None, ...] | None  # None per dynamic dimension; None if the rank is unknown

    @property
    def batchable(self) -> bool:
        """Its first dimension is dynamic: requests can be stacked along it."""
        return self.shape is not None and len(self.shape) >= 1 and self.shape[0] is None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype,
                "shape": [-1 if d is None else d for d in self.shape] if self.shape is not None else None}


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSig, ...]
    outputs: tuple[TensorSig, ...]

    @property
    def batchable(self) -> bool:
        return bool(self.inputs) and all(i.batchable for i in self.inputs)

    def input(self, name: str) -> TensorSig | None:
        return next((i for i in self.inputs if i.name == name), None)

    def to_json(self) -> dict[str, Any]:
        return {"inputs": [i.to_json() for i in self.inputs], "outputs": [o.to_json() for o in self.outputs]}


@dataclass(frozen=True)
class Limits:
    """The runner's tensor limits (twin ``limits``; defaults below). ``max_input_bytes`` bounds one
    request's tensors together, ``max_output_bytes`` one TEE call's outputs (the TEE's frame is
    64 MiB; batches are split to stay under this)."""

    max_input_bytes: int = 16 * 1024 * 1024
    max_output_bytes: int = 48 * 1024 * 1024
    max_elements: int = 16 * 1024 * 1024  # per tensor, also bounds JSON decoding work
    allow_non_finite: bool = False

    def to_twin(self) -> dict[str, Any]:
        return {"maxInputBytes": self.max_input_bytes, "maxOutputBytes": self.max_output_bytes,
                "maxElements": self.max_elements, "allowNonFinite": self.allow_non_finite}


def _dim(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def from_handle(handle: Any) -> Signature:
    """The signature of a TEE model handle (``edb.tee.types.ModelHandle`` or anything shaped so):
    symbolic or unknown dimensions are dynamic."""
    def sig(spec: Any) -> TensorSig:
        shape = getattr(spec, "shape", None)
        dims = tuple(_dim(d) for d in shape) if isinstance(shape, tuple | list) else None
        return TensorSig(str(spec.name), str(spec.dtype), dims)
    return Signature(tuple(sig(s) for s in getattr(handle, "inputs", ()) or ()),
                     tuple(sig(s) for s in getattr(handle, "outputs", ()) or ()))


def bind(tensors: Mapping[str | None, np.ndarray], signature: Signature, limits: Limits) -> dict[str, np.ndarray]:
    """The feeds for the TEE from one request's tensors. ``None`` as the only key is one unnamed
    tensor (today's rows, an ``.npy`` body): it goes to a single-input model's input and is refused
    for a model with several, so nothing is guessed."""
    if not signature.inputs:
        raise InputError("the model declares no inputs", code=INPUT_MISMATCH)
    if None in tensors:
        if len(tensors) != 1:
            raise InputError("an unnamed tensor cannot be mixed with named ones")
        if len(signature.inputs) != 1:
            names = ", ".join(repr(i.name[:40]) for i in signature.inputs[:8])
            raise InputError(f"the model takes {len(signature.inputs)} inputs ({names}): name each one",
                             code=INPUT_MISMATCH)
        tensors = {signature.inputs[0].name: tensors[None]}
    unknown = [str(n) for n in tensors if signature.input(str(n)) is None]
    if unknown:
        raise InputError(f"the model has no input {unknown[0][:60]!r}", code=INPUT_MISMATCH)
    missing = [i.name for i in signature.inputs if i.name not in tensors]
    if missing:
        raise InputError(f"input {missing[0][:60]!r} is missing", code=INPUT_MISMATCH)
    feeds: dict[str, np.ndarray] = {}
    total = 0
    for spec in signature.inputs:
        arr = conform(tensors[spec.name], spec, limits)
        total += arr.nbytes if arr.dtype.kind != "O" else sum(len(str(s)) for s in arr.reshape(-1))
        if total > limits.max_input_bytes:
            raise InputError(f"input {spec.name[:60]!r}: the request's inputs exceed the runner's limit of "
                             f"{limits.max_input_bytes} bytes (limits.maxInputBytes)", code=TENSOR_TOO_LARGE)
        feeds[spec.name] = arr
    if signature.batchable and len({a.shape[0] for a in feeds.values()}) > 1:
        raise InputError("the inputs disagree on the batch dimension (the first)", code=INPUT_MISMATCH)
    return feeds


def conform(arr: np.ndarray, spec: TensorSig, limits: Limits) -> np.ndarray:
    """``arr`` in ``spec``'s dtype and shape, or an :class:`InputError` naming the input."""
    label = f"input {spec.name[:60]!r}"
    if arr.size > limits.max_elements:
        raise InputError(f"{label} has {arr.size} elements, above the runner's limit of {limits.max_elements} "
                         "(limits.maxElements)", code=TENSOR_TOO_LARGE)
    arr = _with_shape(arr, spec, label)
    out = _with_dtype(arr, spec, label)
    if out.dtype.kind == "f" and not limits.allow_non_finite and out.size and not _finite(out):
        raise InputError(f"{label} contains NaN or infinity", code=INPUT_NOT_FINITE)
    return np.ascontiguousarray(out)


def _finite(arr: np.ndarray) -> bool:
    """No NaN or infinity: min and max propagate NaN and show an infinity, without the temporary
    boolean array ``isfinite`` would allocate (an image input can be megabytes)."""
    return bool(np.isfinite(arr.min()) and np.isfinite(arr.max()))


def _with_shape(arr: np.ndarray, spec: TensorSig, label: str) -> np.ndarray:
    if spec.shape is None:
        return arr
    want = spec.shape
    if arr.ndim == len(want) - 1 and spec.batchable:
        arr = arr.reshape((1, *arr.shape))  # one row without its batch dimension
    if arr.ndim != len(want):
        raise InputError(f"{label} has rank {arr.ndim} {list(arr.shape)}, the model expects rank {len(want)} "
                         f"{[-1 if d is None else d for d in want]}", code=INPUT_MISMATCH)
    for axis, (got, expected) in enumerate(zip(arr.shape, want, strict=True)):
        if expected is not None and got != expected:
            raise InputError(f"{label} has {got} at dimension {axis}, the model expects {expected}",
                             code=INPUT_MISMATCH)
        if got == 0:
            raise InputError(f"{label} is empty at dimension {axis}", code=INPUT_MISMATCH)
    return arr


def _with_dtype(arr: np.ndarray, spec: TensorSig, label: str) -> np.ndarray:
    want = spec.dtype
    kind = arr.dtype.kind
    if want == STRING:
        if kind == "U":
            return arr
        if kind == "O" and all(isinstance(v, str) for v in arr.reshape(-1)):
            return arr
        raise InputError(f"{label} takes strings, got {arr.dtype}", code=INPUT_MISMATCH)
    if want not in NUMERIC_DTYPES:
        raise InputError(f"{label} has type {want[:32]!r}, which the runner cannot feed", code=INPUT_MISMATCH)
    if kind not in "biuf":
        raise InputError(f"{label} takes {want}, got {arr.dtype}", code=INPUT_MISMATCH)
    target = np.dtype(want)
    if arr.dtype == target:
        return arr
    if target.kind == "b":
        if kind == "b" or (kind in "iu" and np.all((arr == 0) | (arr == 1))):
            return arr.astype(target)
        raise InputError(f"{label} takes bool, got {arr.dtype} values other than 0/1", code=INPUT_MISMATCH)
    if target.kind in "iu":
        if kind == "f" and (not np.all(np.isfinite(arr)) or not np.all(np.mod(arr, 1) == 0)):
            raise InputError(f"{label} takes {want}; these are not whole numbers", code=INPUT_MISMATCH)
        if arr.size:
            info = np.iinfo(target)
            low, high = (int(arr.min()), int(arr.max())) if kind != "f" else (arr.min(), arr.max())
            if low < info.min or high > info.max:
                raise InputError(f"{label} takes {want}; these are out of its range", code=INPUT_MISMATCH)
        return arr.astype(target)
    # a float input: from bool, integers, or another float width
    if kind == "f" and target.itemsize < arr.dtype.itemsize and arr.size:
        finite = arr[np.isfinite(arr)]
        if finite.size and float(np.abs(finite).max()) > float(np.finfo(target).max):
            raise InputError(f"{label} takes {want}; these overflow it", code=INPUT_MISMATCH)
    return arr.astype(target)
