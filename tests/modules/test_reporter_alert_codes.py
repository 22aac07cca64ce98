"""Every error code the security areas define is classified, and hostile packages always alert.

The codes are enumerated here from the source of the errors modules (their ``NAME = "CODE"``
assignments and their classes' ``code = "..."``), independently of how the reporter derives its
own list, so a code added to one of those modules and forgotten in the reporter fails this test.
"""

from __future__ import annotations

import ast
import datetime as dt
import io
import os
from pathlib import Path
from types import ModuleType

import pytest

from edb import onnx_layout
from edb.attestation import errors as attestation_errors
from edb.cpk import PackageIdentity, Target, build, open_package, verify_package
from edb.cpk import errors as cpk_errors
from edb.cpk.frame import ENTRY_SIZE, HEADER_SIZE
from edb.errors import EdbError
from edb.pki import errors as pki_errors
from edb.schemas import AlertType, ErrorInfo, EventKind, ModuleEvent
from edb.tee import errors as tee_errors
from key_release_service import codes as kr_codes
from telemetry_reporter import alerts
from telemetry_reporter.alerts import classify, classify_code

AREAS: tuple[tuple[ModuleType, str], ...] = (
    (cpk_errors, "CPK_"), (pki_errors, "PKI_"), (attestation_errors, "ATT_"), (tee_errors, "TEE_"),
    (onnx_layout, "LAYOUT_"),
)


