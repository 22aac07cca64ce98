"""Device-side key release client (Contract 3): nonce -> evidence (from the TEE) -> released key.

    client = KeyReleaseClient("https://127.0.0.8:7071", ca_bundle=".edb/ca/ca.pem")
    jwe = client.release(PackageRef("digits", "1.2.0"), signed_manifest, tee_evidence_for_nonce)

Retries 5xx and network failures with jittered exponential backoff (a fresh nonce and evidence per
attempt), never retries a denial, and raises :class:`ReleaseFailed` (a ``KeyReleaseError``) with
the service's ``KR_*`` code, the HTTP status, ``retryable`` and ``retry_after``.

LEGACY (weaker, v1 packages only): :class:`LegacyWrapClient` calls the original tools' ``/api/WrapKey``.
"""

from edb.keyrelease.client import (
    EvidenceLike,
    KeyReleaseClient,
    PackageRef,
    ReleaseFailed,
    RetryPolicy,
    SignedManifestLike,
)
from edb.keyrelease.legacy import LegacyWrapClient

__all__ = ["EvidenceLike", "KeyReleaseClient", "LegacyWrapClient", "PackageRef", "ReleaseFailed", "RetryPolicy",
           "SignedManifestLike"]
