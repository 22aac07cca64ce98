"""Input messages in flight between the SDK's handler thread and the reporter's journal."""

from __future__ import annotations

import asyncio
import threading
import time


class Arrivals:
    """Counts input messages between the SDK's handler thread and the journal (an
    :class:`edb.module_runtime.CallTracker`), so a stop can wait until all of them are journaled."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.pending = 0
        self.last = time.monotonic()

    def begin(self) -> None:
        with self._lock:
            self.pending += 1
            self.last = time.monotonic()

    def end(self) -> None:
        with self._lock:
            self.pending -= 1
            self.last = time.monotonic()

    async def quiet(self, quiet_s: float, *, timeout_s: float) -> None:
        """Until nothing is in flight and nothing arrived for ``quiet_s`` (or ``timeout_s`` passed)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if self.pending == 0 and time.monotonic() - self.last >= quiet_s:
                    return
            await asyncio.sleep(0.05)
