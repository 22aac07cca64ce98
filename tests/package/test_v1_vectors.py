"""Independent v1 vectors: packages laid out byte by byte from the original cpk-tool's writer and its
manifest types (Confidential Packaging project, 2021), NOT produced by ``edb.cpk.v1.build_v1`` or
``ManifestV1.to_bytes``.

What the original writes (its ``write_to_stream`` and serde ``Manifest``):
- header: u32 magic 0x0ECCF00D, u16 1 (frame version), u16 0 (flag), u16 7 (streams), u16 6 (manifest
  index), u16 1 (type JSON), u16 1 (manifest version); all little-endian;
- table: 7 x (u64 offset from the origin, u64 size), offsets a running sum starting at 0;
- streams in order: AES-256-GCM ciphertext (tag not appended, empty AAD), 12-byte nonce, 16-byte tag,
  SHA-256 of the plaintext, RSA PKCS#1 v1.5 signature of that digest (SHA-256 DigestInfo), PEM
  certificate, compact JSON manifest in struct declaration order.
Its installer takes only aes-gcm / sha256 / rsa-pkcs1v15 / embedded-x509-pem, and its CPM checks the
digest first, then the signature over the *recorded* digest with a key imported at ``key_strength``
bits (a different size fails). Serde: ``key_strength`` and indices are u16, ``Target`` needs ``arch``
and ``os``.
"""

from __future__ import annotations

import hashlib
import io
import struct
from pathlib import Path

import pytest
from cpk_helpers import v1_signing
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edb.cpk import FORMAT_V1, PackageError, open_package
from edb.cpk import errors as E
from edb.cpk.manifest_v1 import parse_manifest_v1
from edb.cpk.v1 import V1Signing, build_v1, decrypt_payload_v1, verify_v1

APP_ID = "3f2a7c10-58e4-4b9d-a1c2-7d6e5f4a3b21"
KEY = bytes(range(32))
NONCE = bytes.fromhex("000102030405060708090a0b")
DATE = "2021-10-05 12:52:37.489525 UTC"
PLAINTEXT = b"original cpk-tool payload\n" * 40


def manifest_text(*, target: bytes = b'{"arch":"aarch64","os":"OP-TEE"}', enc_strength: int = 256,
                  sig_strength: int = 2048, dig: bytes = b'{"sha256":{"data":3}}',
                  cert: bytes = b'{"embedded-x509-pem":{"data":5}}') -> bytes:
    """The compact JSON serde_json writes for the original ``Manifest`` (field order = declaration)."""
    return (
        b'{"cp-id":"' + APP_ID.encode() + b'","cp-name":"Unknown","cp-vendor":"Unknown",'
        b'"payload":{"data":0,"target":' + target + b','
        b'"ver":{"maj":1,"min":0,"rev":0,"date":"' + DATE.encode() + b'"},'
        b'"enc":{"aes-gcm":{"key_name":"' + APP_ID.encode() + b'","key_strength":' + str(enc_strength).encode()
        + b',"nonce":1,"tag":2}},'
        b'"dig":' + dig + b','
        b'"sig":{"rsa-pkcs1v15":{"key_strength":' + str(sig_strength).encode() + b',"data":4}},'
        b'"cert":' + cert + b'},'
        b'"package":{"map":[0,1,2,3,4,5,6],"dig":"none","sig":"none","cert":"none"}}'
    )


