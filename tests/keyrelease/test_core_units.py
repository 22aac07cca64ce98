"""Pure parts of the service without I/O: nonce store, rate limiter, policy documents and
evaluation order, request parsing, legacy request parsing, audit line shape, configuration."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from edb.errors import ConfigError
from key_release_service import codes
from key_release_service.audit import AuditRecord
from key_release_service.codes import STATUS, Denied
from key_release_service.config import ServiceConfig
from key_release_service.keyvault import check_kid, is_loopback_url
from key_release_service.legacy import check_key_name, parse_wrap_request, wrap_class_key
from key_release_service.nonces import NonceStore
from key_release_service.policy import (
    ReleaseFacts,
    build_policy,
    evaluate,
    parse_policy,
    policy_secret_name,
)
from key_release_service.ratelimit import RateLimiter
from key_release_service.request import parse_release_request


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _code(exc: pytest.ExceptionInfo[Denied]) -> str:
    return exc.value.code


def test_every_code_has_a_status_and_the_kr_prefix() -> None:
    assert all(code.startswith("KR_") and 400 <= status < 600 for code, status in STATUS.items())
    with pytest.raises(ValueError):
        Denied("KR_NOT_A_CODE", "x")


def test_nonce_single_use_lifetime_and_tombstones() -> None:
    clock = Clock()
    store = NonceStore(60, clock=clock)
    nonce, _ = store.issue()
    assert len(base64.urlsafe_b64decode(nonce + "=")) == 32
    store.consume(nonce)
    with pytest.raises(Denied) as exc:
        store.consume(nonce)
    assert _code(exc) == codes.NONCE_REPLAYED
    late, _ = store.issue()
    clock.t += 60
    with pytest.raises(Denied) as exc:
        store.consume(late)
    assert _code(exc) == codes.NONCE_EXPIRED
    with pytest.raises(Denied) as exc:  # an expired nonce is burnt, too
        store.consume(late)
    assert _code(exc) == codes.NONCE_REPLAYED
    clock.t += 61  # tombstones are forgotten after one more lifetime
    with pytest.raises(Denied) as exc:
        store.consume(late)
    assert _code(exc) == codes.NONCE_UNKNOWN
    assert len(store) == 0
    with pytest.raises(ValueError):
        NonceStore(61)


def test_nonce_store_is_bounded() -> None:
    clock = Clock()
    store = NonceStore(60, max_outstanding=3, clock=clock)
    for _ in range(3):
        store.issue()
    with pytest.raises(Denied) as exc:
        store.issue()
    assert _code(exc) == codes.BUSY and exc.value.status == 503
    clock.t += 121
    store.issue()  # swept


def test_rate_limiter_burst_refill_and_isolation() -> None:
    clock = Clock()
    limiter = RateLimiter(burst=3, per_minute=6, clock=clock)  # one token per 10 s
    for _ in range(3):
        limiter.check("dev-a")
    with pytest.raises(Denied) as exc:
        limiter.check("dev-a")
    assert _code(exc) == codes.RATE_LIMITED and exc.value.retry_after == 10
    limiter.check("dev-b")  # another device has its own bucket
    clock.t += 10
    limiter.check("dev-a")
    with pytest.raises(Denied):
        limiter.check("dev-a")


def _facts(**overrides: object) -> ReleaseFacts:
    base = {"device_id": "dev-1", "device_class": "tb", "tee_svn": 3, "tee_measurement": "ab" * 32,
            "package_id": "p", "version": "1.0.0", "security_version": 2}
    base.update(overrides)
    return ReleaseFacts(**base)  # type: ignore[arg-type]


def test_policy_evaluation_order_and_codes() -> None:
    policy = build_policy("p", devices=["dev-1"], device_classes=["tb"], min_tee_svn=3,
                          measurements=["ab" * 32], min_security_version=2, revoked_versions=["0.9"])
    evaluate(policy, _facts())
    cases = [
        (_facts(device_id="x", device_class="x", tee_svn=0), codes.DEVICE_NOT_ALLOWED),
        (_facts(device_class="x", tee_svn=0), codes.DEVICE_CLASS_NOT_ALLOWED),
        (_facts(tee_svn=2, tee_measurement="cd" * 32), codes.TEE_SVN_TOO_LOW),
        (_facts(tee_measurement="cd" * 32, security_version=0), codes.MEASUREMENT_NOT_ALLOWED),
        (_facts(security_version=1, version="0.9"), codes.PACKAGE_SVN_TOO_LOW),
        (_facts(version="0.9"), codes.PACKAGE_REVOKED),
    ]
    for facts, code in cases:
        with pytest.raises(Denied) as exc:
            evaluate(policy, facts)
        assert _code(exc) == code


def test_policy_documents_fail_closed() -> None:
    good = build_policy("p", device_classes=["tb"], measurements=None)
    assert parse_policy(good.dumps(), expected_package_id="p") == good
    assert json.loads(good.dumps())["measurements"] == "any"
    bad_docs = [
        "not json",
        json.dumps({"schema": "edb.release-policy/1", "packageId": "p", "measurements": "any"}),  # no devices
        json.dumps({"schema": "edb.release-policy/1", "packageId": "q", "deviceClasses": ["tb"],
                    "measurements": "any"}),  # another package
        json.dumps({"schema": "edb.release-policy/1", "packageId": "p", "deviceClasses": ["tb"],
                    "measurements": ["xyz"]}),
        json.dumps({"schema": "edb.release-policy/1", "packageId": "p", "deviceClasses": ["tb"],
                    "measurements": "any", "minTeeSvn": -1}),
        json.dumps({"schema": "edb.release-policy/1", "packageId": "p", "deviceClasses": ["tb"],
                    "measurements": "any", "allowEverything": True}),
        json.dumps({"schema": "edb.release-policy/2", "packageId": "p", "deviceClasses": ["tb"]}),
        "x" * (25 * 1024),
    ]
    for doc in bad_docs:
        with pytest.raises(Denied) as exc:
            parse_policy(doc, expected_package_id="p")
        assert _code(exc) == codes.POLICY_INVALID
    doc = json.loads(good.dumps())
    del doc["measurements"]  # measurements must be explicit
    with pytest.raises(Denied):
        parse_policy(json.dumps(doc), expected_package_id="p")


def test_policy_secret_names() -> None:
    assert policy_secret_name("digits-classifier") == "edb-policy-digits-classifier"
    odd = policy_secret_name("com.example:model_1")
    assert odd.startswith("edb-policy-x-") and len(odd) <= 127
    assert policy_secret_name("x-abc") != "edb-policy-x-abc"
    assert policy_secret_name("a.b") != policy_secret_name("a_b")


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=2048))
def test_release_request_parser_never_crashes(data: bytes) -> None:
    with pytest.raises(Denied) as exc:
        parse_release_request(data)
    assert exc.value.status in (400, 413)


@settings(max_examples=100, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10),
                                                                                      children, max_size=4),
                    max_leaves=20))
def test_release_request_parser_rejects_any_json_shape(value: object) -> None:
    with pytest.raises(Denied) as exc:
        parse_release_request(json.dumps(value).encode())
    assert exc.value.code == codes.MALFORMED_REQUEST


def test_kid_must_be_a_version_in_our_vault() -> None:
    vault = "https://127.0.0.9:8443"
    check_kid(f"{vault}/keys/edb-kek/{'a' * 32}", vault, frozenset({"edb-kek"}))
    for kid, names in [
        (f"{vault}/keys/edb-kek", None),  # no version
        (f"https://evil.example/keys/edb-kek/{'a' * 32}", None),  # another vault
        (f"https://127.0.0.9:9443/keys/edb-kek/{'a' * 32}", None),  # another port
        (f"{vault}/secrets/edb-kek/{'a' * 32}", None),
        (f"{vault}/keys/other/{'a' * 32}", frozenset({"edb-kek"})),
        ("local:0123", None),
    ]:
        with pytest.raises(Denied) as exc:
            check_kid(kid, vault, names)
        assert _code(exc) == codes.KEK_NOT_ALLOWED
    assert is_loopback_url(vault) and not is_loopback_url("https://x.vault.azure.net")


def test_legacy_request_parsing_and_wrap() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    body = json.dumps({"key_name": "3f2b-11aa", "client_public_key": base64.b64encode(spki).decode()}).encode()
    name, public = parse_wrap_request(body)
    assert name == "3f2b-11aa"
    wrapped = wrap_class_key(b"k" * 32, public)
    assert key.decrypt(base64.b64decode(wrapped), padding.PKCS1v15()) == b"k" * 32
    ec_spki = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    for bad, code in [
        ({"key_name": "a", "client_public_key": base64.b64encode(ec_spki).decode()}, codes.LEGACY_BAD_PUBLIC_KEY),
        ({"key_name": "a", "client_public_key": "!!"}, codes.LEGACY_BAD_PUBLIC_KEY),
        ({"key_name": "edb-policy-x", "client_public_key": "AA=="}, codes.LEGACY_BAD_KEY_NAME),
        ({"key_name": "../etc", "client_public_key": "AA=="}, codes.LEGACY_BAD_KEY_NAME),
        ({"key_name": "a"}, codes.MALFORMED_REQUEST),
    ]:
        with pytest.raises(Denied) as exc:
            parse_wrap_request(json.dumps(bad).encode())
        assert _code(exc) == code
    with pytest.raises(Denied):
        check_key_name(None)


def test_audit_line_shape() -> None:
    line = AuditRecord(event="release", decision="deny", code=codes.NONCE_REPLAYED, device="d",
                       package="p", version="1").to_line()
    data = json.loads(line)
    assert set(data) >= {"time", "event", "decision", "code", "device", "package", "version", "deviceVerified"}
    assert data["time"].endswith("Z") and "\n" not in line


def test_config_from_env(tmp_path: Path) -> None:
    from kr_helpers import Manufacturer, Publisher

    from edb.pki.certs import to_pem

    (tmp_path / "m.pem").write_bytes(to_pem([Manufacturer().root]))
    env = {"EDB_KEYVAULT_URL": "https://v.vault.azure.net/", "EDB_KR_MANUFACTURER_ROOTS": str(tmp_path / "m.pem"),
           "EDB_KR_PUBLISHER_ROOTS_PEM": to_pem([Publisher().root]).decode(), "EDB_KR_KEK_NAMES": "a, b",
           "EDB_KR_LEGACY_ENABLED": "1"}
    config = ServiceConfig.from_env(env)
    assert config.vault_url == "https://v.vault.azure.net" and config.kek_names == frozenset({"a", "b"})
    assert config.legacy_enabled and config.nonce_ttl_s == 60 and config.credential == "default"
    for broken in ({**env, "EDB_KR_NONCE_TTL_S": "61"}, {k: v for k, v in env.items() if k != "EDB_KEYVAULT_URL"},
                   {**env, "EDB_KR_MANUFACTURER_ROOTS": str(tmp_path / "missing.pem")}):
        with pytest.raises(ConfigError):
            ServiceConfig.from_env(broken)
