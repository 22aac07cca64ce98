"""Per-device rate limit: a token bucket per device id (in memory, one service instance).

Checked after the device is authenticated (so nobody can drain another device's bucket by naming
it) and before the nonce is consumed. Scaled out, the buckets belong in a shared store (Redis
``INCR`` with expiry per device and window) or in API Management's rate-limit-by-key policy.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from key_release_service import codes
from key_release_service.codes import Denied

MAX_TRACKED_DEVICES = 100_000


class RateLimiter:
    def __init__(self, *, burst: int = 10, per_minute: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if burst < 1 or per_minute <= 0:
            raise ValueError("burst must be >= 1 and per_minute > 0")
        self.burst = burst
        self.rate = per_minute / 60.0
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # device -> (tokens, last refill time)

    def check(self, device_id: str) -> None:
        now = self._clock()
        tokens, last = self._buckets.get(device_id, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[device_id] = (tokens, now)
            retry_after = max(1, math.ceil((1.0 - tokens) / self.rate))
            raise Denied(codes.RATE_LIMITED, f"too many key releases for this device; retry in {retry_after} s",
                         retry_after=retry_after)
        self._buckets[device_id] = (tokens - 1.0, now)
        if len(self._buckets) > MAX_TRACKED_DEVICES:
            self._forget_full(now)

    def _forget_full(self, now: float) -> None:
        """Drop buckets that have refilled completely: they carry no information."""
        full = [d for d, (t, last) in self._buckets.items() if t + (now - last) * self.rate >= self.burst]
        for device in full:
            del self._buckets[device]
