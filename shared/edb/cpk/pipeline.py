"""A bounded, ordered worker pipeline for chunk processing.

Chunk ``i`` is processed by ``work(i, slot)`` on a worker thread with one of a fixed set of
reusable ``slots`` (buffers); ``deliver(i, slot, result)`` then runs on the calling thread strictly
in chunk order, after which the slot is reused. At most ``len(slots)`` chunks are in flight, so
memory is bounded whatever the chunk count. The heavy calls in ``work`` (``os.preadv``,
``AESGCM.*_into``, ``hashlib.sha256``) release the GIL, so the workers use separate cores.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

S = TypeVar("S")
R = TypeVar("R")


def run_ordered(
    count: int,
    slots: Sequence[S],
    work: Callable[[int, S], R],
    deliver: Callable[[int, S, R], None],
    threads: int,
) -> None:
    """Process chunks ``0..count-1``; the first exception (from work or deliver) propagates after
    in-flight work has stopped."""
    if not slots:
        raise ValueError("need at least one slot")
    if threads <= 1 or count <= 1:
        slot = slots[0]
        for index in range(count):
            deliver(index, slot, work(index, slot))
        return
    free: deque[S] = deque(slots)
    pending: deque[tuple[int, S, Future[R]]] = deque()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cpk") as executor:
        try:
            for index in range(count):
                if not free:
                    done_index, slot, future = pending.popleft()
                    deliver(done_index, slot, future.result())
                    free.append(slot)
                slot = free.popleft()
                pending.append((index, slot, executor.submit(work, index, slot)))
            while pending:
                done_index, slot, future = pending.popleft()
                deliver(done_index, slot, future.result())
                free.append(slot)
        except BaseException:
            for _, _, future in pending:
                future.cancel()
            raise


def ring_size(threads: int) -> int:
    """Slots for ``threads`` workers: each busy, plus as many queued, plus one being delivered."""
    return 1 if threads <= 1 else 2 * threads + 1
