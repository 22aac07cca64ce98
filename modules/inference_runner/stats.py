"""Latency statistics for the reported properties (bounded memory: a sliding window of samples)."""

from __future__ import annotations

from collections import deque

import numpy as np


class LatencyStats:
    def __init__(self, window: int = 2048) -> None:
        self._samples: deque[float] = deque(maxlen=window)
        self.count = 0
        self.errors = 0
        self.batches = 0

    def record(self, latency_ms: float, *, ok: bool = True) -> None:
        self.count += 1
        if ok:
            self._samples.append(latency_ms)
        else:
            self.errors += 1

    def summary(self) -> dict[str, float | int | None]:
        samples = np.fromiter(self._samples, dtype=np.float64)
        if samples.size == 0:
            p50 = p95 = p99 = None
        else:
            p50, p95, p99 = (round(float(v), 3) for v in np.percentile(samples, [50, 95, 99], method="inverted_cdf"))
        return {"count": self.count, "errors": self.errors, "batches": self.batches,
                "p50Ms": p50, "p95Ms": p95, "p99Ms": p99}
