"""edb.schemas: strict parsing of hostile twins, message shapes, twin merging."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edb.schemas import (
    Alert,
    AlertType,
    DesiredPackage,
    ErrorInfo,
    EventKind,
    InferenceResult,
    InvalidDesired,
    MessageError,
    ModelRef,
    ModuleEvent,
    PackageState,
    ReportedPackage,
    decode_json,
    encode_json,
    merge_twin_patch,
    parse_batching,
    parse_desired_packages,
    parse_model_spec,
    version_key,
)
from edb.schemas.common import MAX_ERROR_MESSAGE, clip_message
from edb.schemas.packages import check_url
from package_installer.errors import InstallError
from package_installer.sources import FileSource, HttpsSource, PackageHosts, resolve_source, same_origin

SHA = "0f" * 32
GOOD = {"version": "1.0.0", "url": "https://acct.blob.core.windows.net/c/d.cpk?sv=x&sig=y", "sha256": SHA,
        "size": 4096}


def code_of(entry: DesiredPackage | InvalidDesired) -> str:
    assert isinstance(entry, InvalidDesired), entry
    return entry.error.code


def test_valid_entry_parses() -> None:
    parsed = parse_desired_packages({"$version": 4, "packages": {"digits": GOOD}})
    assert parsed == {"digits": DesiredPackage("digits", "1.0.0", GOOD["url"], SHA, 4096)}  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ({**GOOD, "size": "4096"}, "INSTALL_INVALID_DESIRED"),
        ({**GOOD, "size": True}, "INSTALL_INVALID_DESIRED"),
        ({**GOOD, "size": -1}, "INSTALL_INVALID_DESIRED"),
        ({**GOOD, "size": 10**15}, "INSTALL_TOO_LARGE"),
        ({**GOOD, "version": 1}, "INSTALL_INVALID_DESIRED"),
        ({**GOOD, "version": "x" * 5000}, "INSTALL_INVALID_DESIRED"),
        ({**GOOD, "sha256": "AB" * 32}, "INSTALL_INVALID_DESIRED"),
        ({**GOOD, "sha256": ["a"]}, "INSTALL_INVALID_DESIRED"),
        ({**GOOD, "url": "http://plain.example/x.cpk"}, "INSTALL_URL_SCHEME"),
        ({**GOOD, "url": "ftp://host/x.cpk"}, "INSTALL_URL_SCHEME"),
        ({**GOOD, "url": "javascript:alert(1)"}, "INSTALL_URL_SCHEME"),
        ({**GOOD, "url": "https://" + "a" * 5000}, "INSTALL_INVALID_URL"),
        ({**GOOD, "url": "https://user:pw@host/x"}, "INSTALL_INVALID_URL"),
        ({**GOOD, "url": "https://host:99999/x"}, "INSTALL_INVALID_URL"),
        ({**GOOD, "url": "https://host/a b"}, "INSTALL_INVALID_URL"),
        ({**GOOD, "url": "file://remote/x.cpk"}, "INSTALL_INVALID_URL"),
        ({**GOOD, "url": 7}, "INSTALL_INVALID_DESIRED"),
        ({**GOOD, "extra": "x"}, "INSTALL_INVALID_DESIRED"),
        ("a string", "INSTALL_INVALID_DESIRED"),
        ([1, 2, 3], "INSTALL_INVALID_DESIRED"),
        (42, "INSTALL_INVALID_DESIRED"),
    ],
)
def test_hostile_values_become_failed_entries_with_codes(value: object, code: str) -> None:
    parsed = parse_desired_packages({"packages": {"digits": value}})
    assert code_of(parsed["digits"]) == code


@pytest.mark.parametrize("name", ["../x", "..", "a/b", "a.b", "", " x", "x" * 65, "$x", "a\x00b", "Digits"])
def test_hostile_names_are_refused_under_a_safe_label(name: str) -> None:
    parsed = parse_desired_packages({"packages": {name: GOOD}})
    (label,) = parsed
    assert code_of(parsed[label]) == "INSTALL_INVALID_NAME"
    assert label.startswith("invalid-") and all(c.isalnum() or c == "-" for c in label)


def test_packages_section_of_the_wrong_type() -> None:
    parsed = parse_desired_packages({"packages": ["x"]})
    assert code_of(parsed["_section"]) == "INSTALL_INVALID_DESIRED"


def test_null_entries_are_removals() -> None:
    assert parse_desired_packages({"packages": {"digits": None}}) == {}


@settings(max_examples=150, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
                    max_leaves=20))
def test_any_json_value_never_crashes_the_parser(value: object) -> None:
    result = parse_desired_packages({"packages": value})
    for entry in result.values():
        assert isinstance(entry, DesiredPackage | InvalidDesired)
    parse_model_spec(value)
    parse_batching(value)


def test_reported_package_round_trips_and_tolerates_garbage() -> None:
    r = ReportedPackage(PackageState.FAILED, "2", 3, SHA, ErrorInfo("KR_DENIED", "no"), installed_version="1")
    assert ReportedPackage.from_twin(r.to_twin()) == r
    assert ReportedPackage.from_twin({"state": "weird"}) is None
    assert ReportedPackage.from_twin("x") is None


def test_error_info_from_unexpected_exception_hides_its_text() -> None:
    info = ErrorInfo.from_exception(KeyError("secret-looking-value"))
    assert info == ErrorInfo("EDB_INTERNAL", "KeyError")
    assert len(ErrorInfo.from_exception(InstallError("x" * 2000)).message) <= MAX_ERROR_MESSAGE


def test_error_message_clip_keeps_the_head_and_the_root_cause_at_the_end() -> None:
    # ONNX Runtime nests the root cause last: a head-only cut (the old 300-character one) lost it
    text = "ONNX Runtime refused the model: Fail: " + "frame " * 400 + "env.cc:538 OpenRandomAccessFile reads"
    clipped = clip_message(text, 200)
    assert len(clipped) <= 200
    assert clipped.startswith("ONNX Runtime refused the model: Fail:")
    assert clipped.endswith("env.cc:538 OpenRandomAccessFile reads")
    assert " ... " in clipped
    assert clip_message("short", 200) == "short"
    info = ErrorInfo.from_exception(InstallError(text))
    assert len(info.message) <= MAX_ERROR_MESSAGE and info.message.endswith("OpenRandomAccessFile reads")
    assert ErrorInfo.from_json({"code": info.code, "message": text}) == info


def test_merge_twin_patch_merges_objects_and_deletes_nulls() -> None:
    doc = {"packages": {"a": {"version": "1"}, "b": {"version": "1"}}, "model": {"name": "a"}}
    out = merge_twin_patch(doc, {"packages": {"a": None, "c": {"version": "2"}}, "model": {"minVersion": "2"}})
    assert out == {"packages": {"b": {"version": "1"}, "c": {"version": "2"}},
                   "model": {"name": "a", "minVersion": "2"}}
    assert doc["packages"]["a"] == {"version": "1"}  # input untouched


def test_runner_desired_parsing() -> None:
    assert parse_model_spec({"name": "digits", "minVersion": "2.0.0"}).min_version == "2.0.0"  # type: ignore[union-attr]
    assert isinstance(parse_model_spec({"name": "../x"}), ErrorInfo)
    assert parse_model_spec(None) is None
    assert parse_batching({"maxBatch": 16, "maxLatencyMs": 5}).max_batch == 16  # type: ignore[union-attr]
    assert isinstance(parse_batching({"maxBatch": 10**9}), ErrorInfo)
    assert isinstance(parse_batching({"maxLatencyMs": "5"}), ErrorInfo)


def test_version_order() -> None:
    assert version_key("1.2.10") > version_key("1.2.9")
    assert version_key("2.0.0") > version_key("1.99")
    assert version_key("1.0.0") == version_key("1.0.0")


def test_messages_are_compact_utf8_json_with_message_type() -> None:
    event = ModuleEvent(EventKind.PACKAGE_FAILED, "package_installer", "digits", "2", 2,
                        "failed", ErrorInfo("CPK_TAG_MISMATCH", "chunk 3"))
    body = decode_json(encode_json(event.to_json()))
    assert body["messageType"] == "event"
    assert ModuleEvent.from_json(body) == event
    result = InferenceResult("m-1", ModelRef("digits", "1.0.0"), [3], [0.9], expected=3, latency_ms=1.5)
    assert InferenceResult.from_json(json.loads(encode_json(result.to_json()))) == result
    alert = Alert(AlertType.ROLLBACK, "TEE_ROLLBACK", "older", "digits", "1", "package_installer")
    assert decode_json(encode_json(alert.to_json()))["alertType"] == "rollback"


@pytest.mark.parametrize("data", [b"\xff\xfe", b"[1,2]", b"nope", b"{" * 10, b"x" * (300 * 1024)])
def test_decode_json_refuses_non_objects_and_oversized_bodies(data: bytes) -> None:
    with pytest.raises(MessageError):
        decode_json(data)


def test_check_url_accepts_sas_urls() -> None:
    assert check_url(GOOD["url"]) == GOOD["url"]


def test_resolve_source_https_and_allowed_file(tmp_path: Path) -> None:
    assert resolve_source("https://Host:8443/x", (), PackageHosts.parse("host:8443")) == HttpsSource(
        "https://Host:8443/x", "host", 8443)
    store = tmp_path / "store"
    store.mkdir()
    (store / "a.cpk").write_bytes(b"x")
    assert resolve_source(f"file://{store}/a.cpk", (store,), PackageHosts()) == FileSource(store / "a.cpk")


@pytest.mark.parametrize("suffix", ["/../secret.cpk", "/%2e%2e/secret.cpk", "/link.cpk", ""])
def test_file_urls_outside_the_allowed_directory_are_refused(tmp_path: Path, suffix: str) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (tmp_path / "secret.cpk").write_bytes(b"x")
    (store / "link.cpk").symlink_to(tmp_path / "secret.cpk")
    with pytest.raises(InstallError) as info:
        resolve_source(f"file://{store}{suffix}", (store,), PackageHosts())
    assert info.value.code == "INSTALL_PATH_OUTSIDE"


def test_file_urls_refused_when_no_directory_is_allowed(tmp_path: Path) -> None:
    with pytest.raises(InstallError) as info:
        resolve_source(f"file://{tmp_path}/x.cpk", (), PackageHosts())
    assert info.value.code == "INSTALL_PATH_OUTSIDE"


@pytest.mark.parametrize("location", ["https://other.example/x", "http://host/x", "https://host:444/x",
                                      "//other/x", "https://host:bad/x"])
def test_redirects_to_another_origin_are_refused(location: str) -> None:
    with pytest.raises(InstallError) as info:
        same_origin(HttpsSource("https://host/x", "host", 443), location)
    assert info.value.code == "INSTALL_REDIRECT_REFUSED"
    assert same_origin(HttpsSource("https://host/x", "host", 443), "https://HOST/y").url == "https://HOST/y"
    assert same_origin(HttpsSource("https://host/a/x", "host", 443), "/b/y").url == "https://host/b/y"
