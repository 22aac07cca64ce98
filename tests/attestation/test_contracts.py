from __future__ import annotations

import json
import os
import time

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from edb.attestation import errors
from edb.attestation.errors import AttestationError
from edb.attestation.evidence import (
    EvidenceClaims,
    PackageBinding,
    b64url,
    b64url_decode,
    public_key_hash,
    sign_evidence,
    unverified_claims,
    verify_evidence,
)
from edb.attestation.keywrap import (
    load_public_jwk,
    open_released_key,
    public_jwk,
    wrap_to_one_time_key,
)


def _claims(otk: ec.EllipticCurvePrivateKey, nonce: str = "n-123") -> EvidenceClaims:
    return EvidenceClaims(
        device_id="dev-1",
        issued_at=int(time.time()),
        nonce=nonce,
        tee_measurement="ab" * 32,
        tee_svn=3,
        one_time_key_hash=public_key_hash(otk.public_key()),
        package=PackageBinding("digits", "1.0.0", 2, "cd" * 32),
        user_data=b"hello",
    )


def test_evidence_round_trip() -> None:
    device_key = ec.generate_private_key(ec.SECP256R1())
    otk = ec.generate_private_key(ec.SECP256R1())
    claims = _claims(otk)
    token = sign_evidence(claims, device_key)
    got = verify_evidence(token, device_key.public_key())
    assert got.device_id == "dev-1" and got.tee_svn == 3 and got.package == claims.package
    assert got.one_time_key_hash == public_key_hash(otk.public_key())
    assert got.user_data == b"hello"
    assert unverified_claims(token).nonce == "n-123"


def test_evidence_signed_by_other_key_refused() -> None:
    device_key = ec.generate_private_key(ec.SECP256R1())
    other = ec.generate_private_key(ec.SECP256R1())
    token = sign_evidence(_claims(other), other)
    with pytest.raises(AttestationError) as exc:
        verify_evidence(token, device_key.public_key())
    assert exc.value.code == errors.EVIDENCE_SIGNATURE


def test_evidence_payload_edit_refused() -> None:
    device_key = ec.generate_private_key(ec.SECP256R1())
    token = sign_evidence(_claims(device_key), device_key)
    head, payload, sig = token.split(".")
    data = json.loads(b64url_decode(payload))
    data["tee"]["svn"] = 99
    forged = ".".join([head, b64url(json.dumps(data).encode()), sig])
    with pytest.raises(AttestationError) as exc:
        verify_evidence(forged, device_key.public_key())
    assert exc.value.code == errors.EVIDENCE_SIGNATURE


def test_alg_none_and_other_algs_refused() -> None:
    device_key = ec.generate_private_key(ec.SECP256R1())
    token = sign_evidence(_claims(device_key), device_key)
    _, payload, _ = token.split(".")
    none_token = b64url(json.dumps({"alg": "none", "typ": "edb-evidence+jws"}).encode()) + "." + payload + "."
    with pytest.raises(AttestationError) as exc:
        verify_evidence(none_token, device_key.public_key())
    assert exc.value.code == errors.EVIDENCE_MALFORMED


def test_oversized_nonce_refused() -> None:
    device_key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(AttestationError) as exc:
        sign_evidence(_claims(device_key, nonce="x" * 129), device_key)
    assert exc.value.code == errors.NONCE_TOO_LARGE


def test_keywrap_round_trip_and_binding() -> None:
    otk = ec.generate_private_key(ec.SECP256R1())
    dek = os.urandom(32)
    pub = load_public_jwk(public_jwk(otk.public_key()))
    token = wrap_to_one_time_key(dek, pub, package_id="digits", version="1.0.0", kid="kv/kek/1")
    released = open_released_key(token, otk, package_id="digits", version="1.0.0")
    assert released.dek == dek and released.kid == "kv/kek/1"
    assert dek.hex() not in repr(released)
    with pytest.raises(AttestationError) as exc:
        open_released_key(token, otk, package_id="other", version="1.0.0")
    assert exc.value.code == errors.KEYWRAP_BINDING


def test_keywrap_for_another_one_time_key_refused() -> None:
    otk, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    token = wrap_to_one_time_key(os.urandom(32), other.public_key(), package_id="p", version="1", kid="k")
    with pytest.raises(AttestationError) as exc:
        open_released_key(token, otk, package_id="p", version="1")
    assert exc.value.code == errors.KEYWRAP_WRONG_KEY


def test_bad_jwk_refused() -> None:
    for bad in [None, {"kty": "RSA"}, {"kty": "EC", "crv": "P-384", "x": "a", "y": "b"},
                {"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"},
                {"kty": "EC", "crv": "P-256", "x": "a", "y": "b", "d": "secret"}]:
        with pytest.raises(AttestationError):
            load_public_jwk(bad)
