"""The key release client. Pure retry policy (:class:`RetryPolicy`) + a thin ``requests`` shell."""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import requests
import urllib3

from edb.errors import KeyReleaseError

log = logging.getLogger("edb.keyrelease")

#: Client-side codes (the service's own codes are passed through unchanged).
UNREACHABLE = "KR_UNREACHABLE"
BAD_RESPONSE = "KR_BAD_RESPONSE"
DEADLINE = "KR_DEADLINE_EXCEEDED"

_CODE = re.compile(r"^KR_[A-Z0-9_]{1,60}$")
MAX_RESPONSE_BYTES = 64 * 1024
MAX_JWE_CHARS = 8 * 1024


class ReleaseFailed(KeyReleaseError):
    """The release did not produce a key: ``code`` says why, ``retryable`` whether trying later may help."""

    def __init__(self, message: str, *, code: str, status: int | None = None, retryable: bool = False,
                 retry_after: float | None = None) -> None:
        super().__init__(message, code=code)
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after


class EvidenceLike(Protocol):
    """What the TEE returns for a nonce (``edb.tee.Evidence`` has exactly these)."""

    @property
    def jws(self) -> str: ...

    @property
    def cert_chain(self) -> tuple[str, ...]: ...

    @property
    def one_time_jwk(self) -> dict[str, str]: ...


class SignedManifestLike(Protocol):
    """``edb.cpk.SignedManifest``: its ``to_json()`` is the request's ``manifest`` member."""

    def to_json(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class PackageRef:
    package_id: str
    version: str


@dataclass(frozen=True)
class RetryPolicy:
    """Full-jitter exponential backoff: attempt n waits uniform(0, min(cap, base * 2**n)), at least
    the server's Retry-After; at most ``max_attempts`` tries and ``deadline_s`` in total."""

    max_attempts: int = 5
    base_s: float = 0.5
    cap_s: float = 15.0
    deadline_s: float = 120.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        ceiling = min(self.cap_s, self.base_s * (2 ** attempt))
        wait = rng.uniform(0.0, ceiling)
        return max(wait, retry_after or 0.0)


@dataclass
class KeyReleaseClient:
    base_url: str
    ca_bundle: str | None = None  # None = the system trust store; never "no verification"
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.SystemRandom)
    session: requests.Session = field(default_factory=requests.Session)

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        if not self.base_url.startswith("https://"):
            raise ValueError("the key release service must be reached over https")

    # -- public API ------------------------------------------------------------------------------

    def release(self, package: PackageRef | tuple[str, str], signed_manifest: SignedManifestLike,
                make_evidence: Callable[[str], EvidenceLike]) -> str:
        """Run nonce -> evidence -> release until a JWE comes back or a non-retryable failure."""
        ref = package if isinstance(package, PackageRef) else PackageRef(*package)
        manifest_json = signed_manifest.to_json()
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                return self._attempt(ref, manifest_json, make_evidence)
            except ReleaseFailed as failure:
                attempt += 1
                if not failure.retryable or failure.status == 429 or attempt >= self.retry.max_attempts:
                    raise
                wait = self.retry.delay(attempt - 1, failure.retry_after, self.rng)
                if time.monotonic() - started + wait > self.retry.deadline_s:
                    raise ReleaseFailed(f"gave up after {attempt} attempts: {failure.message}", code=DEADLINE,
                                        status=failure.status, retryable=True) from failure
                log.info("key release attempt %d failed (%s); retrying in %.2f s", attempt, failure.code, wait)
                self.sleep(wait)

    def nonce(self) -> str:
        body = self._post("/api/nonce", {})
        nonce = body.get("nonce")
        if not isinstance(nonce, str) or not 0 < len(nonce) <= 128:
            raise ReleaseFailed("nonce response is malformed", code=BAD_RESPONSE)
        return nonce

    # -- one attempt -----------------------------------------------------------------------------

    def _attempt(self, ref: PackageRef, manifest_json: dict[str, Any],
                 make_evidence: Callable[[str], EvidenceLike]) -> str:
        nonce = self.nonce()
        evidence = make_evidence(nonce)
        body = self._post("/api/release", {
            "evidence": evidence.jws,
            "certChain": list(evidence.cert_chain),
            "oneTimeKey": dict(evidence.one_time_jwk),
            "package": {"id": ref.package_id, "version": ref.version},
            "manifest": manifest_json,
        })
        jwe = body.get("jwe")
        if not isinstance(jwe, str) or len(jwe) > MAX_JWE_CHARS or jwe.count(".") != 4:
            raise ReleaseFailed("release response carries no compact JWE", code=BAD_RESPONSE)
        return jwe

    def _post(self, path: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        return post_json(self.session, self.base_url + path, payload, what="key release service",
                         timeout=(self.connect_timeout_s, self.read_timeout_s), ca_bundle=self.ca_bundle,
                         max_bytes=MAX_RESPONSE_BYTES)


def post_json(session: requests.Session, url: str, payload: Mapping[str, Any], *, what: str,
              timeout: tuple[float, float], ca_bundle: str | None, max_bytes: int,
              headers: Mapping[str, str] | None = None) -> dict[str, Any]:
    """POST ``payload`` as JSON; the JSON object of a 200 answer of at most ``max_bytes``. Otherwise a
    :class:`ReleaseFailed`: ``what`` unreachable (retryable), too large, or the service's own error.

    Redirects are never followed (a 3xx is ``KR_HTTP_3xx``, not retried): the device only talks to
    the service it was configured with, and a 307/308 would re-send the evidence elsewhere."""
    try:
        # the CA goes with the request: requests would let REQUESTS_CA_BUNDLE replace a session's
        response = session.post(url, json=payload, headers=headers, timeout=timeout,
                                verify=ca_bundle if ca_bundle else True, stream=True,
                                allow_redirects=False)
        raw = response.raw.read(max_bytes + 1, decode_content=True)
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise ReleaseFailed(f"{what} unreachable ({type(exc).__name__})", code=UNREACHABLE,
                            retryable=True) from exc
    response.close()
    if len(raw) > max_bytes:
        raise ReleaseFailed("response too large", code=BAD_RESPONSE, status=response.status_code)
    body = _json_object(raw)
    if response.status_code == 200 and body is not None:
        return body
    raise _failure_from(response.status_code, body, response.headers.get("Retry-After"))


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _failure_from(status: int, body: dict[str, Any] | None, retry_after_header: str | None) -> ReleaseFailed:
    error = body.get("error") if body else None
    code = error.get("code") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if not isinstance(code, str) or not _CODE.match(code):
        code = f"KR_HTTP_{status}"
    if not isinstance(message, str):
        message = f"HTTP {status}"
    retry_after = None
    if retry_after_header is not None:
        try:
            retry_after = min(max(float(retry_after_header), 0.0), 3600.0)
        except ValueError:
            retry_after = None
    retryable = status >= 500 or status == 429
    return ReleaseFailed(message[:500], code=code, status=status, retryable=retryable, retry_after=retry_after)
