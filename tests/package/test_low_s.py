"""ECDSA malleability (issue 13 item 8): one valid signature encoding per package.

(r, s) and (r, n - s) both satisfy the ECDSA equation; only the low-s, canonical DER form is
accepted, and every signer of ours produces it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cpk_helpers import NOW, BuildFn, Publisher
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature, encode_dss_signature
from test_hostile import refused, replace_stream, write

from edb.cpk import PackageError, open_package
from edb.cpk import errors as E
from edb.cpk.signed import SignedManifest, verify_signed_manifest
from edb.keys.azure_keyvault import raw_to_der_signature
from edb.keys.local import LocalSigner
from edb.keys.low_s import P256_HALF_N, P256_N, is_canonical_low_s, normalize_low_s


def flip_s(signature: bytes) -> bytes:
    r, s = decode_dss_signature(signature)
    return encode_dss_signature(r, P256_N - s)


def test_high_s_twin_of_a_valid_signature_refused(make_package: BuildFn, publisher: Publisher,
                                                   tmp_path: Path) -> None:
    path, _, _ = make_package()
    with open_package(path) as reader:
        signed = reader.signed_manifest()
    _, s = decode_dss_signature(signed.signature)
    assert s <= P256_HALF_N  # what we wrote is low-s
    twin = flip_s(signed.signature)
    public = publisher.signer.certificate_chain()[0].public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(twin, signed.manifest_bytes, ec.ECDSA(hashes.SHA256()))  # the maths accepts it...
    forged = SignedManifest(manifest_bytes=signed.manifest_bytes, signature=twin, chain=signed.chain)
    with pytest.raises(PackageError) as exc:  # ...we do not (the key release service calls this too)
        verify_signed_manifest(forged, publisher.roots, NOW)
    assert exc.value.code == E.SIGNATURE_INVALID
    data = replace_stream(path.read_bytes(), 1, twin)  # and the whole file on a device
    assert refused(write(tmp_path, data), publisher) == E.SIGNATURE_INVALID


def test_non_canonical_der_refused(make_package: BuildFn, publisher: Publisher) -> None:
    path, _, _ = make_package()
    with open_package(path) as reader:
        signed = reader.signed_manifest()
    sig = signed.signature
    # r with a redundant leading zero byte: same integers, a second encoding.
    r_len = sig[3]
    padded_r = b"\x02" + bytes([r_len + 1]) + b"\x00" + sig[4:4 + r_len]
    body = padded_r + sig[4 + r_len:]
    long_form = b"\x30" + bytes([len(body)]) + body
    assert not is_canonical_low_s(long_form)
    forged = SignedManifest(manifest_bytes=signed.manifest_bytes, signature=long_form, chain=signed.chain)
    with pytest.raises(PackageError) as exc:
        verify_signed_manifest(forged, publisher.roots, NOW)
    assert exc.value.code == E.SIGNATURE_INVALID


def test_local_signer_always_low_s(publisher: Publisher) -> None:
    """64 signatures: without normalisation about half would be high-s (all low by chance: 2^-64)."""
    signer: LocalSigner = publisher.signer
    for i in range(64):
        assert is_canonical_low_s(signer.sign_digest(hashlib.sha256(bytes([i])).digest()))


def test_key_vault_raw_signature_normalised() -> None:
    """Key Vault returns r || s and may pick either s; the DER we put in a package is the low one."""
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(b"manifest").digest()
    r, s = decode_dss_signature(key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256()))))
    for value in (s, P256_N - s):
        der = raw_to_der_signature(r.to_bytes(32, "big") + value.to_bytes(32, "big"))
        assert is_canonical_low_s(der) and decode_dss_signature(der) == (r, min(s, P256_N - s))
        key.public_key().verify(der, b"manifest", ec.ECDSA(hashes.SHA256()))


def test_normalize_is_idempotent_and_keeps_validity() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    sig = key.sign(b"m", ec.ECDSA(hashes.SHA256()))
    low = normalize_low_s(sig)
    assert normalize_low_s(low) == low and normalize_low_s(flip_s(low)) == low
    key.public_key().verify(low, b"m", ec.ECDSA(hashes.SHA256()))
