"""Stateless nonces with a lifetime of at most 60 seconds, and the set of spent ones (pure, no I/O).

Issuing a nonce stores nothing: a nonce is ``base64url(version || 32 random bytes || expiry ||
HMAC-SHA256(nonce key, version || random || expiry))``, 73 bytes, 98 characters. The release
handler checks the MAC (``KR_NONCE_UNKNOWN``: not made with this service's key) and the expiry
(``KR_NONCE_EXPIRED``) with no lookup, so nobody can fill a table by asking for nonces: ``/api/nonce``
has no global cap for an anonymous caller to exhaust.

Single use is enforced at release, after the device is authenticated and its rate limit passed: the
nonce's random part is spent in a :class:`SpentNonceStore` until the nonce expires
(``KR_NONCE_REPLAYED`` on a second use). :class:`SpentNonces` is the in-memory set of one process
(:class:`MemorySpentNonceStore` adapts it to the store interface); a scaled-out deployment shares
one store between its instances (``key_release_service.table_spent_store``: Azure Table Storage).
Only authenticated, rate-limited devices can grow a store, and every entry is dead once its nonce
expires; the in-memory set's hard bound (``KR_BUSY`` past it) is far above what the per-device
limits let a fleet reach within one lifetime.

Keys: the first key signs, every key verifies (rotation: put the new key first, drop the old one
a minute later). A scaled-out deployment needs the same keys on every instance and the shared
store (see docs/key-release.md, "Nonces, rate limits, and scaling out").
"""

from __future__ import annotations

import base64
import binascii
import heapq
import math
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.primitives import constant_time, hashes, hmac

from key_release_service import codes
from key_release_service.codes import Denied

MAX_TTL_S = 60.0
#: Clock difference tolerated between instances sharing a nonce key (an expiry further ahead than
#: the longest lifetime plus this was not made by a correctly configured service).
MAX_SKEW_S = 5.0
NONCE_VERSION = 1
RANDOM_BYTES = 32
_EXPIRY_BYTES = 8  # milliseconds since the epoch, big-endian
MAC_BYTES = 32
NONCE_BYTES = 1 + RANDOM_BYTES + _EXPIRY_BYTES + MAC_BYTES
NONCE_CHARS = math.ceil(NONCE_BYTES * 4 / 3)  # unpadded base64url
MIN_KEY_BYTES = 32
MAX_SPENT = 200_000


def _mac(key: bytes, body: bytes) -> bytes:
    h = hmac.HMAC(key, hashes.SHA256())
    h.update(body)
    return h.finalize()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class CheckedNonce:
    """A nonce this service made, not yet expired: ``nonce_id`` is its random part."""

    nonce_id: bytes
    expires: float  # Unix time


class NonceIssuer:
    """Makes and checks nonces; holds only its keys (no per-nonce state)."""

    def __init__(self, keys: Sequence[bytes], ttl_s: float = MAX_TTL_S, *,
                 clock: Callable[[], float] = time.time,
                 random_bytes: Callable[[int], bytes] = secrets.token_bytes) -> None:
        if not 0 < ttl_s <= MAX_TTL_S:
            raise ValueError(f"nonce lifetime must be within (0, {MAX_TTL_S}] seconds")
        if not keys or any(len(k) < MIN_KEY_BYTES for k in keys):
            raise ValueError(f"nonce keys must be at least {MIN_KEY_BYTES} bytes")
        self._keys = tuple(bytes(k) for k in keys)
        self.ttl_s = ttl_s
        self._clock = clock
        self._random = random_bytes

    def __repr__(self) -> str:  # never show a key
        return f"NonceIssuer(keys={len(self._keys)}, ttl_s={self.ttl_s})"

    def issue(self) -> tuple[str, float]:
        """A fresh nonce and its expiry (Unix time). Stores nothing."""
        expires_ms = int((self._clock() + self.ttl_s) * 1000)
        body = bytes([NONCE_VERSION]) + self._random(RANDOM_BYTES) + expires_ms.to_bytes(_EXPIRY_BYTES, "big")
        return _b64url(body + _mac(self._keys[0], body)), expires_ms / 1000

    def check(self, nonce: str) -> CheckedNonce:
        """Authenticity and freshness, without any lookup. Single use is the spent store's job."""
        if not isinstance(nonce, str) or len(nonce) != NONCE_CHARS:
            raise Denied(codes.NONCE_UNKNOWN, "nonce was not issued by this service")
        try:
            raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
        except (binascii.Error, ValueError) as exc:
            raise Denied(codes.NONCE_UNKNOWN, "nonce was not issued by this service") from exc
        body, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
        if len(raw) != NONCE_BYTES or body[0] != NONCE_VERSION or _b64url(raw) != nonce:
            raise Denied(codes.NONCE_UNKNOWN, "nonce was not issued by this service")
        if not any(constant_time.bytes_eq(mac, _mac(key, body)) for key in self._keys):
            raise Denied(codes.NONCE_UNKNOWN, "nonce was not issued by this service")
        expires = int.from_bytes(body[1 + RANDOM_BYTES:], "big") / 1000
        now = self._clock()
        if now >= expires:
            raise Denied(codes.NONCE_EXPIRED, f"nonce expired (lifetime {self.ttl_s:.0f} s)")
        if expires - now > MAX_TTL_S + MAX_SKEW_S:
            raise Denied(codes.NONCE_UNKNOWN, "nonce expiry is beyond any lifetime this service issues")
        return CheckedNonce(body[1:1 + RANDOM_BYTES], expires)


