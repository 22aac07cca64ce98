"""The release handler called directly (no HTTP), against the Key Vault stand-in with a real KEK.

Every hostile input of the issue is refused with its code and status, Key Vault ``unwrapKey`` is
never reached unless every check passed, and the service keeps working afterwards."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
from collections.abc import Callable
from typing import Any

import pytest
from azure.keyvault.keys import KeyClient, KeyVaultKey
from azure.keyvault.secrets import SecretClient
from cryptography.hazmat.primitives.asymmetric import ec
from kr_helpers import (
    Manufacturer,
    Publisher,
    SimDevice,
    UnwrapCounter,
    build_package,
    error_code,
    nonce_of,
    release,
    release_body,
    unique,
)

from edb.attestation.evidence import PackageBinding
from edb.attestation.keywrap import open_released_key
from edb.cpk import BuildResult, decrypt_payload, open_package, verify_package
from edb.keys.azure_keyvault import KeyVaultKek
from edb.keys.local import LocalKek
from edb.pki.oids import PUBLISHER_SIGNING_EKU
from key_release_service import codes
from key_release_service.http_types import ApiRequest, ApiResponse
from key_release_service.nonces import NonceIssuer, SpentNonces
from key_release_service.policy import policy_secret_name
from key_release_service.service import KeyReleaseService

ServiceFactory = Callable[..., KeyReleaseService]


@pytest.fixture
def device(manufacturer: Manufacturer) -> SimDevice:
    return manufacturer.device(unique("dev"))


@pytest.fixture
def package(kek: KeyVaultKek, publisher: Publisher, set_policy: Callable[..., Any]) -> tuple[BuildResult, bytes]:
    pid = unique("pkg")
    set_policy(pid)
    return build_package(kek, publisher, pid)


def assert_denied(response: ApiResponse, code: str, status: int) -> None:
    assert response.status == status, response.body
    assert error_code(response.body) == code
    assert set(response.body) == {"error"} and set(response.body["error"]) == {"code", "message"}


async def test_release_happy_path_end_to_end(make_service: ServiceFactory, device: SimDevice,
                                             package: tuple[BuildResult, bytes], publisher: Publisher,
                                             audit_lines: list[str]) -> None:
    service = make_service()
    counter = UnwrapCounter(service)
    pkg, file_bytes = package
    response, otk = await release(service, device, pkg)
    assert response.status == 200, response.body
    assert response.headers["Cache-Control"] == "no-store"
    assert response.body["kid"] == pkg.manifest.kid and "/keys/edb-kek/" in pkg.manifest.kid
    assert response.body["package"] == {"id": pkg.manifest.package_id, "version": "1.0.0", "securityVersion": 1}
    released = open_released_key(response.body["jwe"], otk, package_id=pkg.manifest.package_id, version="1.0.0")
    # the released DEK opens the package: verify + decrypt with the library
    with open_package(io.BytesIO(file_bytes)) as reader:
        verified = verify_package(reader, trust_roots=[publisher.root], now=dt.datetime.now(dt.UTC),
                                  device_id=device.device_id, device_class=device.device_class)
        sink = bytearray(verified.manifest.plaintext_size)
        decrypt_payload(verified, released.dek, sink)
    assert counter.calls == 1
    record = json.loads(audit_lines[-1])
    assert record["decision"] == "allow" and record["code"] == "KR_OK" and record["deviceVerified"] is True
    assert record["device"] == device.device_id and record["kid"] == pkg.manifest.kid
    assert released.dek.hex() not in audit_lines[-1]


async def test_replayed_nonce_refused(make_service: ServiceFactory, device: SimDevice,
                                      package: tuple[BuildResult, bytes]) -> None:
    service = make_service()
    pkg, _ = package
    nonce = await nonce_of(service)
    first, _ = await release(service, device, pkg, nonce=nonce)
    assert first.status == 200
    counter = UnwrapCounter(service)
    replay, _ = await release(service, device, pkg, nonce=nonce)
    assert_denied(replay, codes.NONCE_REPLAYED, 401)
    assert counter.calls == 0


async def test_expired_forged_and_unknown_nonces_refused(make_service: ServiceFactory, device: SimDevice,
                                                         package: tuple[BuildResult, bytes]) -> None:
    key = bytes(range(32))
    service = make_service(nonce_keys=(key,))
    clock = [1000.0]
    service.nonces = NonceIssuer([key], 60, clock=lambda: clock[0])
    service.spent = SpentNonces(clock=lambda: clock[0])
    counter = UnwrapCounter(service)
    pkg, _ = package
    nonce = await nonce_of(service)
    clock[0] += 60.5
    late, _ = await release(service, device, pkg, nonce=nonce)
    assert_denied(late, codes.NONCE_EXPIRED, 401)
    forged = NonceIssuer([bytes(range(1, 33))], 60, clock=lambda: clock[0]).issue()[0]  # well formed, not ours
    for bad in (forged, "bm90LWlzc3VlZC1ieS11cw"):
        unknown, _ = await release(service, device, pkg, nonce=bad)
        assert_denied(unknown, codes.NONCE_UNKNOWN, 401)
    assert counter.calls == 0 and len(service.spent) == 0
    fresh, _ = await release(service, device, pkg)  # nothing lost: a fresh nonce still works
    assert fresh.status == 200


async def test_nonce_flood_stores_nothing_and_the_device_still_gets_its_key(
        make_service: ServiceFactory, device: SimDevice, package: tuple[BuildResult, bytes]) -> None:
    """Anyone may ask for nonces: a flood (from many addresses, so no per-address limit helps)
    leaves no state behind, and a device's release still goes through (the old store answered
    KR_BUSY to everyone once 100 000 nonces were outstanding)."""
    service = make_service()
    for i in range(3000):
        response = await service.nonce(ApiRequest("POST", remote=f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"))
        assert response.status == 200
    assert len(service.spent) == 0 and not hasattr(service.nonces, "_entries")
    pkg, _ = package
    response, _ = await release(service, device, pkg)
    assert response.status == 200, response.body
    assert len(service.spent) == 1  # only an authenticated release adds to the spent set


async def test_evidence_from_uncertified_key_refused(make_service: ServiceFactory, device: SimDevice,
                                                     package: tuple[BuildResult, bytes]) -> None:
    service = make_service()
    counter = UnwrapCounter(service)
    pkg, _ = package
    rogue_key = ec.generate_private_key(ec.SECP256R1())
    response, _ = await release(service, device, pkg, sign_with=rogue_key)
    assert_denied(response, codes.EVIDENCE_SIGNATURE, 401)
    # a whole chain from a manufacturer nobody trusts
    impostor = Manufacturer("Impostor Inc").device(device.device_id)
    response, _ = await release(service, impostor, pkg)
    assert_denied(response, codes.CHAIN_UNTRUSTED, 401)
    assert counter.calls == 0


async def test_expired_and_wrong_purpose_device_certificates_refused(
        make_service: ServiceFactory, manufacturer: Manufacturer, package: tuple[BuildResult, bytes]) -> None:
    service = make_service()
    counter = UnwrapCounter(service)
    pkg, _ = package
    now = dt.datetime.now(dt.UTC)
    expired = manufacturer.device(unique("old"), not_before=now - dt.timedelta(days=400),
                                  not_after=now - dt.timedelta(days=1))
    response, _ = await release(service, expired, pkg)
    assert_denied(response, codes.CERT_EXPIRED, 401)
    signer_cert = manufacturer.device(unique("wrong"), ekus=[PUBLISHER_SIGNING_EKU])
    response, _ = await release(service, signer_cert, pkg)
    assert_denied(response, codes.CERT_WRONG_PURPOSE, 401)  # a chain failure, like the others
    assert counter.calls == 0


async def test_evidence_for_another_package_or_one_time_key_refused(
        make_service: ServiceFactory, device: SimDevice, package: tuple[BuildResult, bytes],
        kek: KeyVaultKek, publisher: Publisher, set_policy: Callable[..., Any]) -> None:
    service = make_service()
    counter = UnwrapCounter(service)
    pkg, _ = package
    other_id = unique("other")
    set_policy(other_id)
    other, _ = build_package(kek, publisher, other_id)
    # evidence made for the other package, request for this one
    m = other.manifest
    binding = PackageBinding(m.package_id, m.version, m.security_version, other.signed.manifest_sha256)
    response, _ = await release(service, device, pkg, binding=binding)
    assert_denied(response, codes.PACKAGE_MISMATCH, 403)
    # same package id and version, but another manifest (e.g. a re-signed one)
    m = pkg.manifest
    binding = PackageBinding(m.package_id, m.version, m.security_version, "00" * 32)
    response, _ = await release(service, device, pkg, binding=binding)
    assert_denied(response, codes.PACKAGE_MISMATCH, 403)
    # request names another package than its manifest
    evidence, _ = device.evidence(await nonce_of(service), pkg)
    response = await service.release(ApiRequest("POST", body=release_body(evidence, pkg, package_id=other_id)))
    assert_denied(response, codes.PACKAGE_MISMATCH, 403)
    # the oneTimeKey sent is not the key the evidence names
    evidence, _ = device.evidence(await nonce_of(service), pkg)
    swapped = dataclasses.replace(evidence, one_time_jwk=device.evidence("n", pkg)[0].one_time_jwk)
    response = await service.release(ApiRequest("POST", body=release_body(swapped, pkg)))
    assert_denied(response, codes.ONE_TIME_KEY_MISMATCH, 401)
    assert counter.calls == 0


@pytest.mark.parametrize(("policy", "evidence_kwargs", "code"), [
    ({"devices": ["someone-else"]}, {}, codes.DEVICE_NOT_ALLOWED),
    ({"device_classes": ["other-class"]}, {}, codes.DEVICE_CLASS_NOT_ALLOWED),
    ({"min_tee_svn": 4}, {}, codes.TEE_SVN_TOO_LOW),
    ({}, {"measurement": "cd" * 32}, codes.MEASUREMENT_NOT_ALLOWED),
    ({"min_security_version": 2}, {}, codes.PACKAGE_SVN_TOO_LOW),
    ({"revoked_versions": ["1.0.0"]}, {}, codes.PACKAGE_REVOKED),
])
async def test_policy_denials(make_service: ServiceFactory, device: SimDevice, kek: KeyVaultKek,
                              publisher: Publisher, set_policy: Callable[..., Any], policy: dict[str, Any],
                              evidence_kwargs: dict[str, Any], code: str, audit_lines: list[str]) -> None:
    service = make_service()
    counter = UnwrapCounter(service)
    pid = unique("pol")
    set_policy(pid, **policy)
    pkg, _ = build_package(kek, publisher, pid, classes=("trustbox-edge-201", "other-class"))
    response, _ = await release(service, device, pkg, **evidence_kwargs)
    assert_denied(response, code, 403)
    assert counter.calls == 0
    record = json.loads(audit_lines[-1])
    assert record["decision"] == "deny" and record["code"] == code and record["package"] == pid


async def test_policy_change_applies_without_redeploy(make_service: ServiceFactory, device: SimDevice,
                                                      package: tuple[BuildResult, bytes],
                                                      set_policy: Callable[..., Any]) -> None:
    service = make_service()
    pkg, _ = package
    assert (await release(service, device, pkg))[0].status == 200
    set_policy(pkg.manifest.package_id, revoked_versions=["1.0.0"])
    assert_denied((await release(service, device, pkg))[0], codes.PACKAGE_REVOKED, 403)
    set_policy(pkg.manifest.package_id)
    assert (await release(service, device, pkg))[0].status == 200


async def test_disabled_kek_version_refused_then_restored(
        make_service: ServiceFactory, device: SimDevice, package: tuple[BuildResult, bytes],
        key_client: KeyClient, kek_key: KeyVaultKey) -> None:
    service = make_service()
    pkg, _ = package
    version = pkg.manifest.kid.rsplit("/", 1)[1]
    key_client.update_key_properties(kek_key.name, version, enabled=False)
    try:
        response, _ = await release(service, device, pkg)
        assert_denied(response, codes.KEK_DISABLED, 403)
    finally:
        key_client.update_key_properties(kek_key.name, version, enabled=True)
    assert (await release(service, device, pkg))[0].status == 200


async def test_manifest_problems_refused(make_service: ServiceFactory, device: SimDevice, kek: KeyVaultKek,
                                         publisher: Publisher, set_policy: Callable[..., Any]) -> None:
    service = make_service()
    counter = UnwrapCounter(service)
    pid = unique("man")
    set_policy(pid)
    # signed by a publisher the service does not pin
    foreign, _ = build_package(kek, Publisher(), pid)
    assert_denied((await release(service, device, foreign))[0], codes.MANIFEST_UNTRUSTED, 403)
    # expired package
    now = dt.datetime.now(dt.UTC)
    old, _ = build_package(kek, publisher, pid, created=now - dt.timedelta(days=2), expires=now - dt.timedelta(days=1))
    assert_denied((await release(service, device, old))[0], codes.PACKAGE_EXPIRED, 403)
    # not targeted at this device's class
    elsewhere, _ = build_package(kek, publisher, pid, classes=("other-class",))
    assert_denied((await release(service, device, elsewhere))[0], codes.TARGET_MISMATCH, 403)
    # DEK wrapped under a key outside the service's vault: the service never calls that "kid"
    local, _ = build_package(LocalKek.generate(2048), publisher, pid)
    assert_denied((await release(service, device, local))[0], codes.KEK_NOT_ALLOWED, 403)
    assert counter.calls == 0


async def test_no_policy_and_invalid_policy(make_service: ServiceFactory, device: SimDevice, kek: KeyVaultKek,
                                            publisher: Publisher, secret_client: SecretClient) -> None:
    service = make_service()
    pid = unique("nopol")
    pkg, _ = build_package(kek, publisher, pid)
    assert_denied((await release(service, device, pkg))[0], codes.POLICY_NOT_FOUND, 404)
    secret_client.set_secret(policy_secret_name(pid), json.dumps({"schema": "edb.release-policy/1",
                                                                  "packageId": pid}))
    assert_denied((await release(service, device, pkg))[0], codes.POLICY_INVALID, 500)


async def test_checks_run_in_order_and_early_failures_keep_the_nonce(
        make_service: ServiceFactory, device: SimDevice, package: tuple[BuildResult, bytes]) -> None:
    service = make_service()
    pkg, _ = package
    nonce = await nonce_of(service)
    # untrusted chain AND (later) wrong one-time key: the chain is reported, the nonce is not consumed
    impostor = Manufacturer("Impostor").device(device.device_id)
    assert_denied((await release(service, impostor, pkg, nonce=nonce))[0], codes.CHAIN_UNTRUSTED, 401)
    response, _ = await release(service, device, pkg, nonce=nonce)
    assert response.status == 200


BAD_BODIES: list[tuple[bytes, str, int]] = [
    (b"", codes.MALFORMED_REQUEST, 400),
    (b"not json", codes.MALFORMED_REQUEST, 400),
    (b"[1, 2]", codes.MALFORMED_REQUEST, 400),
    (b'{"evidence": 1}', codes.MALFORMED_REQUEST, 400),
    (b"[" * 100_000, codes.MALFORMED_REQUEST, 400),
    (b'{"a": "' + b"x" * (300 * 1024) + b'"}', codes.REQUEST_TOO_LARGE, 413),
]


@pytest.mark.parametrize(("body", "code", "status"), BAD_BODIES, ids=["empty", "text", "array", "partial",
                                                                      "deep", "oversized"])
async def test_malformed_bodies(make_service: ServiceFactory, body: bytes, code: str, status: int) -> None:
    service = make_service()
    assert_denied(await service.release(ApiRequest("POST", body=body)), code, status)


@pytest.mark.parametrize("mutation", [
    lambda b: b.update(evidence=123),
    lambda b: b.update(certChain="abc"),
    lambda b: b.update(certChain=[]),
    lambda b: b.update(certChain=["!!notbase64"]),
    lambda b: b.update(certChain=["aGVsbG8="]),  # base64, but not a certificate
    lambda b: b.update(oneTimeKey={"kty": "RSA", "n": "x", "e": "AQAB"}),
    lambda b: b.update(oneTimeKey=[1]),
    lambda b: b["package"].update(version=7),
    lambda b: b.update(extra=True),
    lambda b: b["manifest"].update(json=None),
    lambda b: b["manifest"].update(chain=["x"] * 9),
    lambda b: b.update(evidence="a.b"),
], ids=["evidence-int", "chain-str", "chain-empty", "chain-b64", "chain-not-der", "otk-rsa", "otk-list",
        "version-int", "extra-member", "manifest-null", "manifest-chain-long", "evidence-shape"])
async def test_wrongly_typed_members(make_service: ServiceFactory, device: SimDevice,
                                     package: tuple[BuildResult, bytes], mutation: Callable[[dict[str, Any]], None]
                                     ) -> None:
    service = make_service()
    counter = UnwrapCounter(service)
    pkg, _ = package
    evidence, _ = device.evidence(await nonce_of(service), pkg)
    body = json.loads(release_body(evidence, pkg))
    mutation(body)
    response = await service.release(ApiRequest("POST", body=json.dumps(body).encode()))
    assert response.status == 400, response.body
    assert error_code(response.body) in (codes.MALFORMED_REQUEST, codes.CHAIN_MALFORMED, codes.EVIDENCE_MALFORMED)
    assert counter.calls == 0


async def test_burst_over_rate_limit(make_service: ServiceFactory, device: SimDevice,
                                     package: tuple[BuildResult, bytes]) -> None:
    service = make_service(rate_burst=2, rate_per_minute=1.0)
    pkg, _ = package
    assert (await release(service, device, pkg))[0].status == 200
    assert (await release(service, device, pkg))[0].status == 200
    limited, _ = await release(service, device, pkg)
    assert_denied(limited, codes.RATE_LIMITED, 429)
    assert int(limited.headers["Retry-After"]) >= 1
    assert_denied((await release(service, device, pkg))[0], codes.RATE_LIMITED, 429)


async def test_keyvault_unavailable_is_retryable(make_service: ServiceFactory, device: SimDevice,
                                                 package: tuple[BuildResult, bytes], keyvault: Any) -> None:
    from edb_local.net import free_port

    dead = f"https://{keyvault.address}:{free_port(keyvault.address)}"
    service = make_service(vault_url=dead)
    pkg, _ = package
    response, _ = await release(service, device, pkg)
    assert_denied(response, codes.KEYVAULT_UNAVAILABLE, 503)
    assert response.headers["Retry-After"]
