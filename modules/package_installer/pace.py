"""The minimum transfer rate of a download. Pure: times and byte counts in, a verdict out.

A server that sends one byte just often enough to stay under the read timeout would otherwise hold
an install for as long as it likes. The rate is judged over tumbling windows of ``window_s``: at
the end of each window, fewer than ``min_bytes_per_s * elapsed`` bytes in it is too slow. The
whole-download deadline (``EDB_DOWNLOAD_DEADLINE_S``) is separate: it bounds a download that is
fast enough but never ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TransferPace:
    min_bytes_per_s: float
    window_s: float
    started: float
    _window_start: float = field(init=False)
    _window_bytes: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self._window_start = self.started

    def too_slow(self, now: float, received: int) -> bool:
        """Count ``received`` more bytes at ``now``; True when the window that just ended was too slow."""
        self._window_bytes += received
        elapsed = now - self._window_start
        if elapsed < self.window_s:
            return False
        if self._window_bytes < self.min_bytes_per_s * elapsed:
            return True
        self._window_start, self._window_bytes = now, 0
        return False