class SpentNonces:
    """Nonces already used for a release, each kept until it expires (then its expiry refuses it)."""

    def __init__(self, *, max_entries: int = MAX_SPENT, clock: Callable[[], float] = time.time) -> None:
        self._max = max_entries
        self._clock = clock
        self._spent: dict[bytes, float] = {}
        self._by_expiry: list[tuple[float, bytes]] = []

    def __len__(self) -> int:
        """Spent nonces not yet expired."""
        self._sweep(self._clock())
        return len(self._spent)

    def _sweep(self, now: float) -> None:
        while self._by_expiry and self._by_expiry[0][0] <= now:
            _, nonce_id = heapq.heappop(self._by_expiry)
            self._spent.pop(nonce_id, None)

    def add(self, nonce_id: bytes, expires_at: float) -> bool:
        """Record ``nonce_id`` as used until ``expires_at``: True the first time, False if it already
        is (an entry whose expiry has passed is gone, so it never blocks); ``KR_BUSY`` when full."""
        self._sweep(self._clock())
        if nonce_id in self._spent:
            return False
        if len(self._spent) >= self._max:
            # only authenticated devices within their rate limits reach this point
            raise Denied(codes.BUSY, "too many releases in flight; retry shortly", retry_after=1)
        self._spent[nonce_id] = expires_at
        heapq.heappush(self._by_expiry, (expires_at, nonce_id))
        return True

    def spend(self, nonce: CheckedNonce) -> None:
        """Mark ``nonce`` used; ``KR_NONCE_REPLAYED`` if it already was."""
        require_first_use(self.add(nonce.nonce_id, nonce.expires))


class SpentNonceStore(Protocol):
    """Where spent nonces live until they expire; shared by every instance that issues with the same key.

    ``spend`` is an atomic insert-if-absent: True = first use (the release may go on), False =
    already spent (``KR_NONCE_REPLAYED``). A store that cannot answer raises :class:`Denied` with a
    5xx code (``KR_NONCE_STORE_UNAVAILABLE``, ``KR_BUSY``): never True when unsure (fail closed).
    """

    async def spend(self, nonce_id: bytes, expires_at: float) -> bool: ...

    async def close(self) -> None: ...


class MemorySpentNonceStore:
    """The store of one process: :class:`SpentNonces` behind the async interface (runs on the
    event loop thread, so check-and-insert is atomic without a lock)."""

    def __init__(self, spent: SpentNonces | None = None) -> None:
        self.spent = spent if spent is not None else SpentNonces()

    def __len__(self) -> int:
        return len(self.spent)

    async def spend(self, nonce_id: bytes, expires_at: float) -> bool:
        return self.spent.add(nonce_id, expires_at)

    async def close(self) -> None:
        return None


def require_first_use(first: bool) -> None:
    """The decision on a store's answer: a second use of a nonce is a replay."""
    if not first:
        raise Denied(codes.NONCE_REPLAYED, "nonce was already used")
