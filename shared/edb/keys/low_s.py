"""One encoding per ECDSA P-256 signature: low s, canonical DER.

ECDSA is malleable: if (r, s) verifies, so does (r, n - s). Packages are identified by their
manifest digest, never by signature bytes, so this changes no decision today; still, exactly one
signature encoding is valid here, so nothing downstream (caches, logs, dedup) can be fooled by a
second one. Signers normalise after signing (:func:`normalize_low_s`), verifiers refuse anything else
(:func:`is_canonical_low_s`).
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

#: Order of the P-256 group.
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
P256_HALF_N = P256_N // 2


def is_canonical_low_s(signature: bytes) -> bool:
    """DER ``ECDSA-Sig-Value`` in its one canonical encoding with 0 < r < n and 0 < s <= n/2."""
    try:
        r, s = decode_dss_signature(signature)
    except ValueError:
        return False
    return 0 < r < P256_N and 0 < s <= P256_HALF_N and encode_dss_signature(r, s) == signature


def normalize_low_s(signature: bytes) -> bytes:
    """The low-s, canonical DER form of a DER signature (s > n/2 becomes n - s)."""
    r, s = decode_dss_signature(signature)
    return encode_dss_signature(r, P256_N - s if s > P256_HALF_N else s)
