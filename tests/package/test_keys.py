"""Key providers: local KEK/signer wrapping logic, Key Vault pure parts, dev PKI files."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from edb.errors import ConfigError, KeyProviderError
from edb.keys import errors
from edb.keys.azure_keyvault import KeyVaultKek, raw_to_der_signature
from edb.keys.base import WrappedKey
from edb.keys.local import LocalKek, LocalSigner
from edb.keys.low_s import normalize_low_s
from edb.pki.devpki import init_publisher_pki
from edb.pki.oids import PUBLISHER_SIGNING_EKU


@pytest.fixture(scope="module")
def kek() -> LocalKek:
    return LocalKek.generate(2048)


def test_wrap_unwrap_is_rsa_oaep_sha256(kek: LocalKek) -> None:
    dek = os.urandom(32)
    wrapped = kek.wrap(dek)
    assert wrapped.alg == "RSA-OAEP-256" and wrapped.kid == kek.kid and kek.kid.startswith("local:")
    assert kek.unwrap(wrapped) == dek
    # an independent OAEP(SHA-256, MGF1-SHA-256) decryption opens it: the wire format is standard
    private = LocalKek.from_pem(kek.private_pem())._private
    assert private is not None
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    assert private.decrypt(wrapped.value, oaep) == dek
    assert WrappedKey.from_json(wrapped.to_json()) == wrapped


def test_public_only_kek_wraps_but_cannot_unwrap(kek: LocalKek) -> None:
    public = LocalKek.from_pem(kek.public_pem())
    assert public.kid == kek.kid and not public.can_unwrap
    wrapped = public.wrap(os.urandom(32))
    with pytest.raises(KeyProviderError) as exc:
        public.unwrap(wrapped)
    assert exc.value.code == errors.INVALID_KEY


def test_unwrap_refuses_other_kid_and_corruption(kek: LocalKek) -> None:
    other = LocalKek.generate(2048)
    wrapped = other.wrap(os.urandom(32))
    with pytest.raises(KeyProviderError) as exc:
        kek.unwrap(wrapped)
    assert exc.value.code == errors.WRONG_KID
    mine = kek.wrap(os.urandom(32))
    bad = WrappedKey(kid=mine.kid, alg=mine.alg, value=bytes([mine.value[0] ^ 1]) + mine.value[1:])
    with pytest.raises(KeyProviderError) as exc:
        kek.unwrap(bad)
    assert exc.value.code == errors.UNWRAP_FAILED


@pytest.mark.parametrize("bad", [b"", b"x" * 31, b"x" * 33])
def test_wrap_refuses_non_dek(kek: LocalKek, bad: bytes) -> None:
    with pytest.raises(KeyProviderError):
        kek.wrap(bad)


def test_kek_refuses_small_or_non_rsa_keys(tmp_path: Path) -> None:
    with pytest.raises(KeyProviderError):
        LocalKek(rsa.generate_private_key(65537, 1024).public_key())  # noqa: S505 - must be refused
    with pytest.raises(KeyProviderError) as exc:
        LocalKek.from_pem(b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    assert exc.value.code == errors.INVALID_KEY
    with pytest.raises(KeyProviderError):
        LocalKek.from_file(tmp_path / "missing.pem")


def test_wrapped_key_refuses_other_alg() -> None:
    with pytest.raises(KeyProviderError) as exc:
        WrappedKey(kid="k", alg="RSA1_5", value=b"x")
    assert exc.value.code == errors.ALGORITHM
    with pytest.raises(ValueError):
        WrappedKey.from_json({"kid": "k", "alg": "RSA-OAEP-256", "value": "a+b/"})


def test_dev_pki_files_and_signer(tmp_path: Path) -> None:
    pki = init_publisher_pki(tmp_path / "pki", kek_bits=2048)
    for path in (pki.root_key, pki.signer_key, pki.kek):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(pki.directory.stat().st_mode) == 0o700
    signer = pki.signer()
    leaf = signer.certificate_chain()[0]
    assert PUBLISHER_SIGNING_EKU in leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    digest = hashlib.sha256(b"manifest").digest()
    der = signer.sign_digest(digest)
    public = leaf.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(der, b"manifest", ec.ECDSA(hashes.SHA256()))
    assert pki.load_kek().can_unwrap
    with pytest.raises(ConfigError):
        init_publisher_pki(tmp_path / "pki")
    again = init_publisher_pki(tmp_path / "pki", kek_bits=2048, force=True)
    assert again.signer().certificate_chain()[0] != leaf


def test_signer_refuses_mismatched_chain_and_wrong_curve(tmp_path: Path) -> None:
    pki = init_publisher_pki(tmp_path / "pki", kek_bits=2048)
    chain = pki.signer().certificate_chain()
    with pytest.raises(KeyProviderError) as exc:
        LocalSigner(ec.generate_private_key(ec.SECP256R1()), chain)
    assert exc.value.code == errors.SIGNER_MISMATCH
    with pytest.raises(KeyProviderError):
        LocalSigner(ec.generate_private_key(ec.SECP384R1()), chain)
    with pytest.raises(KeyProviderError):
        pki.signer().sign_digest(b"short")


def test_key_vault_raw_signature_to_der() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    der = key.sign(b"m", ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    assert raw_to_der_signature(raw) == normalize_low_s(der)  # the low-s form of the same signature
    key.public_key().verify(raw_to_der_signature(raw), b"m", ec.ECDSA(hashes.SHA256()))
    with pytest.raises(KeyProviderError):
        raw_to_der_signature(raw[:63])


def test_key_vault_kek_refuses_other_key_before_any_call() -> None:
    class NoCredential:
        def get_token(self, *scopes: str, **kw: object) -> object:
            raise AssertionError("no network call expected")

    kek = KeyVaultKek("https://vault.example.net/keys/kek", credential=NoCredential())
    wrapped = WrappedKey(kid="https://vault.example.net/keys/other/abc", alg="RSA-OAEP-256", value=b"x" * 256)
    with pytest.raises(KeyProviderError) as exc:
        kek.unwrap(wrapped)
    assert exc.value.code == errors.WRONG_KID
    with pytest.raises(KeyProviderError) as exc:
        KeyVaultKek("not a url", credential=NoCredential())
    assert exc.value.code == errors.INVALID_KEY
