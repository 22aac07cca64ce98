"""The installer's one-pass package digests (pure): the file SHA-256 and the v2 payload's chunk-list
digest from the bytes in any piece sizes, used only when the authenticated manifest has the layout
they were computed with."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from edb.cpk import DEFAULT_CHUNK_SIZE, BuildResult, PackageIdentity, Target, build
from edb.cpk.v1 import V1Signing, build_v1
from edb.pki.devpki import init_publisher_pki
from package_installer.payload_digest import V2_HEAD_BYTES, PackageHasher, digest_for_manifest, payload_layout

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return init_publisher_pki(tmp_path_factory.mktemp("pki") / "pki", kek_bits=2048)


def make(pki, payload: bytes, chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[bytes, BuildResult]:  # type: ignore[no-untyped-def]
    now = dt.datetime.now(dt.UTC)
    ident = PackageIdentity(package_id="digits", version="1.0.0", security_version=1,
                            target=Target(device_ids=("dev-1",)), created=now, expires=now + dt.timedelta(days=1))
    out = io.BytesIO()
    result = build(io.BytesIO(payload), out, identity=ident, kek=pki.load_kek(), signer=pki.signer(),
                   chunk_size=chunk_size)
    return out.getvalue(), result


def pieces(data: bytes, sizes: Iterator[int]) -> Iterator[bytes]:
    position = 0
    while position < len(data):
        n = next(sizes)
        yield data[position:position + n]
        position += n


def feed(data: bytes, sizes: Iterator[int]) -> PackageHasher:
    hasher = PackageHasher(len(data))
    for piece in pieces(data, sizes):
        hasher.update(piece)
    return hasher


def fixed(n: int) -> Iterator[int]:
    while True:
        yield n


def scattered(seed: int) -> Iterator[int]:
    """Piece sizes that land on every kind of boundary: single bytes, the 80-byte head, chunk edges."""
    rng = random.Random(seed)
    while True:
        yield rng.choice([1, 2, 15, 16, 17, 79, 80, 81, 4095, 65536, MIB - 1, MIB + 16, MIB + 17, 3 * MIB])


@pytest.mark.parametrize(("sizes", "payload_size"), [
    (lambda: fixed(MIB), 2 * MIB + 12345),  # 3 chunks, the last one short
    (lambda: fixed(MIB + 16), 2 * MIB + 12345),  # pieces exactly one sealed chunk long
    (lambda: scattered(1), 2 * MIB + 12345),
    (lambda: scattered(2), 2 * MIB + 12345),
    (lambda: fixed(64 * MIB), 2 * MIB + 12345),  # the whole file at once
    (lambda: fixed(1), 70_000),  # byte by byte (kept small)
], ids=["1MiB", "stride", "scattered-1", "scattered-2", "whole", "1B"])
def test_both_digests_match_the_file_and_the_signed_manifest(pki, sizes, payload_size: int) -> None:  # type: ignore[no-untyped-def]
    data, result = make(pki, os.urandom(payload_size))
    digests = feed(data, sizes()).result()
    assert digests.sha256 == hashlib.sha256(data).hexdigest()
    assert digests.payload is not None
    assert digests.payload.sha256 == result.manifest.ciphertext_sha256
    assert digest_for_manifest(digests.payload, result.manifest) == result.manifest.ciphertext_sha256


def test_payload_of_whole_chunks_and_an_empty_payload(pki) -> None:  # type: ignore[no-untyped-def]
    for payload in (os.urandom(2 * MIB), b""):
        data, result = make(pki, payload)
        digests = feed(data, scattered(3)).result()
        assert digest_for_manifest(digests.payload, result.manifest) == result.manifest.ciphertext_sha256


def test_another_chunk_size_is_not_used_so_the_caller_computes_it_again(pki) -> None:  # type: ignore[no-untyped-def]
    data, result = make(pki, os.urandom(300_000), chunk_size=64 * 1024)
    digests = feed(data, fixed(MIB)).result()
    assert digests.sha256 == hashlib.sha256(data).hexdigest()
    assert digests.payload is not None and digests.payload.layout.chunk_size == DEFAULT_CHUNK_SIZE
    assert digests.payload.sha256 != result.manifest.ciphertext_sha256  # computed with the wrong pieces...
    assert digest_for_manifest(digests.payload, result.manifest) is None  # ...so never compared


def test_a_changed_payload_byte_changes_the_digest(pki) -> None:  # type: ignore[no-untyped-def]
    data, result = make(pki, os.urandom(MIB + 1000))
    tampered = bytearray(data)
    tampered[V2_HEAD_BYTES + MIB + 500] ^= 1  # second chunk
    digests = feed(bytes(tampered), fixed(MIB)).result()
    streamed = digest_for_manifest(digests.payload, result.manifest)
    assert streamed is not None and streamed != result.manifest.ciphertext_sha256


def test_a_manifest_with_another_payload_size_is_not_matched(pki) -> None:  # type: ignore[no-untyped-def]
    data, _ = make(pki, os.urandom(1000))
    _, other = make(pki, os.urandom(2000))
    digests = feed(data, fixed(MIB)).result()
    assert digest_for_manifest(digests.payload, other.manifest) is None


def test_files_that_are_not_v2_packages_get_only_the_file_hash(pki, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "demo")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    build_v1(b"model bytes", tmp_path / "v1.cpk", cp_id="legacy", key=os.urandom(32), signing=V1Signing(key, cert))
    v2, _ = make(pki, os.urandom(1000))
    cut_table = bytearray(v2)
    cut_table[16 + 8:16 + 16] = (len(v2) * 2).to_bytes(8, "little")  # payload stream past the end of the file
    for data in ((tmp_path / "v1.cpk").read_bytes(), os.urandom(5000), b"short", b"", bytes(cut_table)):
        digests = feed(data, scattered(4)).result()
        assert digests.sha256 == hashlib.sha256(data).hexdigest() and digests.payload is None


def test_layout_comes_from_the_stream_table_only(pki) -> None:  # type: ignore[no-untyped-def]
    data, result = make(pki, os.urandom(5000))
    layout = payload_layout(data[:V2_HEAD_BYTES], len(data))
    assert layout is not None and layout.start == V2_HEAD_BYTES and layout.size == result.manifest.ciphertext_size
    assert payload_layout(data[:V2_HEAD_BYTES], len(data) - 1) is None  # the declared size cannot hold the streams
    assert payload_layout(data[:V2_HEAD_BYTES - 1], len(data)) is None


def test_result_needs_every_byte(pki) -> None:  # type: ignore[no-untyped-def]
    data, _ = make(pki, os.urandom(1000))
    hasher = PackageHasher(len(data))
    hasher.update(data[:-1])
    with pytest.raises(ValueError):
        hasher.result()
