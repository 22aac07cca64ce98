"""edb package / edb pki through the real click command tree."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from edb.cli.main import root


@pytest.fixture
def edb(tmp_path: Path):  # type: ignore[no-untyped-def]
    runner = CliRunner()
    env = {"EDB_STATE_DIR": str(tmp_path / ".edb")}

    def run(*args: str, code: int = 0) -> dict:  # type: ignore[type-arg]
        result = runner.invoke(root, list(args), env=env, catch_exceptions=False)
        assert result.exit_code == code, result.output
        return json.loads(result.stdout) if "--json" in args else {"text": result.output}

    return run


@pytest.fixture
def ready(edb, tmp_path: Path) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    edb("pki", "init", "--kek-bits", "2048", "--json")
    model = tmp_path / "model.onnx"
    model.write_bytes(os.urandom(5000))
    out = tmp_path / "m.cpk"
    built = edb("package", "build", str(model), "-o", str(out), "--id", "digits", "--version", "1.2.0",
                "--security-version", "4", "--target-device", "dev-1", "--target-class", "edge", "--expires", "30d",
                "--chunk-size", "1KiB", "--media-type", "application/vnd.onnx", "--skip-preflight", "--json")
    assert built["ok"] and built["securityVersion"] == 4 and built["kid"].startswith("local:")
    return model, out


def test_pki_init_json_and_refuses_overwrite(edb, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    made = edb("pki", "init", "--kek-bits", "2048", "--json")
    assert made["ok"] and Path(made["rootCert"]).exists() and made["dir"] == str(tmp_path / ".edb" / "pki")
    again = edb("pki", "init", "--json", code=2)
    assert again == {"ok": False, "error": {"code": "CONFIG_PKI_EXISTS", "message": again["error"]["message"]}}


def test_inspect_json(edb, ready) -> None:  # type: ignore[no-untyped-def]
    _, package = ready
    info = edb("package", "inspect", str(package), "--json")
    assert info["ok"] and info["format"] == "cpk-v2" and info["id"] == "digits" and info["version"] == "1.2.0"
    assert info["target"] == {"device-ids": ["dev-1"], "device-classes": ["edge"]}
    assert info["plaintextSize"] == 5000 and info["chunkSize"] == 1024 and "Package Signing" in info["signerSubject"]
    text = edb("package", "inspect", str(package))["text"]
    assert "cpk-v2" in text and "security version  4" in text


def test_verify_ok_and_with_kek(edb, ready, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, package = ready
    result = edb("package", "verify", str(package), "--json", "--device-id", "dev-1", "--security-floor", "4")
    assert result["ok"] and [c["status"] for c in result["checks"]][-1] == "skipped"
    kek = str(tmp_path / ".edb" / "pki" / "kek.pem")
    result = edb("package", "verify", str(package), "--json", "--kek", kek)
    assert [c["check"] for c in result["checks"]] == ["signature", "policy", "ciphertext-digest", "decrypt"]
    assert all(c["status"] == "ok" for c in result["checks"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [".edb", "m.cpk", "model.onnx"]  # nothing decrypted to disk


@pytest.mark.parametrize(("args", "code"), [
    (("--device-id", "dev-9"), "CPK_WRONG_TARGET"),
    (("--security-floor", "5"), "CPK_ROLLBACK"),
])
def test_verify_policy_failures(edb, ready, args: tuple[str, ...], code: str) -> None:  # type: ignore[no-untyped-def]
    _, package = ready
    result = edb("package", "verify", str(package), "--json", *args, code=2)
    assert result["ok"] is False and result["error"]["code"] == code


def test_verify_tampered_and_untrusted(edb, ready, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, package = ready
    data = bytearray(package.read_bytes())
    data[200] ^= 1
    bad = tmp_path / "bad.cpk"
    bad.write_bytes(bytes(data))
    assert edb("package", "verify", str(bad), "--json", code=2)["error"]["code"] == "CPK_DIGEST_MISMATCH"
    other = tmp_path / "other-root.pem"
    from edb.pki.devpki import init_publisher_pki

    other.write_bytes(init_publisher_pki(tmp_path / "other", kek_bits=2048).root_cert.read_bytes())
    result = edb("package", "verify", str(package), "--json", "--trust-root", str(other), code=2)
    assert result["error"]["code"] == "CPK_UNTRUSTED_SIGNER"
    text = edb("package", "verify", str(bad), code=2)["text"]
    assert "CPK_DIGEST_MISMATCH" in text


def test_rewrap_cli(edb, ready, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from edb.keys.local import LocalKek

    _, package = ready
    new = tmp_path / "kek2.pem"
    kek2 = LocalKek.generate(2048)
    new.write_bytes(kek2.private_pem())
    old = str(tmp_path / ".edb" / "pki" / "kek.pem")
    out = tmp_path / "rotated.cpk"
    result = edb("package", "rewrap", str(package), "-o", str(out), "--old-kek", old, "--new-kek", str(new), "--json")
    assert result["ok"] and result["kid"] == kek2.kid and result["oldKid"] != kek2.kid
    assert edb("package", "verify", str(out), "--kek", str(new), "--json")["ok"]
    assert edb("package", "verify", str(out), "--kek", old, "--json", code=2)["error"]["code"] == "KEY_WRONG_KID"


def test_v1_verify_cli(edb, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from edb.cpk.v1 import key_file_json

    path, keys = _v1_package(tmp_path)
    keys.write_text(key_file_json({"app-1": (tmp_path / "content.key").read_bytes()}))
    result = edb("package", "verify", str(path), "--key-file", str(keys), "--json")
    assert result["ok"] and result["format"] == "cpk-v1"
    assert [c["status"] for c in result["checks"]] == ["ok", "ok", "ok", "unauthenticated"]
    assert edb("package", "verify", str(path), "--json", code=2)["error"]["code"] == "CPK_KEY_UNAVAILABLE"
    keys.write_text(key_file_json({"app-1": os.urandom(32)}))
    failed = edb("package", "verify", str(path), "--key-file", str(keys), "--json", code=2)
    assert failed["error"]["code"] == "CPK_TAG_MISMATCH" and failed["checks"][0]["status"] == "failed"
    assert edb("package", "inspect", str(path), "--json")["format"] == "cpk-v1"


def test_checks_a_format_cannot_perform_fail_closed(edb, ready, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`verify v1.cpk --key-file k.json --security-floor 99 --device-id nobody` used to exit 0 with
    ok:true: a v1 manifest has no floor, target, publisher chain or KEK, so those checks are refused."""
    from edb.cpk.v1 import key_file_json

    path, keys = _v1_package(tmp_path)
    keys.write_text(key_file_json({"app-1": (tmp_path / "content.key").read_bytes()}))
    assert edb("package", "verify", str(path), "--key-file", str(keys), "--json")["ok"]
    root = str(tmp_path / ".edb" / "pki" / "root.pem")
    for extra in (["--security-floor", "99", "--device-id", "nobody"], ["--security-floor", "0"],
                  ["--device-id", "nobody"], ["--device-class", "edge"], ["--trust-root", root],
                  ["--kek", str(tmp_path / ".edb" / "pki" / "kek.pem")]):
        refused = edb("package", "verify", str(path), "--key-file", str(keys), *extra, "--json", code=2)
        assert refused["ok"] is False and refused["error"]["code"] == "CPK_CHECK_UNSUPPORTED", extra
        assert extra[0] in refused["error"]["message"] and refused["checks"] == []
    text = edb("package", "verify", str(path), "--key-file", str(keys), "--security-floor", "99", code=2)["text"]
    assert "CPK_CHECK_UNSUPPORTED" in text and "valid" not in text
    _, v2 = ready  # and a v2 package has no class key to check
    refused = edb("package", "verify", str(v2), "--key-file", str(keys), "--json", code=2)
    assert refused["error"]["code"] == "CPK_CHECK_UNSUPPORTED" and "--key-file" in refused["error"]["message"]


