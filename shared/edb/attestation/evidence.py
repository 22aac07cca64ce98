"""Attestation evidence: what the TEE states about itself, signed by the device attestation key.

Wire form: a compact JWS (RFC 7515), ``alg`` ES256 only, ``typ`` ``edb-evidence+jws``. The device
certificate chain travels next to it (as base64 DER, leaf first), not inside it: the verifier
builds trust from the chain and the manufacturer root, then checks this signature with the leaf key.

Claims (JSON, all required unless marked optional)::

    {
      "ver": 1,
      "iss": "edb-tee-sim",
      "sub": "<device id>",                       # must equal the device certificate's CN
      "iat": <unix seconds>,
      "nonce": "<the key release service's nonce, verbatim, <= 128 chars>",
      "tee": {"measurement": "<64 hex>", "svn": <int >= 0>, "impl": "<implementation name>"},
      "otk": "<base64url(SHA-256(SubjectPublicKeyInfo DER of the one-time public key))>",
      "package": {                                 # optional: present for installs
        "id": "<package id>", "version": "<version>", "securityVersion": <int>,
        "manifestSha256": "<64 hex: SHA-256 of the signed manifest bytes>"
      },
      "userData": "<base64url, <= 1024 bytes decoded>"   # optional
    }

This module has no I/O: it encodes, signs, parses and checks signatures. Trust decisions (chain,
nonce freshness, policy) belong to the key release service.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwcrypto import jwk, jws
from jwcrypto.common import JWException

from edb.attestation.errors import (
    EVIDENCE_MALFORMED,
    EVIDENCE_SIGNATURE,
    NONCE_TOO_LARGE,
    AttestationError,
)

EVIDENCE_TYP = "edb-evidence+jws"
EVIDENCE_VERSION = 1
MAX_NONCE_CHARS = 128
MAX_USER_DATA_BYTES = 1024
MAX_EVIDENCE_CHARS = 16 * 1024


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    if not isinstance(text, str) or len(text) > 1 << 20:
        raise ValueError("not a base64url string")
    pad = "=" * (-len(text) % 4)
    return base64.urlsafe_b64decode(text + pad)


def public_key_hash(public_key: ec.EllipticCurvePublicKey) -> str:
    """base64url SHA-256 of the SubjectPublicKeyInfo DER: the ``otk`` claim."""
    spki = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return b64url(hashlib.sha256(spki).digest())


@dataclass(frozen=True)
class PackageBinding:
    package_id: str
    version: str
    security_version: int
    manifest_sha256: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.package_id,
            "version": self.version,
            "securityVersion": self.security_version,
            "manifestSha256": self.manifest_sha256,
        }


@dataclass(frozen=True)
class EvidenceClaims:
    device_id: str
    issued_at: int
    nonce: str
    tee_measurement: str
    tee_svn: int
    one_time_key_hash: str
    tee_impl: str = "edb-tee-sim"
    package: PackageBinding | None = None
    user_data: bytes | None = None
    issuer: str = "edb-tee-sim"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        check_nonce(self.nonce)
        out: dict[str, Any] = {
            "ver": EVIDENCE_VERSION,
            "iss": self.issuer,
            "sub": self.device_id,
            "iat": self.issued_at,
            "nonce": self.nonce,
            "tee": {"measurement": self.tee_measurement, "svn": self.tee_svn, "impl": self.tee_impl},
            "otk": self.one_time_key_hash,
        }
        if self.package is not None:
            out["package"] = self.package.to_json()
        if self.user_data is not None:
            if len(self.user_data) > MAX_USER_DATA_BYTES:
                raise AttestationError("user data larger than 1024 bytes", code=EVIDENCE_MALFORMED)
            out["userData"] = b64url(self.user_data)
        return out


def check_nonce(nonce: object) -> str:
    if not isinstance(nonce, str) or not nonce:
        raise AttestationError("nonce must be a non-empty string", code=EVIDENCE_MALFORMED)
    if len(nonce) > MAX_NONCE_CHARS:
        raise AttestationError(f"nonce longer than {MAX_NONCE_CHARS} characters", code=NONCE_TOO_LARGE)
    return nonce


def sign_evidence(claims: EvidenceClaims, attestation_key: ec.EllipticCurvePrivateKey) -> str:
    """Compact JWS over the canonical JSON of ``claims`` (used inside the TEE, and by tests)."""
    if not isinstance(attestation_key.curve, ec.SECP256R1):
        raise AttestationError("attestation key must be P-256", code=EVIDENCE_MALFORMED)
    payload = json.dumps(claims.to_json(), separators=(",", ":"), sort_keys=True).encode()
    token = jws.JWS(payload)
    token.add_signature(
        jwk.JWK.from_pyca(attestation_key),
        alg="ES256",
        protected=json.dumps({"alg": "ES256", "typ": EVIDENCE_TYP}),
    )
    return str(token.serialize(compact=True))


def verify_evidence(token: str, attestation_public_key: ec.EllipticCurvePublicKey) -> EvidenceClaims:
    """Check the ES256 signature with the (already trusted) leaf key, then parse strictly."""
    if not isinstance(token, str) or len(token) > MAX_EVIDENCE_CHARS or token.count(".") != 2:
        raise AttestationError("evidence is not a compact JWS of sane size", code=EVIDENCE_MALFORMED)
    try:
        header = json.loads(b64url_decode(token.split(".", 1)[0]))
    except (ValueError, UnicodeDecodeError) as exc:
        raise AttestationError("evidence header is not JSON", code=EVIDENCE_MALFORMED) from exc
    if not isinstance(header, dict) or header.get("alg") != "ES256" or header.get("typ") != EVIDENCE_TYP:
        raise AttestationError("evidence must be ES256 with typ edb-evidence+jws", code=EVIDENCE_MALFORMED)
    if set(header) - {"alg", "typ", "kid"}:
        raise AttestationError("unexpected evidence header parameters", code=EVIDENCE_MALFORMED)
    parsed = jws.JWS()
    try:
        parsed.deserialize(token)
        parsed.verify(jwk.JWK.from_pyca(attestation_public_key), alg="ES256")
    except (JWException, ValueError, TypeError) as exc:
        raise AttestationError("evidence signature does not verify", code=EVIDENCE_SIGNATURE) from exc
    return parse_claims(parsed.payload)


def unverified_claims(token: str) -> EvidenceClaims:
    """Parse without checking the signature: for logging and routing only, never for decisions."""
    if not isinstance(token, str) or len(token) > MAX_EVIDENCE_CHARS or token.count(".") != 2:
        raise AttestationError("evidence is not a compact JWS of sane size", code=EVIDENCE_MALFORMED)
    try:
        return parse_claims(b64url_decode(token.split(".")[1]))
    except ValueError as exc:
        raise AttestationError("evidence payload is not base64url", code=EVIDENCE_MALFORMED) from exc


def parse_claims(payload: bytes) -> EvidenceClaims:
    def bad(why: str) -> AttestationError:
        return AttestationError(f"evidence claims invalid: {why}", code=EVIDENCE_MALFORMED)

    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad("not JSON") from exc
    if not isinstance(data, dict):
        raise bad("not an object")
    if data.get("ver") != EVIDENCE_VERSION:
        raise bad("unsupported version")
    tee = data.get("tee")
    if not isinstance(tee, dict):
        raise bad("tee")
    device_id, iss, otk = data.get("sub"), data.get("iss"), data.get("otk")
    iat, svn = data.get("iat"), tee.get("svn")
    measurement, impl = tee.get("measurement"), tee.get("impl")
    if not isinstance(device_id, str) or not 0 < len(device_id) <= 128:
        raise bad("sub")
    if not isinstance(iss, str) or not isinstance(impl, str):
        raise bad("iss/impl")
    if not isinstance(iat, int) or isinstance(iat, bool) or iat < 0:
        raise bad("iat")
    if not isinstance(svn, int) or isinstance(svn, bool) or svn < 0:
        raise bad("tee.svn")
    if not isinstance(measurement, str) or len(measurement) != 64:
        raise bad("tee.measurement")
    try:
        bytes.fromhex(measurement)
    except ValueError as exc:
        raise bad("tee.measurement") from exc
    if not isinstance(otk, str) or len(otk) != 43:
        raise bad("otk")
    nonce = check_nonce(data.get("nonce"))
    package = None
    if "package" in data:
        p = data["package"]
        if not isinstance(p, dict):
            raise bad("package")
        pid, ver, psvn, msha = p.get("id"), p.get("version"), p.get("securityVersion"), p.get("manifestSha256")
        if not (isinstance(pid, str) and isinstance(ver, str) and isinstance(msha, str) and len(msha) == 64):
            raise bad("package")
        if not isinstance(psvn, int) or isinstance(psvn, bool) or psvn < 0:
            raise bad("package.securityVersion")
        package = PackageBinding(pid, ver, psvn, msha)
    user_data = None
    if "userData" in data:
        try:
            user_data = b64url_decode(data["userData"])
        except (ValueError, TypeError) as exc:
            raise bad("userData") from exc
        if len(user_data) > MAX_USER_DATA_BYTES:
            raise bad("userData too large")
    return EvidenceClaims(
        device_id=device_id,
        issued_at=iat,
        nonce=nonce,
        tee_measurement=measurement,
        tee_svn=svn,
        one_time_key_hash=otk,
        tee_impl=impl,
        package=package,
        user_data=user_data,
        issuer=iss,
    )