def codes_in_source(module: ModuleType, prefix: str) -> set[str]:
    assert module.__file__ is not None
    tree = ast.parse(Path(module.__file__).read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
        if isinstance(value, ast.Constant) and isinstance(value.value, str) and value.value.startswith(prefix) \
                and value.value.replace("_", "").isalnum() and value.value.isupper():
            found.add(value.value)
    return found


ALL_CODES = sorted(set().union(*(codes_in_source(m, p) for m, p in AREAS)))


def test_the_enumeration_sees_the_codes_the_issue_names() -> None:
    assert {"CPK_TOO_LARGE", "CPK_UNSUPPORTED_VERSION", "CPK_TAG_MISMATCH", "PKI_UNTRUSTED", "PKI_ERROR",
            "ATT_EVIDENCE_SIGNATURE", "ATT_ERROR", "TEE_MODEL_INVALID", "TEE_SEALED_ROLLBACK"} <= set(ALL_CODES)
    assert len(ALL_CODES) > 60


@pytest.mark.parametrize("code", ALL_CODES)
def test_every_defined_code_is_classified(code: str) -> None:
    kind = classify_code(code)
    assert (kind is not None) != (code in alerts.OPERATIONAL_CODES), \
        f"{code}: classify it as tamper/denial/rollback or list it as operational, not both"
    if "ROLLBACK" in code:
        assert kind is AlertType.ROLLBACK
    if code.startswith(("PKI_", "ATT_")):
        assert kind is AlertType.TAMPER  # chains, evidence and released keys: authenticity


def test_hardening_codes_are_classified_by_what_they_mean() -> None:
    # a host off the allow-list is a policy refusal; a frame that trickled past its deadline is the
    # caller's connection (retried), not modified bytes; a name that is not the signed id is tampering
    assert classify_code("INSTALL_HOST_NOT_ALLOWED") is AlertType.DENIAL
    assert classify_code(tee_errors.FRAME_TIMEOUT) is None
    assert tee_errors.FRAME_TIMEOUT in alerts.OPERATIONAL_CODES
    assert classify_code(tee_errors.NAME_MISMATCH) is AlertType.TAMPER


def test_reporter_lists_are_complete_and_not_stale() -> None:
    defined = set(ALL_CODES)
    assert defined == alerts.AREA_CODES  # the reporter's own derivation finds the same codes
    assert defined >= alerts.OPERATIONAL_CODES
    assert {c for c in alerts.DENIAL_CODES if not c.startswith("INSTALL_")} <= defined


@pytest.mark.parametrize("code", [
    "CPK_TOO_LARGE", "CPK_UNSUPPORTED_VERSION", "CPK_BAD_MAGIC", "CPK_TRUNCATED", "CPK_STREAM_OUT_OF_BOUNDS",
    "CPK_MANIFEST_INVALID", "CPK_TAG_MISMATCH", "CPK_DIGEST_MISMATCH", "CPK_SIGNATURE_INVALID",
    "CPK_UNTRUSTED_SIGNER", "CPK_WRONG_KEY", "PKI_MALFORMED", "PKI_WRONG_USAGE", "ATT_KEYWRAP_BINDING",
    "TEE_KEY_MISMATCH", "TEE_SEALED_TAMPERED", "TEE_RPMB_TAMPERED", "LAYOUT_INVALID",
    "INSTALL_HASH_MISMATCH", "INSTALL_NAME_MISMATCH", "INSTALL_VERSION_MISMATCH",
])
def test_integrity_failures_are_tamper(code: str) -> None:
    assert classify_code(code) is AlertType.TAMPER


@pytest.mark.parametrize(("code", "kind"), [
    ("CPK_ROLLBACK", AlertType.ROLLBACK), ("TEE_ROLLBACK", AlertType.ROLLBACK),
    ("TEE_RPMB_ROLLBACK", AlertType.ROLLBACK), ("KR_PACKAGE_SVN_TOO_LOW", AlertType.ROLLBACK),
    ("TEE_STATE_ROLLED_BACK", AlertType.ROLLBACK),
    ("TEE_STRING_TOO_LONG", None), ("TEE_STRING_INVALID", None),
    ("TEE_MODEL_INVALID", AlertType.MODEL), ("TEE_OUTPUT_UNSUPPORTED", AlertType.MODEL),
    ("TEE_MODEL_TOO_LARGE", AlertType.MODEL), ("LAYOUT_UNSUPPORTED", AlertType.MODEL),
    ("CPK_MODEL_UNSUPPORTED", AlertType.MODEL), ("LAYOUT_INVALID", AlertType.TAMPER),
    ("CPK_WRONG_TARGET", AlertType.DENIAL), ("CPK_EXPIRED", AlertType.DENIAL), ("TEE_ACCESS_DENIED", AlertType.DENIAL),
    ("TEE_UNAVAILABLE", None), ("TEE_BUSY", None), ("CPK_UNREADABLE", None), ("INSTALL_DOWNLOAD_FAILED", None),
])
def test_rollbacks_denials_and_operational_failures(code: str, kind: AlertType | None) -> None:
    assert classify_code(code) is kind


def test_a_model_that_does_not_load_is_a_model_alert_of_severity_error_with_its_cause() -> None:
    cause = ("ONNX Runtime refused the model: Fail: [ONNXRuntimeError] : 1 : FAIL : " + "frame " * 300
             + "env.cc:538 OpenRandomAccessFile Random-access reads require a regular file")
    event = ModuleEvent(EventKind.PACKAGE_FAILED, "package_installer", "magika", "1.0.0",
                        error=ErrorInfo.from_exception(EdbError(cause, code=tee_errors.MODEL_INVALID)),
                        retryable=False)
    alert = classify(event)
    assert alert is not None and alert.alert_type is AlertType.MODEL
    body = alert.to_json()
    assert body["alertType"] == "model" and body["severity"] == "error" and body["code"] == "TEE_MODEL_INVALID"
    assert body["message"].startswith("ONNX Runtime refused the model") and body["message"].endswith("regular file")
    tamper = classify(ModuleEvent(EventKind.PACKAGE_FAILED, "package_installer", "magika", "1.0.0",
                                  error=ErrorInfo("CPK_TAG_MISMATCH", "chunk 3"), retryable=False))
    assert tamper is not None and tamper.alert_type is AlertType.TAMPER and tamper.severity == "critical"


def kr_codes_defined() -> list[str]:
    return sorted(v for k, v in vars(kr_codes).items()
                  if k.isupper() and isinstance(v, str) and v.startswith("KR_") and v != "KR_OK")


@pytest.mark.parametrize("code", kr_codes_defined())
def test_every_key_release_code_is_a_denial_rollback_or_transient(code: str) -> None:
    status = kr_codes.STATUS[code]
    kind = classify_code(code)
    if status == 429 or status >= 500:  # retried by the installer: outages and service faults
        assert kind is None
    elif code == "KR_PACKAGE_SVN_TOO_LOW":
        assert kind is AlertType.ROLLBACK
    else:
        assert kind is AlertType.DENIAL


def test_defined_codes_reads_constants_and_class_codes() -> None:
    codes = alerts.defined_codes(pki_errors, "PKI_")
    assert "PKI_ERROR" in codes and "PKI_UNTRUSTED" in codes
    assert all(isinstance(c, str) for c in codes)
    assert issubclass(pki_errors.CertificateError, EdbError)


# -- hostile packages, end to end through the package library ---------------------------------------

NOW = dt.datetime(2030, 6, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def signed_package(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, list[object]]:
    from edb.pki.devpki import init_publisher_pki

    pki = init_publisher_pki(tmp_path_factory.mktemp("pki") / "pki", kek_bits=2048, now=NOW - dt.timedelta(days=30))
    out = tmp_path_factory.mktemp("pkg") / "p.cpk"
    ident = PackageIdentity(package_id="digits", version="1.0.0", security_version=1,
                            target=Target(device_ids=("dev-1",), device_classes=()),
                            created=NOW - dt.timedelta(days=1), expires=NOW + dt.timedelta(days=30),
                            media_type="application/vnd.onnx", name="d", vendor="v")
    build(io.BytesIO(os.urandom(1500)), out, identity=ident, kek=pki.load_kek(), signer=pki.signer(), chunk_size=256)
    return out.read_bytes(), list(pki.trust_roots())


def test_every_bit_flip_in_the_header_and_table_raises_a_tamper_alert(
        signed_package: tuple[bytes, list[object]], tmp_path: Path) -> None:
    original, roots = signed_package
    path = tmp_path / "flipped.cpk"
    seen: dict[str, int] = {}
    for position in range(HEADER_SIZE + 4 * ENTRY_SIZE):
        for bit in (0x01, 0x80):
            data = bytearray(original)
            data[position] ^= bit
            path.write_bytes(data)
            try:
                with open_package(path) as reader:
                    verify_package(reader, trust_roots=roots, now=NOW, device_id="dev-1")  # type: ignore[arg-type]
            except EdbError as exc:
                event = ModuleEvent(EventKind.PACKAGE_FAILED, "package_installer", "digits", "1.0.0",
                                    error=ErrorInfo.from_exception(exc), retryable=False)
                alert = classify(event)
                assert alert is not None and alert.alert_type is AlertType.TAMPER, (position, bit, exc.code)
                seen[exc.code] = seen.get(exc.code, 0) + 1
            else:
                pytest.fail(f"a flip at byte {position} (bit {bit:#x}) was accepted")
    # the codes the audit found without alerts are among them
    assert {"CPK_TOO_LARGE", "CPK_UNSUPPORTED_VERSION", "CPK_BAD_MAGIC"} <= seen.keys(), seen
