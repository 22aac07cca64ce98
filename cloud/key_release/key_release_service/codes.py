"""Denial and error codes of the key release service, each with its HTTP status.

A code never changes meaning once released. The device-side client surfaces the code to the
installer (twin ``error.code``); operators read it in the audit log. Status classes:
400/413 the request is malformed; 401 the evidence does not authenticate (chain, signature,
nonce, one-time key); 403 authenticated but not allowed (policy, revocation, KEK state); 404 no
policy; 429 rate limited; 5xx the service or Key Vault failed (the client retries those).
"""

from __future__ import annotations

from typing import Any

from edb.errors import KeyReleaseError

# -- the request itself ---------------------------------------------------------------------------
MALFORMED_REQUEST = "KR_MALFORMED_REQUEST"
REQUEST_TOO_LARGE = "KR_REQUEST_TOO_LARGE"
EVIDENCE_MALFORMED = "KR_EVIDENCE_MALFORMED"
CHAIN_MALFORMED = "KR_CHAIN_MALFORMED"
# -- 1. device certificate chain -------------------------------------------------------------------
CHAIN_UNTRUSTED = "KR_CHAIN_UNTRUSTED"
CERT_EXPIRED = "KR_CERT_EXPIRED"
CERT_WRONG_PURPOSE = "KR_CERT_WRONG_PURPOSE"
# -- 2. evidence signature -------------------------------------------------------------------------
EVIDENCE_SIGNATURE = "KR_EVIDENCE_SIGNATURE"
DEVICE_MISMATCH = "KR_DEVICE_MISMATCH"
# -- per-device rate limit (after the device is authenticated) ------------------------------------
RATE_LIMITED = "KR_RATE_LIMITED"
# -- 3. nonce --------------------------------------------------------------------------------------
NONCE_UNKNOWN = "KR_NONCE_UNKNOWN"
NONCE_EXPIRED = "KR_NONCE_EXPIRED"
NONCE_REPLAYED = "KR_NONCE_REPLAYED"
#: the shared spent-nonce store did not answer (or failed): nothing released, the client retries
NONCE_STORE_UNAVAILABLE = "KR_NONCE_STORE_UNAVAILABLE"
# -- 4. one-time key -------------------------------------------------------------------------------
ONE_TIME_KEY_MISMATCH = "KR_ONE_TIME_KEY_MISMATCH"
# -- the package: authenticated manifest and its binding to the evidence -----------------------------
MANIFEST_INVALID = "KR_MANIFEST_INVALID"
MANIFEST_UNTRUSTED = "KR_MANIFEST_UNTRUSTED"
PACKAGE_MISMATCH = "KR_PACKAGE_MISMATCH"
PACKAGE_EXPIRED = "KR_PACKAGE_EXPIRED"
TARGET_MISMATCH = "KR_TARGET_MISMATCH"
# -- 5. policy -------------------------------------------------------------------------------------
POLICY_NOT_FOUND = "KR_POLICY_NOT_FOUND"
POLICY_INVALID = "KR_POLICY_INVALID"
DEVICE_NOT_ALLOWED = "KR_DEVICE_NOT_ALLOWED"
DEVICE_CLASS_NOT_ALLOWED = "KR_DEVICE_CLASS_NOT_ALLOWED"
TEE_SVN_TOO_LOW = "KR_TEE_SVN_TOO_LOW"
MEASUREMENT_NOT_ALLOWED = "KR_MEASUREMENT_NOT_ALLOWED"
PACKAGE_SVN_TOO_LOW = "KR_PACKAGE_SVN_TOO_LOW"
PACKAGE_REVOKED = "KR_PACKAGE_REVOKED"
# -- 6. Key Vault unwrapKey -------------------------------------------------------------------------
KEK_NOT_ALLOWED = "KR_KEK_NOT_ALLOWED"
KEK_DISABLED = "KR_KEK_DISABLED"
KEK_NOT_FOUND = "KR_KEK_NOT_FOUND"
UNWRAP_REJECTED = "KR_UNWRAP_REJECTED"
KEYVAULT_UNAVAILABLE = "KR_KEYVAULT_UNAVAILABLE"
KEYVAULT_ERROR = "KR_KEYVAULT_ERROR"
# -- service state ---------------------------------------------------------------------------------
BUSY = "KR_BUSY"
INTERNAL = "KR_INTERNAL"
# -- legacy wrap contract ---------------------------------------------------------------------------
LEGACY_DISABLED = "KR_LEGACY_DISABLED"
LEGACY_UNAUTHORIZED = "KR_LEGACY_UNAUTHORIZED"
LEGACY_BAD_PUBLIC_KEY = "KR_LEGACY_BAD_PUBLIC_KEY"
LEGACY_KEY_NOT_FOUND = "KR_LEGACY_KEY_NOT_FOUND"
LEGACY_BAD_KEY_NAME = "KR_LEGACY_BAD_KEY_NAME"
LEGACY_NOT_CLASS_KEY = "KR_LEGACY_NOT_CLASS_KEY"

OK = "KR_OK"

STATUS: dict[str, int] = {
    MALFORMED_REQUEST: 400, REQUEST_TOO_LARGE: 413, EVIDENCE_MALFORMED: 400, CHAIN_MALFORMED: 400,
    CHAIN_UNTRUSTED: 401, CERT_EXPIRED: 401, CERT_WRONG_PURPOSE: 401,
    EVIDENCE_SIGNATURE: 401, DEVICE_MISMATCH: 401,
    RATE_LIMITED: 429,
    NONCE_UNKNOWN: 401, NONCE_EXPIRED: 401, NONCE_REPLAYED: 401, NONCE_STORE_UNAVAILABLE: 503,
    ONE_TIME_KEY_MISMATCH: 401,
    MANIFEST_INVALID: 400, MANIFEST_UNTRUSTED: 403, PACKAGE_MISMATCH: 403, PACKAGE_EXPIRED: 403,
    TARGET_MISMATCH: 403,
    POLICY_NOT_FOUND: 404, POLICY_INVALID: 500,
    DEVICE_NOT_ALLOWED: 403, DEVICE_CLASS_NOT_ALLOWED: 403, TEE_SVN_TOO_LOW: 403, MEASUREMENT_NOT_ALLOWED: 403,
    PACKAGE_SVN_TOO_LOW: 403, PACKAGE_REVOKED: 403,
    KEK_NOT_ALLOWED: 403, KEK_DISABLED: 403, KEK_NOT_FOUND: 403, UNWRAP_REJECTED: 403,
    KEYVAULT_UNAVAILABLE: 503, KEYVAULT_ERROR: 502,
    BUSY: 503, INTERNAL: 500,
    LEGACY_DISABLED: 404, LEGACY_UNAUTHORIZED: 401, LEGACY_BAD_PUBLIC_KEY: 400, LEGACY_KEY_NOT_FOUND: 404,
    LEGACY_BAD_KEY_NAME: 400, LEGACY_NOT_CLASS_KEY: 403,
}


class Denied(KeyReleaseError):
    """A request the service refuses (or cannot serve), with its code, HTTP status and Retry-After."""

    def __init__(self, code: str, message: str, *, retry_after: int | None = None, **details: Any) -> None:
        if code not in STATUS:
            raise ValueError(f"unknown key release code {code}")
        super().__init__(message, code=code, **details)
        self.status = STATUS[code]
        self.retry_after = retry_after
