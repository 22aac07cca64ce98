"""v2 build -> open -> verify -> decrypt, over every sink kind and chunk layout."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
from pathlib import Path

import pytest
from cpk_helpers import CHUNK, NOW, BuildFn, Publisher

from edb.cpk import (
    FORMAT_V2,
    SignedManifest,
    decrypt_payload,
    open_package,
    verify_package,
    verify_signed_manifest,
)
from edb.cpk.stream_aead import TAG_BYTES, chunk_count


class _Collector:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def __call__(self, view: memoryview) -> None:
        self.chunks.append(bytes(view))  # the view is only valid during the call


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK, 5 * CHUNK + 17])
def test_round_trip_sizes(make_package: BuildFn, publisher: Publisher, size: int) -> None:
    path, result, data = make_package(os.urandom(size))
    assert result.manifest.plaintext_size == size
    assert result.manifest.chunk_count == chunk_count(size, CHUNK)
    assert result.manifest.ciphertext_size == size + TAG_BYTES * chunk_count(size, CHUNK)
    with open_package(path) as reader:
        assert reader.format == FORMAT_V2
        verified = verify_package(reader, trust_roots=publisher.roots, now=NOW, device_id="dev-1",
                                  device_class="trustbox-edge-201", security_floor=3)
        dek = publisher.kek.unwrap(verified.manifest.wrapped_dek)
        for threads in (1, 2, 3):
            buffer = bytearray(size)
            assert decrypt_payload(verified, dek, buffer, threads=threads) == size
            assert bytes(buffer) == data
            pieces = _Collector()
            decrypt_payload(verified, dek, pieces, threads=threads)
            assert b"".join(pieces.chunks) == data and len(pieces.chunks) == chunk_count(size, CHUNK)
            sink = io.BytesIO()
            decrypt_payload(verified, dek, sink, threads=threads)
            assert sink.getvalue() == data


def test_manifest_records_digests_of_payload_and_chain(make_package: BuildFn) -> None:
    path, result, data = make_package(os.urandom(3 * CHUNK + 5))
    m = result.manifest
    leaves = b"".join(hashlib.sha256(data[i : i + CHUNK]).digest() for i in range(0, len(data), CHUNK))
    assert m.plaintext_sha256 == hashlib.sha256(leaves).hexdigest()
    with open_package(path) as reader:
        payload = reader.read_stream(0, 1 << 20)
        sealed = b"".join(hashlib.sha256(payload[i : i + CHUNK + TAG_BYTES]).digest()
                          for i in range(0, len(payload), CHUNK + TAG_BYTES))
        assert m.ciphertext_sha256 == hashlib.sha256(sealed).hexdigest()
        assert hashlib.sha256(reader.read_stream(2, 1 << 20)).hexdigest() == m.signer_chain_sha256
        assert reader.signed_manifest().manifest_bytes == reader.read_stream(3, 1 << 20)


def test_signed_manifest_verifies_on_its_own(make_package: BuildFn, publisher: Publisher) -> None:
    path, result, _ = make_package()
    with open_package(path) as reader:
        signed = reader.signed_manifest()
    wire = json.loads(json.dumps(signed.to_json()))  # Contract 3 request member, through JSON
    manifest = verify_signed_manifest(SignedManifest.from_json(wire), publisher.roots, NOW)
    assert manifest == result.manifest
    assert manifest.wrapped_dek.alg == "RSA-OAEP-256" and manifest.kid == publisher.kek.kid
    assert signed.manifest_sha256 == hashlib.sha256(signed.manifest_bytes).hexdigest()


def test_info_has_no_secrets(make_package: BuildFn) -> None:
    path, result, _ = make_package()
    with open_package(path) as reader:
        info = reader.info().to_json()
    assert info["format"] == "cpk-v2" and info["id"] == "digits" and info["securityVersion"] == 3
    assert info["kid"] == result.manifest.kid
    assert "Package Signing" in info["signerSubject"]
    text = json.dumps(info)
    assert result.manifest.wrapped_dek.to_json()["value"] not in text


def test_open_from_file_object_and_descriptor(make_package: BuildFn, publisher: Publisher) -> None:
    path, _, _ = make_package()
    with path.open("rb") as f:
        with open_package(f) as reader:
            assert reader.info().package_id == "digits"
        assert not f.closed  # the caller's file stays the caller's
        fd = os.open(path, os.O_RDONLY)
        try:
            with open_package(fd) as reader:
                verify_package(reader, trust_roots=publisher.roots, now=NOW)
            os.fstat(fd)  # still open: the reader worked on a duplicate
        finally:
            os.close(fd)


def test_two_builds_of_same_payload_differ(make_package: BuildFn) -> None:
    data = os.urandom(1000)
    _, r1, _ = make_package(data)
    _, r2, _ = make_package(data)
    assert r1.manifest.nonce_prefix != r2.manifest.nonce_prefix
    assert r1.manifest.ciphertext_sha256 != r2.manifest.ciphertext_sha256
    assert r1.manifest.plaintext_sha256 == r2.manifest.plaintext_sha256


def test_build_from_path_and_no_partial_file_on_failure(tmp_path: Path, publisher: Publisher) -> None:
    from cpk_helpers import identity

    from edb.cpk import build
    from edb.errors import KeyProviderError

    src = tmp_path / "model.onnx"
    src.write_bytes(os.urandom(700))
    out = tmp_path / "out.cpk"
    build(src, out, identity=identity(), kek=publisher.kek, signer=publisher.signer, chunk_size=CHUNK)
    assert out.exists()

    class BrokenKek:
        kid = "broken"

        def wrap(self, dek: bytes) -> object:
            raise KeyProviderError("down", code="KEY_UNAVAILABLE")

        def unwrap(self, wrapped: object) -> bytes:
            raise AssertionError

    out2 = tmp_path / "out2.cpk"
    with pytest.raises(KeyProviderError):
        build(src, out2, identity=identity(), kek=BrokenKek(), signer=publisher.signer)  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "out.cpk"]


def test_verify_now_must_be_aware(make_package: BuildFn, publisher: Publisher) -> None:
    path, _, _ = make_package()
    with open_package(path) as reader, pytest.raises(ValueError):
        verify_package(reader, trust_roots=publisher.roots, now=dt.datetime(2030, 1, 1))
