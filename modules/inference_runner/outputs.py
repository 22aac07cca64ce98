"""Model outputs -> one answer per input message (pure).

The TEE returns one array per tensor output of the model for the whole stacked batch; this module
splits them back per input and decides how to present them, from the outputs' names, dtypes and
shapes rather than from an assumption about the model:

- a **classifier** (the skl2onnx convention that most exported classifiers follow): an output named
  ``label`` (or ``output_label``) with one value per row -> ``predictions`` (ints, floats or
  strings); with an output named ``probabilities`` (or ``output_probability``) of shape
  ``(rows, classes)`` -> ``scores``, the highest probability of each row. Other outputs of a
  classifier go to ``outputs``.
- **anything else** (regressors, embeddings, multi-output models): every output as
  ``outputs = {name: rows}``, nested lists with one entry per input row; strings allowed.

NaN and infinity cannot travel in JSON and mean the answer is unusable: only the input whose rows
hold one is answered with ``RUNNER_OUTPUT_NOT_FINITE``; the others in the batch are unaffected.
An output without one row per input row cannot be split between inputs (:class:`RowMismatch`:
the caller serves those inputs one at a time). A dtype that has no JSON form is
``RUNNER_OUTPUT_INVALID`` for the whole call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edb.errors import EdbError
from edb.schemas import ErrorInfo

LABEL_NAMES = ("label", "output_label")
PROBABILITY_NAMES = ("probabilities", "output_probability")
NOT_FINITE = "RUNNER_OUTPUT_NOT_FINITE"

Scalar = int | float | str | bool


class OutputError(EdbError):
    """The model's outputs have no JSON form (dtype, ragged object arrays)."""

    code = "RUNNER_OUTPUT_INVALID"


class RowMismatch(OutputError):
    """An output does not have one row per input row, so it cannot be split between inputs."""


@dataclass(frozen=True)
class Answer:
    predictions: list[Scalar] | None = None
    scores: list[float] | None = None
    outputs: dict[str, list[Any]] | None = None
    #: outputs too large for the answer in full, summarised (:func:`summarise`), never dropped
    summaries: dict[str, dict[str, Any]] | None = None
    #: every output of this input as the model returned it (for .npz answers, summaries, the OIP)
    arrays: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)

    @property
    def tensors(self) -> dict[str, dict[str, Any]]:
        """Each output's shape and dtype (``string`` for text), in the answer for every model."""
        return {name: {"shape": list(a.shape), "dtype": dtype_name(a)} for name, a in self.arrays.items()}


class _NotFinite(Exception):
    def __init__(self, name: str) -> None:
        self.name = name


#: outputs of more elements than this (for one input) are summarised in a JSON answer, not listed
MAX_LIST_ELEMENTS = 16384


def split_answers(outputs: Mapping[str, Any], counts: Sequence[int], *,
                  max_list_elements: int | None = MAX_LIST_ELEMENTS) -> list[Answer | ErrorInfo]:
    """One answer (or a per-input error) for each input, ``counts[i]`` rows each, in order.
    ``max_list_elements=None``: arrays only (binary answers), no JSON lists or summaries."""
    return [present(rows, max_list_elements) for rows in split_arrays(outputs, counts)]


def split_arrays(outputs: Mapping[str, Any], counts: Sequence[int]) -> list[dict[str, np.ndarray]]:
    """Each input's rows of every output (views, no copies), ``counts[i]`` rows each, in order."""
    total = sum(counts)
    arrays: dict[str, np.ndarray] = {}
    for name, value in outputs.items():
        array = _as_array(name, value)
        if len(counts) > 1 and (array.ndim == 0 or array.shape[0] != total):
            raise RowMismatch(f"output {name[:60]!r} has shape {array.shape} for {total} input rows")
        arrays[str(name)] = array
    if not arrays:
        raise OutputError("the model returned no tensor output")
    parts: list[dict[str, np.ndarray]] = []
    start = 0
    for count in counts:
        parts.append({name: (a if len(counts) == 1 else a[start:start + count]) for name, a in arrays.items()})
        start += count
    return parts


def present(rows: dict[str, np.ndarray], max_list_elements: int | None = MAX_LIST_ELEMENTS) -> Answer | ErrorInfo:
    """One input's outputs as an answer: the classifier conveniences, outputs of at most
    ``max_list_elements`` as nested lists, larger ones summarised (None: arrays only)."""
    if max_list_elements is None:
        return Answer(arrays=rows)
    label = next((n for n in LABEL_NAMES if n in rows and _one_per_row(rows[n])), None)
    listed = {n: a for n, a in rows.items() if a.size <= max_list_elements}
    summaries = {n: summarise(n, a) for n, a in rows.items() if n not in listed} or None
    try:
        answer = _classifier_answer(listed, label) if label is not None and label in listed \
            else _plain_answer(listed)
    except _NotFinite as exc:
        return ErrorInfo(NOT_FINITE, f"output {exc.name[:60]!r} holds NaN or infinity for this input")
    return Answer(answer.predictions, answer.scores, answer.outputs or None, summaries, rows)


