"""Local PEM-file key providers, for development and offline builds.

- :class:`LocalKek`: an RSA key (3072 bits by default from ``edb pki init``); wrapping needs only the
  public key, unwrapping the private key. Its kid is ``local:`` + the first 16 bytes (hex) of the
  SHA-256 of its SubjectPublicKeyInfo DER, so a wrapped DEK names the key it needs.
- :class:`LocalSigner`: an EC P-256 private key and its certificate chain (leaf first).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from edb.keys.base import WRAP_ALG, WrappedKey, check_dek, check_digest
from edb.keys.errors import INVALID_KEY, SIGNER_MISMATCH, UNWRAP_FAILED, WRONG_KID, KeyProviderError
from edb.keys.low_s import normalize_low_s

MIN_RSA_BITS = 2048
MAX_KEY_FILE_BYTES = 64 * 1024


def oaep_sha256() -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def local_kid(public_key: rsa.RSAPublicKey) -> str:
    spki = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "local:" + hashlib.sha256(spki).hexdigest()[:32]


def _read_key_file(path: str | Path) -> bytes:
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise KeyProviderError(f"cannot read key file {path}: {exc.strerror}", code=INVALID_KEY) from exc
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyProviderError(f"key file {path} is too large", code=INVALID_KEY)
    return data


class LocalKek:
    """A KEK held in a PEM file (private key: wrap and unwrap; public key only: wrap)."""

    def __init__(self, public_key: rsa.RSAPublicKey, private_key: rsa.RSAPrivateKey | None = None) -> None:
        if public_key.key_size < MIN_RSA_BITS:
            raise KeyProviderError(f"KEK must be RSA >= {MIN_RSA_BITS} bits", code=INVALID_KEY)
        self._public = public_key
        self._private = private_key
        self._kid = local_kid(public_key)

    @classmethod
    def generate(cls, bits: int = 3072) -> LocalKek:
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        return cls(key.public_key(), key)

    @classmethod
    def from_pem(cls, data: bytes) -> LocalKek:
        try:
            if b"PRIVATE KEY" in data:
                key = serialization.load_pem_private_key(data, password=None)
                if isinstance(key, rsa.RSAPrivateKey):
                    return cls(key.public_key(), key)
            else:
                pub = serialization.load_pem_public_key(data)
                if isinstance(pub, rsa.RSAPublicKey):
                    return cls(pub)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise KeyProviderError("KEK file is not an unencrypted PEM RSA key", code=INVALID_KEY) from exc
        raise KeyProviderError("KEK must be an RSA key", code=INVALID_KEY)

    @classmethod
    def from_file(cls, path: str | Path) -> LocalKek:
        return cls.from_pem(_read_key_file(path))

    @property
    def kid(self) -> str:
        return self._kid

    @property
    def can_unwrap(self) -> bool:
        return self._private is not None

    def public_pem(self) -> bytes:
        return self._public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def private_pem(self) -> bytes:
        if self._private is None:
            raise KeyProviderError("this KEK holds no private key", code=INVALID_KEY)
        return self._private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def wrap(self, dek: bytes) -> WrappedKey:
        check_dek(dek)
        return WrappedKey(kid=self._kid, alg=WRAP_ALG, value=self._public.encrypt(bytes(dek), oaep_sha256()))

    def unwrap(self, wrapped: WrappedKey) -> bytes:
        if wrapped.kid != self._kid:
            raise KeyProviderError(f"DEK is wrapped under {wrapped.kid}, this KEK is {self._kid}", code=WRONG_KID)
        if self._private is None:
            raise KeyProviderError("this KEK holds only a public key; cannot unwrap", code=INVALID_KEY)
        try:
            dek = self._private.decrypt(wrapped.value, oaep_sha256())
        except ValueError as exc:
            raise KeyProviderError("wrapped DEK does not unwrap under this KEK", code=UNWRAP_FAILED) from exc
        check_dek(dek)
        return dek

    def __repr__(self) -> str:
        return f"LocalKek(kid={self._kid!r}, private={self._private is not None})"


class LocalSigner:
    """An ECDSA P-256 publisher key in memory (from a PEM file) and its certificate chain."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey, chain: Sequence[x509.Certificate]) -> None:
        if not isinstance(private_key, ec.EllipticCurvePrivateKey) or not isinstance(private_key.curve, ec.SECP256R1):
            raise KeyProviderError("publisher signing key must be EC P-256", code=INVALID_KEY)
        if not chain:
            raise KeyProviderError("a signer needs its certificate chain (leaf first)", code=INVALID_KEY)
        leaf_key = chain[0].public_key()
        ours = private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        theirs = leaf_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if ours != theirs:
            raise KeyProviderError("the leaf certificate is not for this signing key", code=SIGNER_MISMATCH)
        self._key = private_key
        self._chain = list(chain)

    @classmethod
    def from_files(cls, key_path: str | Path, chain_path: str | Path) -> LocalSigner:
        from edb.pki.certs import load_pem_certificates_file
        from edb.pki.errors import CertificateError

        try:
            key = serialization.load_pem_private_key(_read_key_file(key_path), password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise KeyProviderError("signing key file is not an unencrypted PEM private key", code=INVALID_KEY) from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise KeyProviderError("publisher signing key must be EC P-256", code=INVALID_KEY)
        try:
            chain = load_pem_certificates_file(chain_path)
        except CertificateError as exc:
            raise KeyProviderError(f"signer chain: {exc.message}", code=INVALID_KEY) from exc
        return cls(key, chain)

    def sign_digest(self, digest: bytes) -> bytes:
        check_digest(digest)
        return normalize_low_s(self._key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256()))))

    def certificate_chain(self) -> list[x509.Certificate]:
        return list(self._chain)

    def __repr__(self) -> str:
        return f"LocalSigner(subject={self._chain[0].subject.rfc4514_string()!r})"
