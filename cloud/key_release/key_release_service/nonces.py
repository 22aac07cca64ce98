"""Single-use nonces with a lifetime of at most 60 seconds (in memory, one service instance).

A consumed or expired nonce is remembered for one more lifetime as a tombstone, so a replay is
reported as ``KR_NONCE_REPLAYED`` and a late one as ``KR_NONCE_EXPIRED`` rather than "unknown".
Memory is bounded: past ``max_outstanding`` live nonces the service answers ``KR_BUSY``.

Scaled out (several Functions instances), this must move to a shared store with an atomic
consume: e.g. Azure Cache for Redis (``SET nonce 1 NX EX 60`` at issue, ``GETDEL`` at release)
or a Table/Cosmos row deleted with an ETag condition. The interface stays ``issue``/``consume``.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from key_release_service import codes
from key_release_service.codes import Denied

MAX_TTL_S = 60.0
NONCE_BYTES = 32


@dataclass
class _Entry:
    deadline: float  # monotonic
    used: bool = False


class NonceStore:
    def __init__(self, ttl_s: float = MAX_TTL_S, *, max_outstanding: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 < ttl_s <= MAX_TTL_S:
            raise ValueError(f"nonce lifetime must be within (0, {MAX_TTL_S}] seconds")
        self.ttl_s = ttl_s
        self._max = max_outstanding
        self._clock = clock
        # insertion order == deadline order (fixed lifetime), so expiry pops from the front
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def _sweep(self, now: float) -> None:
        while self._entries:
            nonce, entry = next(iter(self._entries.items()))
            if entry.deadline + self.ttl_s > now:  # keep tombstones for one more lifetime
                break
            del self._entries[nonce]

    def issue(self) -> tuple[str, float]:
        """A fresh nonce (base64url of 32 random bytes) and its expiry as Unix time."""
        now = self._clock()
        self._sweep(now)
        if len(self._entries) >= self._max:
            raise Denied(codes.BUSY, "too many outstanding nonces; retry shortly", retry_after=1)
        nonce = secrets.token_urlsafe(NONCE_BYTES)
        self._entries[nonce] = _Entry(now + self.ttl_s)
        return nonce, time.time() + self.ttl_s

    def consume(self, nonce: str) -> None:
        """Accept ``nonce`` once, within its lifetime; raise the precise denial otherwise."""
        now = self._clock()
        self._sweep(now)
        entry = self._entries.get(nonce)
        if entry is None:
            raise Denied(codes.NONCE_UNKNOWN, "nonce was not issued by this service (or is long expired)")
        if entry.used:
            raise Denied(codes.NONCE_REPLAYED, "nonce was already used")
        entry.used = True  # an expired nonce is burnt as well
        if now >= entry.deadline:
            raise Denied(codes.NONCE_EXPIRED, f"nonce expired (lifetime {self.ttl_s:.0f} s)")
