"""Which requests share a TEE call, and where a batch is split so its outputs fit (pure).

Requests are stacked along the first dimension only when every input of the model has a dynamic
first dimension and the requests agree on everything else (input names, the other dimensions,
dtypes). Otherwise each request is its own call. A group is split into chunks whose estimated
outputs stay under ``max_output_bytes``: the estimate is what the model returned per row last time
for inputs of this shape, or, before that, what the output signature says when every dimension but
the first is fixed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from inference_runner.signature import Signature

T = TypeVar("T")
Key = tuple[Any, ...]


def group_key(feeds: Mapping[str, np.ndarray]) -> Key:
    return tuple((name, a.shape[1:], a.dtype.str) for name, a in sorted(feeds.items()))


def rows_of(feeds: Mapping[str, np.ndarray], batchable: bool) -> int:
    if not batchable:
        return 1
    return int(next(iter(feeds.values())).shape[0])


Feeds = Mapping[str, np.ndarray]


def groups(items: Sequence[tuple[T, Feeds]], batchable: bool) -> list[list[tuple[T, Feeds]]]:
    """Items grouped for stacking, arrival order kept within and between groups (by first arrival)."""
    if not batchable:
        return [[item] for item in items]
    by_key: dict[Key, list[tuple[T, Feeds]]] = {}
    for item in items:
        by_key.setdefault(group_key(item[1]), []).append(item)
    return list(by_key.values())


def static_row_bytes(signature: Signature) -> tuple[int | None, str | None]:
    """Output bytes per row from the signature (every dimension but the first fixed), and the
    name of the largest output; ``(None, None)`` if any output's size depends on its inputs."""
    total = 0
    largest, largest_bytes = None, -1
    for out in signature.outputs:
        if out.shape is None or out.dtype == "string" or any(d is None for d in out.shape[1:]):
            return None, None
        try:
            item = np.dtype(out.dtype).itemsize
        except TypeError:
            return None, None
        size = item * math.prod(d for d in out.shape[1:] if d is not None)
        total += size
        if size > largest_bytes:
            largest, largest_bytes = out.name, size
    return total, largest


def chunks(rows: Sequence[int], row_bytes: float | None, max_output_bytes: int,
           max_rows: int | None = None) -> list[list[int]]:
    """Indices of ``rows`` in consecutive chunks whose ``sum(rows) * row_bytes`` stays within
    ``max_output_bytes`` and whose rows stay within ``max_rows`` (what the TEE refused before);
    a request alone may exceed either: the caller refuses or tries it."""
    if (row_bytes is None or row_bytes <= 0) and max_rows is None:
        return [list(range(len(rows)))]
    per_row = row_bytes if row_bytes is not None and row_bytes > 0 else 0.0
    cap = max_rows if max_rows is not None else None
    out: list[list[int]] = []
    current: list[int] = []
    current_rows = 0
    for i, n in enumerate(rows):
        over_bytes = (current_rows + n) * per_row > max_output_bytes
        over_rows = cap is not None and current_rows + n > cap
        if current and (over_bytes or over_rows):
            out.append(current)
            current, current_rows = [], 0
        current.append(i)
        current_rows += n
    if current:
        out.append(current)
    return out


def stack(feeds: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(feeds) == 1:
        return dict(feeds[0])
    return {name: np.concatenate([f[name] for f in feeds], axis=0) for name in feeds[0]}
