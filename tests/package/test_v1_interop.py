"""Manifest v1 interop: the original tools' JSON and 7-stream layout, verified with their key file."""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

import pytest
from cpk_helpers import v1_signing

from edb.cpk import FORMAT_V1, PackageError, open_package
from edb.cpk import errors as E
from edb.cpk.manifest_v1 import parse_manifest_v1
from edb.cpk.v1 import V1Signing, build_v1, decrypt_payload_v1, key_file_json, load_key_file, verify_v1

EXAMPLE = (
    b'{"cp-id":"6e1c2b1e-3d8f-4a7c-9b1a-0f1e2d3c4b5a","cp-name":"Unknown","cp-vendor":"Unknown",'
    b'"payload":{"data":0,"target":{"arch":"aarch64","os":"OP-TEE"},'
    b'"ver":{"maj":1,"min":0,"rev":0,"date":"2021-10-05 12:52:37.489525 UTC"},'
    b'"enc":{"aes-gcm":{"key_name":"6e1c2b1e-3d8f-4a7c-9b1a-0f1e2d3c4b5a","key_strength":256,"nonce":1,"tag":2}},'
    b'"dig":{"sha256":{"data":3}},"sig":{"rsa-pkcs1v15":{"key_strength":2048,"data":4}},'
    b'"cert":{"embedded-x509-pem":{"data":5}}},'
    b'"package":{"map":[0,1,2,3,4,5,6],"dig":"none","sig":"none","cert":"none"}}'
)
APP_ID = "6e1c2b1e-3d8f-4a7c-9b1a-0f1e2d3c4b5a"


@pytest.fixture(scope="module")
def signing() -> V1Signing:
    return v1_signing()


def make_v1(tmp_path: Path, signing: V1Signing, plaintext: bytes | None = None) -> tuple[Path, bytes, bytes]:
    key = os.urandom(32)
    data = os.urandom(3000) if plaintext is None else plaintext
    path = tmp_path / "legacy.cpk"
    build_v1(data, path, cp_id=APP_ID, key=key, signing=signing)
    return path, key, data


def test_manifest_example_round_trips_byte_for_byte() -> None:
    manifest = parse_manifest_v1(EXAMPLE)
    assert manifest.payload.enc.key_name == APP_ID and manifest.payload.sig.key_strength == 2048
    assert manifest.payload.cert.kind == "embedded-x509-pem" and manifest.package.map == tuple(range(7))
    assert manifest.to_bytes() == EXAMPLE


def test_unknown_fields_ignored_missing_fields_refused() -> None:
    data = json.loads(EXAMPLE)
    data["future"] = {"x": 1}
    data["payload"]["enc"]["aes-gcm"]["extra"] = True
    assert parse_manifest_v1(json.dumps(data).encode()).cp_id == APP_ID
    for path in (["cp-id"], ["payload", "ver", "date"], ["payload", "enc", "aes-gcm", "tag"], ["package", "map"]):
        broken = json.loads(EXAMPLE)
        parent = broken
        for key in path[:-1]:
            parent = parent[key]
        del parent[path[-1]]
        with pytest.raises(PackageError) as exc:
            parse_manifest_v1(json.dumps(broken).encode())
        assert exc.value.code == E.MANIFEST_INVALID, path


@pytest.mark.parametrize("variant", [
    '"none"', '{"target":{"domain":"contoso"}}', '{"url":{"url":"https://x/cert.pem"}}',
    '{"embedded-x509-der":{"data":5}}', '{"embedded-public-key-pem":{"data":5}}',
    '{"embedded-public-key-der":{"data":5}}',
])
def test_every_certification_variant_parses(variant: str) -> None:
    text = EXAMPLE.replace(b'{"embedded-x509-pem":{"data":5}}', variant.encode())
    assert parse_manifest_v1(text).to_bytes() == text


@pytest.mark.parametrize("bad", [
    b'"enc":"aes-gcm"', b'"enc":{"aes-gcm":{},"none":{}}', b'"enc":{"aes_gcm":{}}', b'"enc":{"rsa":{}}',
])
def test_bad_variants_refused(bad: bytes) -> None:
    start = EXAMPLE.index(b'"enc":')
    end = EXAMPLE.index(b',"dig"')
    with pytest.raises(PackageError) as exc:
        parse_manifest_v1(EXAMPLE[:start] + bad + EXAMPLE[end:])
    assert exc.value.code == E.MANIFEST_INVALID


