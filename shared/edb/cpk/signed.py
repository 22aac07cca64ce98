"""The signed manifest: manifest bytes + publisher signature + signer chain, verifiable on its own.

This is what the key release service receives (no payload). The signature is ECDSA P-256 over
SHA-256 of the exact manifest bytes, DER-encoded (``openssl dgst -sha256 -verify`` checks it).
The chain stream (stream 2) encodes the certificates leaf first, each as ``uint32_le(len) || DER``;
the manifest records SHA-256 of those bytes (``signer.chain-sha256``), so the chain is bound too.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from edb.cpk.errors import (
    DIGEST_MISMATCH,
    MANIFEST_INVALID,
    SIGNATURE_INVALID,
    TOO_LARGE,
    UNTRUSTED_SIGNER,
    PackageError,
    package_error,
)
from edb.cpk.limits import DEFAULT_LIMITS, Limits
from edb.cpk.manifest_v2 import ManifestV2, parse_manifest_v2
from edb.keys.low_s import is_canonical_low_s
from edb.pki.chain import verify_chain
from edb.pki.errors import CertificateError
from edb.pki.oids import PUBLISHER_SIGNING_EKU

_LEN = struct.Struct("<I")


def encode_chain(ders: Sequence[bytes]) -> bytes:
    return b"".join(_LEN.pack(len(der)) + der for der in ders)


def decode_chain(data: bytes, limits: Limits = DEFAULT_LIMITS) -> tuple[bytes, ...]:
    if len(data) > limits.max_chain_bytes:
        raise package_error(TOO_LARGE, f"signer chain of {len(data)} bytes exceeds {limits.max_chain_bytes}")
    out: list[bytes] = []
    position = 0
    while position < len(data):
        if len(out) == limits.max_chain_certs:
            raise package_error(TOO_LARGE, f"signer chain holds more than {limits.max_chain_certs} certificates")
        if position + 4 > len(data):
            raise package_error(MANIFEST_INVALID, "signer chain entry length is cut short")
        (length,) = _LEN.unpack_from(data, position)
        position += 4
        if length == 0 or position + length > len(data):
            raise package_error(MANIFEST_INVALID, "signer chain entry length is out of range")
        out.append(data[position : position + length])
        position += length
    if not out:
        raise package_error(MANIFEST_INVALID, "signer chain is empty")
    return tuple(out)


@dataclass(frozen=True)
class SignedManifest:
    """Everything needed to authenticate a v2 manifest without the payload."""

    manifest_bytes: bytes
    signature: bytes
    chain: tuple[bytes, ...]  # DER certificates, leaf first

    @property
    def manifest_sha256(self) -> str:
        """Hex SHA-256 of the manifest bytes: the evidence's ``package.manifestSha256``."""
        return hashlib.sha256(self.manifest_bytes).hexdigest()

    @property
    def chain_bytes(self) -> bytes:
        return encode_chain(self.chain)

    def certificates(self) -> list[x509.Certificate]:
        try:
            return [x509.load_der_x509_certificate(der) for der in self.chain]
        except ValueError as exc:
            raise package_error(UNTRUSTED_SIGNER, "signer chain holds a malformed certificate") from exc

    def to_json(self) -> dict[str, Any]:
        """The ``manifest`` member of the key release request (Contract 3): standard base64."""
        return {
            "json": base64.b64encode(self.manifest_bytes).decode("ascii"),
            "signature": base64.b64encode(self.signature).decode("ascii"),
            "chain": [base64.b64encode(der).decode("ascii") for der in self.chain],
        }

    @classmethod
    def from_json(cls, data: Any, limits: Limits = DEFAULT_LIMITS) -> SignedManifest:
        """Decode the Contract 3 form with size bounds; CPK_MANIFEST_INVALID / CPK_TOO_LARGE."""
        if not isinstance(data, dict) or set(data) != {"json", "signature", "chain"}:
            raise package_error(MANIFEST_INVALID, "signed manifest must have exactly json, signature, chain")
        chain = data["chain"]
        if not isinstance(chain, list) or not chain:
            raise package_error(MANIFEST_INVALID, "signed manifest chain must be a non-empty list")
        if len(chain) > limits.max_chain_certs:
            raise package_error(TOO_LARGE, f"signer chain holds more than {limits.max_chain_certs} certificates")
        manifest = _b64(data["json"], limits.max_manifest_bytes, "json")
        signature = _b64(data["signature"], limits.max_signature_bytes, "signature")
        ders = tuple(_b64(item, limits.max_chain_bytes, "chain") for item in chain)
        if sum(len(d) + 4 for d in ders) > limits.max_chain_bytes:
            raise package_error(TOO_LARGE, "signer chain too large")
        return cls(manifest_bytes=manifest, signature=signature, chain=ders)


