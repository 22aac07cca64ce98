"""A data-encryption key wrapped to the TEE's one-time key.

The key release service returns the package DEK as a compact JWE (RFC 7516):
``alg`` ECDH-ES+A256KW, ``enc`` A256GCM, recipient = the TEE's one-time P-256 public key (made for
this install and bound into the evidence by its hash). The plaintext is JSON binding the key to the
package it is for, so a key released for one package cannot be fed to another install::

    {"dek": "<base64url 32 bytes>", "package": "<package id>", "version": "<version>", "kid": "<KEK kid>"}

Only the holder of the one-time private key (the TEE) can open it. Algorithms are pinned on both
sides; nothing else is accepted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec
from jwcrypto import jwe, jwk
from jwcrypto.common import JWException

from edb.attestation.errors import KEYWRAP_BINDING, KEYWRAP_MALFORMED, KEYWRAP_WRONG_KEY, AttestationError
from edb.attestation.evidence import b64url, b64url_decode

JWE_ALG = "ECDH-ES+A256KW"
JWE_ENC = "A256GCM"
MAX_JWE_CHARS = 8 * 1024


@dataclass(frozen=True)
class ReleasedKey:
    dek: bytes
    package_id: str
    version: str
    kid: str

    def __repr__(self) -> str:  # never print key material
        return f"ReleasedKey(package_id={self.package_id!r}, version={self.version!r}, kid={self.kid!r})"


def public_jwk(public_key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The one-time public key as a JWK dict (what the installer sends to the service)."""
    key = jwk.JWK.from_pyca(public_key)
    data = json.loads(key.export_public())
    return {k: data[k] for k in ("kty", "crv", "x", "y")}


def load_public_jwk(data: object) -> ec.EllipticCurvePublicKey:
    if not isinstance(data, dict) or data.get("kty") != "EC" or data.get("crv") != "P-256":
        raise AttestationError("one-time key must be an EC P-256 JWK", code=KEYWRAP_MALFORMED)
    if set(data) - {"kty", "crv", "x", "y", "kid", "use", "alg"}:
        raise AttestationError("one-time key JWK has unexpected members", code=KEYWRAP_MALFORMED)
    try:
        key = jwk.JWK(**{k: data[k] for k in ("kty", "crv", "x", "y")})
        pub = key.get_op_key("wrapKey")
    except (JWException, ValueError, KeyError, TypeError) as exc:
        raise AttestationError("one-time key JWK is invalid", code=KEYWRAP_MALFORMED) from exc
    if not isinstance(pub, ec.EllipticCurvePublicKey):
        raise AttestationError("one-time key JWK is invalid", code=KEYWRAP_MALFORMED)
    return pub


def wrap_to_one_time_key(
    dek: bytes, one_time_public_key: ec.EllipticCurvePublicKey, *, package_id: str, version: str, kid: str
) -> str:
    """Service side: wrap ``dek`` so only the TEE holding the one-time private key can open it."""
    if len(dek) != 32:
        raise AttestationError("DEK must be 32 bytes", code=KEYWRAP_MALFORMED)
    body = json.dumps({"dek": b64url(dek), "package": package_id, "version": version, "kid": kid})
    token = jwe.JWE(
        body.encode(),
        protected=json.dumps({"alg": JWE_ALG, "enc": JWE_ENC}),
        algs=[JWE_ALG, JWE_ENC],
    )
    token.add_recipient(jwk.JWK.from_pyca(one_time_public_key))
    return str(token.serialize(compact=True))


def open_released_key(
    token: str,
    one_time_private_key: ec.EllipticCurvePrivateKey,
    *,
    package_id: str,
    version: str,
) -> ReleasedKey:
    """TEE side: decrypt and check the binding to the package being installed."""
    if not isinstance(token, str) or len(token) > MAX_JWE_CHARS or token.count(".") != 4:
        raise AttestationError("released key is not a compact JWE of sane size", code=KEYWRAP_MALFORMED)
    try:
        header = json.loads(b64url_decode(token.split(".", 1)[0]))
    except (ValueError, UnicodeDecodeError) as exc:
        raise AttestationError("released key header is not JSON", code=KEYWRAP_MALFORMED) from exc
    if not isinstance(header, dict) or header.get("alg") != JWE_ALG or header.get("enc") != JWE_ENC:
        raise AttestationError("released key uses an algorithm other than the pinned ones", code=KEYWRAP_MALFORMED)
    parsed = jwe.JWE(algs=[JWE_ALG, JWE_ENC])
    try:
        parsed.deserialize(token, key=jwk.JWK.from_pyca(one_time_private_key))
        body = json.loads(parsed.payload)
    except (JWException, ValueError, TypeError) as exc:
        raise AttestationError(
            "released key does not open with this one-time key", code=KEYWRAP_WRONG_KEY
        ) from exc
    if not isinstance(body, dict):
        raise AttestationError("released key body is not an object", code=KEYWRAP_MALFORMED)
    try:
        dek = b64url_decode(body["dek"])
        released = ReleasedKey(dek, str(body["package"]), str(body["version"]), str(body["kid"]))
    except (KeyError, ValueError, TypeError) as exc:
        raise AttestationError("released key body is incomplete", code=KEYWRAP_MALFORMED) from exc
    if len(released.dek) != 32:
        raise AttestationError("released DEK is not 32 bytes", code=KEYWRAP_MALFORMED)
    if released.package_id != package_id or released.version != version:
        raise AttestationError(
            "released key is bound to another package or version", code=KEYWRAP_BINDING
        )
    return released
