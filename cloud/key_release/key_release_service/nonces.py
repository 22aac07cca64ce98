"""Stateless nonces with a lifetime of at most 60 seconds, and the set of spent ones (pure, no I/O).

Issuing a nonce stores nothing: a nonce is ``base64url(version || 32 random bytes || expiry ||
HMAC-SHA256(nonce key, version || random || expiry))``, 73 bytes, 98 characters. The release
handler checks the MAC (``KR_NONCE_UNKNOWN``: not made with this service's key) and the expiry
(``KR_NONCE_EXPIRED``) with no lookup, so nobody can fill a table by asking for nonces: ``/api/nonce``
has no global cap for an anonymous caller to exhaust.

Single use is enforced at release, after the device is authenticated and its rate limit passed: the
nonce's random part goes into :class:`SpentNonces` until the nonce expires (``KR_NONCE_REPLAYED``
on a second use). Only authenticated, rate-limited devices can grow that set, and every entry
leaves it when its nonce expires; its hard bound (``KR_BUSY`` past it) is far above what the
per-device limits let a fleet reach within one lifetime.

Keys: the first key signs, every key verifies (rotation: put the new key first, drop the old one
a minute later). A scaled-out deployment needs the same keys on every instance and one shared spent
set (see docs/key-release.md, "Nonces and rate limits; scaling out").
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
        """Authenticity and freshness, without any lookup. Single use is :class:`SpentNonces`' job."""
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

    def spend(self, nonce: CheckedNonce) -> None:
        """Mark ``nonce`` used; ``KR_NONCE_REPLAYED`` if it already was."""
        self._sweep(self._clock())
        if nonce.nonce_id in self._spent:
            raise Denied(codes.NONCE_REPLAYED, "nonce was already used")
        if len(self._spent) >= self._max:
            # only authenticated devices within their rate limits reach this point
            raise Denied(codes.BUSY, "too many releases in flight; retry shortly", retry_after=1)
        self._spent[nonce.nonce_id] = nonce.expires
        heapq.heappush(self._by_expiry, (nonce.expires, nonce.nonce_id))