def _v1_package(tmp_path: Path) -> tuple[Path, Path]:
    from cpk_helpers import v1_signing

    from edb.cpk.v1 import build_v1

    content_key = os.urandom(32)
    (tmp_path / "content.key").write_bytes(content_key)
    path = tmp_path / "legacy.cpk"
    build_v1(b"model bytes" * 100, path, cp_id="app-1", key=content_key, signing=v1_signing())
    return path, tmp_path / "keys.json"


def test_build_usage_errors(edb, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    edb("pki", "init", "--kek-bits", "2048", "--json")
    model = tmp_path / "m.bin"
    model.write_bytes(b"x")
    edb("package", "build", str(model), "-o", str(tmp_path / "o.cpk"), "--id", "a", "--version", "1",
        "--security-version", "0", code=2)  # no target
    result = edb("package", "build", str(model), "-o", str(tmp_path / "o.cpk"), "--id", "bad id!", "--version",
                 "1", "--security-version", "0", "--target-class", "c", "--json", code=2)
    assert result["error"]["code"] == "CPK_MANIFEST_INVALID"


def test_build_aligned_onnx_layout(edb, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edb.cpk import decrypt_payload, open_package, verify_package
    from edb.keys.local import LocalKek
    from edb.onnx_layout import MEDIA_TYPE, is_layout
    from edb.pki.certs import load_pem_certificates_file

    weights = numpy_helper.from_array(np.arange(64 * 64, dtype=np.float32).reshape(64, 64), name="W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [weights])
    model = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph), str(model))
    edb("pki", "init", "--kek-bits", "2048", "--json")
    out = tmp_path / "aligned.cpk"
    edb("package", "build", str(model), "-o", str(out), "--id", "mm", "--version", "1", "--security-version", "1",
        "--target-class", "edge", "--onnx-layout", "aligned", "--json")
    assert edb("package", "inspect", str(out), "--json")["mediaType"] == MEDIA_TYPE
    pki = tmp_path / ".edb" / "pki"
    with open_package(out) as reader:
        verified = verify_package(reader, trust_roots=load_pem_certificates_file(pki / "root.pem"),
                                  now=verified_now())
        buffer = bytearray(verified.manifest.plaintext_size)
        decrypt_payload(verified, LocalKek.from_file(pki / "kek.pem").unwrap(verified.manifest.wrapped_dek), buffer)
    assert is_layout(buffer)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".edb", "aligned.cpk", "model.onnx"]


def verified_now():  # type: ignore[no-untyped-def]
    import datetime as dt

    return dt.datetime.now(dt.UTC)