def dtype_name(array: np.ndarray) -> str:
    return "string" if array.dtype.kind in "OUS" else str(array.dtype)


def summarise(name: str, array: np.ndarray, top: int = 5) -> dict[str, Any]:
    """What a large output says in a few numbers: shape, dtype, min/max/mean/std and the ``top``
    largest values with their flat indices (numeric), or the first strings. NaN and infinity are
    counted, not hidden."""
    summary: dict[str, Any] = {"shape": list(array.shape), "dtype": dtype_name(array), "summarised": True}
    if array.dtype.kind in "OUS":
        summary["first"] = [str(v)[:64] for v in array.reshape(-1)[:8]]
        return summary
    flat = array.reshape(-1)
    if flat.size == 0:
        return summary
    values = flat.astype(np.float64)
    finite = np.isfinite(values)
    summary["nonFinite"] = int(flat.size - int(finite.sum()))
    if finite.any():
        v = values[finite]
        summary.update(min=float(v.min()), max=float(v.max()), mean=round(float(v.mean()), 6),
                       std=round(float(v.std()), 6))
        idx = np.flatnonzero(finite)
        k = min(top, v.size)
        best = np.argpartition(-v, k - 1)[:k]
        best = best[np.argsort(-v[best], kind="stable")]
        summary["top"] = [[int(idx[i]), float(v[i])] for i in best]
    return summary


def _as_array(name: str, value: Any) -> np.ndarray:
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        raise OutputError(f"output {str(name)[:60]!r} is not a tensor") from None
    if array.dtype.kind not in "biufUSO":  # complex, datetime, void: no JSON form
        raise OutputError(f"output {str(name)[:60]!r} has dtype {array.dtype}, which has no JSON form")
    return array


def _one_per_row(array: np.ndarray) -> bool:
    return array.ndim == 1 or (array.ndim == 2 and array.shape[1] == 1)


def _classifier_answer(rows: dict[str, np.ndarray], label: str) -> Answer:
    predictions = _values(label, rows[label].reshape(-1))
    scores = None
    probability = next((n for n in PROBABILITY_NAMES if n in rows), None)
    used = {label}
    if probability is not None:
        p = rows[probability]
        if p.ndim == 2 and p.shape[0] == len(predictions) and p.shape[1] > 0 and p.dtype.kind == "f":
            if not np.all(np.isfinite(p)):
                raise _NotFinite(probability)
            scores = [round(float(v), 4) for v in p.max(axis=1)]
            used.add(probability)
    extra = {name: _values(name, a) for name, a in rows.items() if name not in used}
    return Answer(predictions, scores, extra or None)


def _plain_answer(rows: dict[str, np.ndarray]) -> Answer:
    return Answer(outputs={name: _values(name, a) for name, a in rows.items()} or None)


def _values(name: str, array: np.ndarray) -> list[Any]:
    """JSON-ready nested lists (a 0-d output becomes a one-element list)."""
    kind = array.dtype.kind
    if kind == "f":
        if not np.all(np.isfinite(array)):
            raise _NotFinite(name)
        values: Any = array.astype(np.float64).tolist()
    elif kind == "b":
        values = array.tolist()
    elif kind in "iu":
        values = array.astype(np.int64 if kind == "i" else np.uint64).tolist()
    elif kind == "U":
        values = array.tolist()
    elif kind == "S":
        values = np.vectorize(lambda b: b.decode("utf-8", "replace"), otypes=[object])(array).tolist() \
            if array.size else array.tolist()
    else:  # object: strings (ONNX string tensors) or Python numbers, nothing else
        values = [_object_value(name, v) for v in array.reshape(-1)]
        values = np.array(values, dtype=object).reshape(array.shape).tolist() if array.ndim != 1 else values
    return values if isinstance(values, list) else [values]


def _object_value(name: str, value: Any) -> Scalar:
    if isinstance(value, str | bool | int):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, float | np.floating):
        if not np.isfinite(value):
            raise _NotFinite(name)
        return float(value)
    if isinstance(value, np.integer):
        return int(value)
    raise OutputError(f"output {name[:60]!r} holds a {type(value).__name__}, which has no JSON form")