def _b64(value: Any, max_bytes: int, what: str) -> bytes:
    if not isinstance(value, str):
        raise package_error(MANIFEST_INVALID, f"signed manifest {what} must be a base64 string")
    if len(value) > (max_bytes * 4) // 3 + 4:
        raise package_error(TOO_LARGE, f"signed manifest {what} exceeds {max_bytes} bytes")
    try:
        out = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise package_error(MANIFEST_INVALID, f"signed manifest {what} is not base64") from exc
    if not out:
        raise package_error(MANIFEST_INVALID, f"signed manifest {what} is empty")
    if len(out) > max_bytes:  # the length check above has slack for padding: bound the bytes themselves
        raise package_error(TOO_LARGE, f"signed manifest {what} exceeds {max_bytes} bytes")
    return out


@dataclass(frozen=True)
class VerifiedSigner:
    leaf: x509.Certificate
    path: tuple[x509.Certificate, ...]  # leaf .. root

    @property
    def subject(self) -> str:
        return self.leaf.subject.rfc4514_string()


def authenticate_manifest(
    signed: SignedManifest, trust_roots: Sequence[x509.Certificate], now: dt.datetime, limits: Limits = DEFAULT_LIMITS
) -> tuple[ManifestV2, VerifiedSigner]:
    """:func:`verify_signed_manifest` that also returns who signed."""
    if len(signed.manifest_bytes) > limits.max_manifest_bytes:
        raise package_error(TOO_LARGE, "manifest exceeds the configured limit")
    if len(signed.signature) > limits.max_signature_bytes:
        raise package_error(TOO_LARGE, "signature exceeds the configured limit")
    if not signed.chain or len(signed.chain) > limits.max_chain_certs:
        raise package_error(UNTRUSTED_SIGNER, f"signer chain must hold 1..{limits.max_chain_certs} certificates")
    certs = signed.certificates()
    try:
        path = verify_chain(certs[0], certs[1:], trust_roots, now=now, required_eku=PUBLISHER_SIGNING_EKU)
    except CertificateError as exc:
        raise PackageError(
            f"publisher certificate refused: {exc.message}", code=UNTRUSTED_SIGNER, pki_code=exc.code
        ) from exc
    public_key = certs[0].public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(public_key.curve, ec.SECP256R1):
        raise package_error(UNTRUSTED_SIGNER, "publisher key must be EC P-256")
    if not is_canonical_low_s(signed.signature):
        raise package_error(SIGNATURE_INVALID, "publisher signature is not canonical low-s DER (ECDSA malleability)")
    try:
        public_key.verify(signed.signature, signed.manifest_bytes, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError) as exc:
        raise package_error(SIGNATURE_INVALID, "publisher signature over the manifest does not verify") from exc
    manifest = parse_manifest_v2(signed.manifest_bytes, limits)
    if hashlib.sha256(signed.chain_bytes).hexdigest() != manifest.signer_chain_sha256:
        raise package_error(DIGEST_MISMATCH, "signer chain differs from the one the manifest records")
    return manifest, VerifiedSigner(leaf=certs[0], path=tuple(path))


def verify_signed_manifest(
    signed: SignedManifest,
    trust_roots: Sequence[x509.Certificate],
    now: dt.datetime,
    *,
    limits: Limits = DEFAULT_LIMITS,
) -> ManifestV2:
    """Chain to a pinned publisher root (validity at ``now``, codeSigning EKU, digitalSignature),
    ECDSA P-256 signature over the manifest bytes, strict parse, chain digest. Expiry, target and
    rollback are policy: see :func:`edb.cpk.policy.check_policy` / :func:`edb.cpk.verify_package`."""
    return authenticate_manifest(signed, trust_roots, now, limits)[0]
