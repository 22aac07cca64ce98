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
from key_release_service.functions_adapter import platform_client_address
from key_release_service.keyvault import check_kid, is_loopback_url
from key_release_service.legacy import (
    LEGACY_CONTENT_TYPE,
    check_key_name,
    class_key_from_secret,
    legacy_secret_name,
    parse_wrap_request,
    wrap_class_key,
)
from key_release_service.nonce_keys import load_or_create_key_file, parse_nonce_keys
from key_release_service.nonces import NONCE_CHARS, NonceIssuer, SpentNonces
from key_release_service.policy import (
    ReleaseFacts,
    build_policy,
    evaluate,
    parse_policy,
    policy_secret_name,
)
from key_release_service.ratelimit import RateLimiter, address_key
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


KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def _spend(spent: SpentNonces, issuer: NonceIssuer, nonce: str) -> None:
    spent.spend(issuer.check(nonce))


def test_nonce_is_ours_fresh_and_single_use() -> None:
    clock = Clock()
    issuer, spent = NonceIssuer([KEY], 60, clock=clock), SpentNonces(clock=clock)
    nonce, expires = issuer.issue()
    assert len(nonce) == NONCE_CHARS == 98 and expires == clock.t + 60
    assert len(base64.urlsafe_b64decode(nonce + "==")) == 73
    _spend(spent, issuer, nonce)
    with pytest.raises(Denied) as exc:
        _spend(spent, issuer, nonce)
    assert _code(exc) == codes.NONCE_REPLAYED and exc.value.status == 401
    late, _ = issuer.issue()
    clock.t += 60
    for _ in range(2):  # expired is final: never accepted, however often it comes back
        with pytest.raises(Denied) as exc:
            _spend(spent, issuer, late)
        assert _code(exc) == codes.NONCE_EXPIRED
    with pytest.raises(Denied) as exc:  # the spent one expired too: refused by its expiry now
        _spend(spent, issuer, nonce)
    assert _code(exc) == codes.NONCE_EXPIRED
    assert len(spent) == 0  # swept: the spent set holds only unexpired nonces
    with pytest.raises(ValueError):
        NonceIssuer([KEY], 61)
    with pytest.raises(ValueError):
        NonceIssuer([b"short"])
    assert "00010203" not in repr(issuer) and KEY.hex() not in repr(issuer)


def test_forged_tampered_and_malformed_nonces_are_unknown() -> None:
    clock = Clock()
    issuer = NonceIssuer([KEY], 60, clock=clock)
    forged, _ = NonceIssuer([OTHER_KEY], 60, clock=clock).issue()  # right shape, another key
    good, _ = issuer.issue()
    raw = bytearray(base64.urlsafe_b64decode(good + "=="))
    raw[40] ^= 1  # push the expiry out by a bit: the MAC no longer matches
    tampered = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    ahead = NonceIssuer([KEY], 60, clock=lambda: clock.t + 30).issue()[0]  # our key, expiry 90 s away
    for bad in (forged, tampered, ahead, good[:-1], good + "A", "bm90LWlzc3VlZC1ieS11cw", "",
                good[:-2] + ("B" if good[-2] != "B" else "C") + good[-1], "!" * 98, good.replace(good[5], "+", 1)):
        with pytest.raises(Denied) as exc:
            issuer.check(bad)
        assert _code(exc) == codes.NONCE_UNKNOWN, bad
    # key rotation: a nonce made with the previous key still verifies while both are configured
    rotated = NonceIssuer([OTHER_KEY, KEY], 60, clock=clock)
    assert rotated.check(good).expires == clock.t + 60


def test_issuing_nonces_stores_nothing_so_a_flood_cannot_lock_devices_out() -> None:
    """The old store capped outstanding nonces and answered KR_BUSY past the cap to everyone."""
    clock = Clock()
    issuer, spent = NonceIssuer([KEY], 60, clock=clock), SpentNonces(max_entries=3, clock=clock)
    flood = [issuer.issue()[0] for _ in range(5000)]
    assert len(set(flood)) == 5000 and len(spent) == 0
    assert set(vars(issuer)) == {"_keys", "ttl_s", "_clock", "_random"}  # no per-nonce state anywhere
    device_nonce, _ = issuer.issue()
    _spend(spent, issuer, device_nonce)  # the device's release still goes through
    for nonce in flood[:2]:
        _spend(spent, issuer, nonce)
    with pytest.raises(Denied) as exc:  # the bound applies to spent nonces only (authenticated releases)
        _spend(spent, issuer, flood[2])
    assert _code(exc) == codes.BUSY and exc.value.status == 503
    clock.t += 60
    _spend(spent, issuer, issuer.issue()[0])  # expired entries leave the set