def original_package(signing: V1Signing, manifest: bytes | None = None, *, digest: bytes | None = None,
                     cert: bytes | None = None) -> bytes:
    """The seven streams and the frame as the original ``write_to_stream`` lays them out."""
    sealed = AESGCM(KEY).encrypt(NONCE, PLAINTEXT, None)
    ciphertext, tag = sealed[:-16], sealed[-16:]
    recorded = hashlib.sha256(PLAINTEXT).digest() if digest is None else digest
    signature = signing.private_key.sign(recorded, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
    cert_pem = signing.certificate.public_bytes(serialization.Encoding.PEM) if cert is None else cert
    streams = [ciphertext, NONCE, tag, recorded, signature, cert_pem, manifest or manifest_text()]
    out = bytearray(b"\x0d\xf0\xcc\x0e" + b"\x01\x00" + b"\x00\x00" + b"\x07\x00" + b"\x06\x00"
                    + b"\x01\x00" + b"\x01\x00")
    cursor = 0
    for stream in streams:
        out += struct.pack("<Q", cursor) + struct.pack("<Q", len(stream))
        cursor += len(stream)
    for stream in streams:
        out += stream
    return bytes(out)


@pytest.fixture(scope="module")
def signing() -> V1Signing:
    return v1_signing()


def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "original.cpk"
    path.write_bytes(data)
    return path


def test_original_layout_reads_verifies_and_installs(tmp_path: Path, signing: V1Signing) -> None:
    path = write(tmp_path, original_package(signing))
    with open_package(path) as reader:
        assert reader.format == FORMAT_V1
        info = reader.info()
        assert (info.package_id, info.version, info.kid) == (APP_ID, "1.0.0", APP_ID)
        assert info.target == {"arch": "aarch64", "os": "OP-TEE"}
        report = verify_v1(reader, {APP_ID: KEY})
        assert [(c.name, c.status) for c in report.checks] == [("tag", "ok"), ("digest", "ok"), ("signature", "ok")]
        out = io.BytesIO()
        assert decrypt_payload_v1(reader, KEY, out.write) == len(PLAINTEXT)
        assert out.getvalue() == PLAINTEXT


def test_our_writer_produces_the_original_bytes(tmp_path: Path, signing: V1Signing,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """With the same nonce, key, signer and date, build_v1 writes exactly the original's file."""
    monkeypatch.setattr("edb.cpk.v1.os.urandom", lambda n: NONCE[:n])
    ours = tmp_path / "ours.cpk"
    build_v1(PLAINTEXT, ours, cp_id=APP_ID, key=KEY, signing=signing, date=DATE)
    assert ours.read_bytes() == original_package(signing)


def test_manifest_without_os_refused_as_the_original_does() -> None:
    """serde: ``missing field `os```; the original install fails, so must ours."""
    for target in (b'{"arch":"aarch64"}', b'{"os":"OP-TEE"}', b'{}', b'{"arch":"aarch64","os":7}'):
        with pytest.raises(PackageError) as exc:
            parse_manifest_v1(manifest_text(target=target))
        assert exc.value.code == E.MANIFEST_INVALID, target
    extra = parse_manifest_v1(manifest_text(target=b'{"arch":"x86_64","os":"SGX","abi":"v2"}'))
    assert extra.payload.target == {"arch": "x86_64", "os": "SGX"}  # unknown member ignored, like serde


@pytest.mark.parametrize("field", ["enc_strength", "sig_strength"])
def test_key_strength_is_u16(field: str) -> None:
    assert parse_manifest_v1(manifest_text(**{field: 65535}))  # type: ignore[arg-type]
    with pytest.raises(PackageError) as exc:
        parse_manifest_v1(manifest_text(**{field: 65536}))  # type: ignore[arg-type]
    assert exc.value.code == E.MANIFEST_INVALID


def test_signature_checked_over_the_recorded_digest_only_after_it_matched(tmp_path: Path,
                                                                        signing: V1Signing) -> None:
    """A recorded digest that is wrong but validly signed: digest fails, signature not attempted."""
    wrong = hashlib.sha256(b"another payload").digest()
    path = write(tmp_path, original_package(signing, digest=wrong))
    with open_package(path) as reader:
        report = verify_v1(reader, {APP_ID: KEY})
        assert [(c.name, c.status, c.code) for c in report.checks[1:]] == [
            ("digest", "failed", E.DIGEST_MISMATCH), ("signature", "failed", E.SIGNATURE_INVALID)]
        with pytest.raises(PackageError) as exc:
            decrypt_payload_v1(reader, KEY, lambda b: None)
        assert exc.value.code == E.DIGEST_MISMATCH


def test_key_strength_must_be_the_signing_keys_size(tmp_path: Path, signing: V1Signing) -> None:
    path = write(tmp_path, original_package(signing, manifest_text(sig_strength=4096)))
    with open_package(path) as reader:
        failed = verify_v1(reader, {APP_ID: KEY}).first_failure()
        assert failed is not None and (failed.name, failed.code) == ("signature", E.MANIFEST_INVALID)
        with pytest.raises(PackageError) as exc:
            decrypt_payload_v1(reader, KEY, lambda b: None)
        assert exc.value.code == E.MANIFEST_INVALID


@pytest.mark.parametrize("manifest", [
    manifest_text(dig=b'"none"'),
    manifest_text(cert=b'{"embedded-x509-der":{"data":5}}'),
    manifest_text(cert=b'{"target":{"domain":"contoso.com"}}'),
])
def test_install_takes_only_the_originals_schemes(tmp_path: Path, signing: V1Signing, manifest: bytes) -> None:
    path = write(tmp_path, original_package(signing, manifest))
    received: list[bytes] = []
    with open_package(path) as reader, pytest.raises(PackageError) as exc:
        decrypt_payload_v1(reader, KEY, received.append)
    assert exc.value.code == E.MANIFEST_INVALID and received == []
