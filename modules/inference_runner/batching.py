"""Latency-bounded batching and duplicate suppression (pure; the caller supplies the clock)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Pending(Generic[T]):
    item: T
    rows: int
    arrived: float


class Batcher(Generic[T]):
    """Collects items until ``max_rows`` rows are waiting or the oldest has waited ``max_latency_s``.

    A batch never splits an item: an item bigger than ``max_rows`` is served alone. Items leave in
    arrival order, so answers keep the order of the inputs.
    """

    def __init__(self, max_rows: int, max_latency_s: float) -> None:
        self.max_rows = max(1, max_rows)
        self.max_latency_s = max(0.0, max_latency_s)
        self._items: list[Pending[T]] = []
        self._rows = 0

    def configure(self, max_rows: int, max_latency_s: float) -> None:
        self.max_rows = max(1, max_rows)
        self.max_latency_s = max(0.0, max_latency_s)

    def add(self, item: T, rows: int, now: float) -> None:
        self._items.append(Pending(item, max(1, rows), now))
        self._rows += max(1, rows)

    def __len__(self) -> int:
        return len(self._items)

    def deadline(self) -> float | None:
        """When the oldest waiting item must be served at the latest."""
        return self._items[0].arrived + self.max_latency_s if self._items else None

    def ready(self, now: float) -> bool:
        if not self._items:
            return False
        deadline = self.deadline()
        return self._rows >= self.max_rows or (deadline is not None and now >= deadline)

    def take(self) -> list[Pending[T]]:
        """The next batch: as many items in order as fit in ``max_rows`` (at least one)."""
        batch: list[Pending[T]] = []
        rows = 0
        while self._items and (not batch or rows + self._items[0].rows <= self.max_rows):
            pending = self._items.pop(0)
            rows += pending.rows
            batch.append(pending)
        self._rows -= rows
        return batch

    def take_all(self) -> list[Pending[T]]:
        """Everything waiting, in arrival order (for answering what is left when the runner stops)."""
        items, self._items, self._rows = self._items, [], 0
        return items


class RecentIds:
    """The last ``capacity`` message ids answered, so a redelivered message is not answered twice.

    edgeHub delivers at least once; a redelivery after a reconnect would otherwise produce a second
    result for the same request.
    """

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def seen(self, message_id: str) -> bool:
        """True if already seen; otherwise remembers it and returns False."""
        if message_id in self._ids:
            self._ids.move_to_end(message_id)
            return True
        self._ids[message_id] = None
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return False