def test_nonce_keys_from_configuration(tmp_path: Path) -> None:
    text = base64.b64encode(KEY).decode() + ", " + base64.urlsafe_b64encode(OTHER_KEY).decode().rstrip("=")
    assert parse_nonce_keys(text, what="x") == (KEY, OTHER_KEY)
    for bad in ("", "not base64!", base64.b64encode(b"16 bytes only...").decode(), ",".join(["AAAA"] * 5)):
        with pytest.raises(ConfigError):
            parse_nonce_keys(bad, what="x")
    path = tmp_path / "nonce.key"
    made = load_or_create_key_file(path)
    assert len(made) == 1 and len(made[0]) == 32 and path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_key_file(path) == made  # kept across restarts, never overwritten
    path.chmod(0o644)
    with pytest.raises(ConfigError):
        load_or_create_key_file(path)


def test_client_address_of_a_request() -> None:
    assert address_key("10.0.0.4") == "10.0.0.4"
    assert address_key("2001:db8::1") == address_key("2001:db8::ffff") == "2001:db8::/64"
    assert address_key("::ffff:10.0.0.4") == "10.0.0.4"
    assert address_key(None) == address_key("garbage") == "unknown"
    # only the entry App Service's front end appended counts: a client cannot choose its bucket
    assert platform_client_address("6.6.6.6, 10.0.0.4:52311") == "10.0.0.4"
    assert platform_client_address("[2001:db8::1]:443") == "2001:db8::1"
    assert platform_client_address("10.0.0.4") == "10.0.0.4"
    assert platform_client_address("") is None


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


def test_class_keys_live_only_in_their_namespace_with_their_content_type() -> None:
    assert legacy_secret_name("3f2b-11aa") == "edb-legacy-3f2b-11aa"
    assert len(legacy_secret_name("a" * 116)) == 127  # Key Vault's longest secret name
    for bad in ("a" * 117, "-lead", "", "a/b", "a.b", "edb-policy-x", "EDB-x", "caf\u00e9", None, 7):
        with pytest.raises(Denied) as exc:
            legacy_secret_name(bad)  # type: ignore[arg-type]
        assert _code(exc) == codes.LEGACY_BAD_KEY_NAME
    stored = base64.b64encode(b"k" * 32).decode()
    assert class_key_from_secret(stored, LEGACY_CONTENT_TYPE) == b"k" * 32
    for value, content_type in [(stored, None), (stored, "application/json"), (stored, LEGACY_CONTENT_TYPE + "x"),
                                (base64.b64encode(b"k" * 31).decode(), LEGACY_CONTENT_TYPE),
                                ("not base64!", LEGACY_CONTENT_TYPE), (None, LEGACY_CONTENT_TYPE)]:
        with pytest.raises(Denied) as exc:
            class_key_from_secret(value, content_type)
        assert _code(exc) == codes.LEGACY_NOT_CLASS_KEY and exc.value.status == 403


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
    assert config.nonce_keys == () and (config.nonce_rate_burst, config.nonce_rate_per_minute) == (30, 120)
    keyed = ServiceConfig.from_env({**env, "EDB_KR_NONCE_KEY": base64.b64encode(KEY).decode()})
    assert keyed.nonce_keys == (KEY,) and KEY.hex() not in repr(keyed)
    from_file = ServiceConfig.from_env({**env, "EDB_KR_NONCE_KEY_FILE": str(tmp_path / "nonce.key")})
    assert from_file.nonce_keys == ServiceConfig.from_env({**env, "EDB_KR_NONCE_KEY_FILE": str(tmp_path / "nonce.key")}
                                                          ).nonce_keys
    with pytest.raises(ConfigError):
        ServiceConfig.from_env({**env, "EDB_KR_NONCE_KEY": "AAAA", "EDB_KR_NONCE_KEY_FILE": "x"})
    for broken in ({**env, "EDB_KR_NONCE_TTL_S": "61"}, {k: v for k, v in env.items() if k != "EDB_KEYVAULT_URL"},
                   {**env, "EDB_KR_MANUFACTURER_ROOTS": str(tmp_path / "missing.pem")}):
        with pytest.raises(ConfigError):
            ServiceConfig.from_env(broken)
