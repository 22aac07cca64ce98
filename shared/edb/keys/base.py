"""Key provider interfaces: a KEK that wraps/unwraps package DEKs, and a publisher signer.

Implementations: local PEM files (:mod:`edb.keys.local`) and Azure Key Vault
(:mod:`edb.keys.azure_keyvault`). The package library depends only on these protocols.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from cryptography import x509

from edb.keys.errors import ALGORITHM, INVALID_KEY, KeyProviderError

#: The only key-wrapping algorithm of manifest v2: RSAES-OAEP with SHA-256 and MGF1-SHA-256
#: (Key Vault's ``RSA-OAEP-256``).
WRAP_ALG = "RSA-OAEP-256"
#: The only signature algorithm: ECDSA P-256 with SHA-256 (DER-encoded signature in the package).
SIGN_ALG = "ES256"
DEK_BYTES = 32
MAX_KID_CHARS = 512
MAX_WRAPPED_BYTES = 1024  # RSA-8192


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str, *, max_bytes: int) -> bytes:
    if not isinstance(text, str) or len(text) > (max_bytes * 4) // 3 + 4:
        raise ValueError("base64url value too long")
    if "=" in text or any(c in text for c in "+/ \n\r\t"):
        raise ValueError("not unpadded base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64url") from exc


@dataclass(frozen=True)
class WrappedKey:
    """A DEK wrapped under a KEK: ``{"kid", "alg": "RSA-OAEP-256", "value": <base64url>}`` in JSON."""

    kid: str
    alg: str
    value: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.kid, str) or not 0 < len(self.kid) <= MAX_KID_CHARS or not self.kid.isprintable():
            raise KeyProviderError("kid must be 1..512 printable characters", code=INVALID_KEY)
        if self.alg != WRAP_ALG:
            raise KeyProviderError(f"wrap algorithm must be {WRAP_ALG}", code=ALGORITHM)
        if not isinstance(self.value, bytes) or not 0 < len(self.value) <= MAX_WRAPPED_BYTES:
            raise KeyProviderError("wrapped key value has an impossible size", code=INVALID_KEY)

    def to_json(self) -> dict[str, str]:
        return {"kid": self.kid, "alg": self.alg, "value": b64url(self.value)}

    @classmethod
    def from_json(cls, data: Any) -> WrappedKey:
        if not isinstance(data, dict) or set(data) != {"kid", "alg", "value"}:
            raise ValueError("wrapped key must be an object with exactly kid, alg, value")
        kid, alg, value = data["kid"], data["alg"], data["value"]
        if not isinstance(kid, str) or not isinstance(alg, str) or not isinstance(value, str):
            raise ValueError("wrapped key members must be strings")
        try:
            return cls(kid=kid, alg=alg, value=b64url_decode(value, max_bytes=MAX_WRAPPED_BYTES))
        except KeyProviderError as exc:
            raise ValueError(exc.message) from exc


@runtime_checkable
class KekProvider(Protocol):
    """A key-encryption key. ``wrap`` reports the exact (versioned) kid it used."""

    @property
    def kid(self) -> str: ...

    def wrap(self, dek: bytes) -> WrappedKey: ...

    def unwrap(self, wrapped: WrappedKey) -> bytes: ...


@runtime_checkable
class Signer(Protocol):
    """A publisher signing key (ECDSA P-256) with its certificate chain."""

    def sign_digest(self, digest: bytes) -> bytes:
        """ECDSA P-256 signature over a SHA-256 ``digest`` (32 bytes), DER-encoded."""
        ...

    def certificate_chain(self) -> list[x509.Certificate]:
        """Leaf first, then intermediates; the root is not included (the verifier pins it)."""
        ...


def check_dek(dek: bytes) -> None:
    if not isinstance(dek, bytes | bytearray) or len(dek) != DEK_BYTES:
        raise KeyProviderError("a DEK is exactly 32 bytes", code=INVALID_KEY)


def check_digest(digest: bytes) -> None:
    if not isinstance(digest, bytes) or len(digest) != 32:
        raise KeyProviderError("sign_digest takes a 32-byte SHA-256 digest", code=INVALID_KEY)
