"""Token buckets (in memory, one service instance): per device for releases, per client address
for nonces.

Releases: checked after the device is authenticated (so nobody can drain another device's bucket
by naming it) and before the nonce is spent. Nonces: ``/api/nonce`` is anonymous, so its limit per
client address (:func:`address_key`; an IPv6 /64 counts as one address) is defence in depth only:
issuing a nonce stores nothing, so a flood cannot lock devices out even without it. In Azure put
the platform's front door before the app (Azure Front Door WAF rate-limit rules, or API
Management ``rate-limit-by-key``), where floods are dropped before they cost a Functions
execution. Scaled out, the release buckets belong in a shared store (Redis ``INCR`` with expiry
per device and window) or in API Management's rate-limit-by-key policy.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable

from key_release_service import codes
from key_release_service.codes import Denied

MAX_TRACKED_DEVICES = 100_000


def address_key(remote: str | None) -> str:
    """The bucket of a client address: the IPv4 address, or the IPv6 /64 (one host's usual share)."""
    try:
        address = ipaddress.ip_address((remote or "").strip())
    except ValueError:
        return "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class RateLimiter:
    def __init__(self, *, burst: int = 10, per_minute: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, what: str = "key releases for this device") -> None:
        if burst < 1 or per_minute <= 0:
            raise ValueError("burst must be >= 1 and per_minute > 0")
        self.burst = burst
        self.what = what
        self.rate = per_minute / 60.0
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # device -> (tokens, last refill time)

    def __len__(self) -> int:
        return len(self._buckets)

    def check(self, device_id: str) -> None:
        now = self._clock()
        tokens, last = self._buckets.get(device_id, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[device_id] = (tokens, now)
            retry_after = max(1, math.ceil((1.0 - tokens) / self.rate))
            raise Denied(codes.RATE_LIMITED, f"too many {self.what}; retry in {retry_after} s",
                         retry_after=retry_after)
        self._buckets[device_id] = (tokens - 1.0, now)
        if len(self._buckets) > MAX_TRACKED_DEVICES:
            self._forget_full(now)
            if len(self._buckets) > MAX_TRACKED_DEVICES:
                # memory stays bounded whoever calls; only possible with that many clients at once
                self._buckets.clear()

    def _forget_full(self, now: float) -> None:
        """Drop buckets that have refilled completely: they carry no information."""
        full = [d for d, (t, last) in self._buckets.items() if t + (now - last) * self.rate >= self.burst]
        for device in full:
            del self._buckets[device]