def test_build_read_verify_decrypt(tmp_path: Path, signing: V1Signing) -> None:
    path, key, data = make_v1(tmp_path, signing)
    keyfile = tmp_path / "keys.json"
    keyfile.write_text(key_file_json({APP_ID: key}))
    assert json.loads(keyfile.read_text()) == {APP_ID: base64.b64encode(key).decode()}
    with open_package(path) as reader:
        assert reader.format == FORMAT_V1 and reader.frame.header.num_streams == 7
        assert reader.frame.header.manifest_stream == 6
        assert reader.span(0).size == len(data)  # tag not appended
        assert [reader.span(i).size for i in (1, 2, 3, 4)] == [12, 16, 32, 256]
        info = reader.info()
        assert info.format == "cpk-v1" and info.package_id == APP_ID and info.version == "1.0.0"
        assert info.signer_subject == "CN=cpk-tool demo" and info.kid == APP_ID
        report = verify_v1(reader, load_key_file(keyfile))
        assert report.ok and [c.status for c in report.checks] == ["ok", "ok", "ok"]
        out = io.BytesIO()
        assert decrypt_payload_v1(reader, key, out.write) == len(data)
        assert out.getvalue() == data


@pytest.mark.parametrize(("stream", "check", "code"), [
    (0, "tag", E.TAG_MISMATCH), (2, "tag", E.TAG_MISMATCH), (3, "digest", E.DIGEST_MISMATCH),
    (4, "signature", E.SIGNATURE_INVALID),
])
def test_each_check_reported(tmp_path: Path, signing: V1Signing, stream: int, check: str, code: str) -> None:
    path, key, _ = make_v1(tmp_path, signing)
    with open_package(path) as reader:
        start = reader.span(stream).start
    data = bytearray(path.read_bytes())
    data[start + 3] ^= 0x10
    path.write_bytes(bytes(data))
    with open_package(path) as reader:
        report = verify_v1(reader, {APP_ID: key})
        failed = report.first_failure()
        assert failed is not None and failed.name == check and failed.code == code
        with pytest.raises(PackageError) as exc:
            decrypt_payload_v1(reader, key, lambda b: None)
        assert exc.value.code == code


def test_key_file_problems(tmp_path: Path, signing: V1Signing) -> None:
    path, key, _ = make_v1(tmp_path, signing)
    with open_package(path) as reader:
        with pytest.raises(PackageError) as exc:
            verify_v1(reader, {"other": key})
        assert exc.value.code == E.KEY_UNAVAILABLE
        with pytest.raises(PackageError) as exc:
            verify_v1(reader, {APP_ID: key[:16]})
        assert exc.value.code == E.WRONG_KEY
        report = verify_v1(reader, {APP_ID: os.urandom(32)})
        assert not report.ok and report.first_failure().code == E.TAG_MISMATCH  # type: ignore[union-attr]
    bad = tmp_path / "bad.json"
    for text in ("[]", "{nope", '{"a": 1}', '{"a": "***"}'):
        bad.write_text(text)
        with pytest.raises(PackageError) as exc:
            load_key_file(bad)
        assert exc.value.code == E.KEY_UNAVAILABLE


def test_v1_manifest_naming_missing_stream(tmp_path: Path, signing: V1Signing) -> None:
    path, _, _ = make_v1(tmp_path, signing)
    data = path.read_bytes().replace(b'"tag":2', b'"tag":9')
    path.write_bytes(data)
    with pytest.raises(PackageError) as exc:
        open_package(path)
    assert exc.value.code == E.STREAM_OUT_OF_BOUNDS


def test_v2_calls_on_v1_package_refused(tmp_path: Path, signing: V1Signing) -> None:
    path, _, _ = make_v1(tmp_path, signing)
    with open_package(path) as reader, pytest.raises(PackageError) as exc:
        reader.signed_manifest()
    assert exc.value.code == E.MANIFEST_INVALID
