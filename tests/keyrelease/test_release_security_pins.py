"""Key release checks that a hand-made mutation run found unpinned (issue 13 item 11): each test
fails if its check is removed or weakened. The release handler is called directly, with a real KEK
in the Key Vault stand-in; Key Vault ``unwrapKey`` is never reached on a refusal."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID
from kr_helpers import Manufacturer, Publisher, UnwrapCounter, build_package, error_code, release, unique

from edb.cpk.signed import SignedManifest
from edb.keys.azure_keyvault import KeyVaultKek
from edb.pki.certs import to_der
from key_release_service import codes
from key_release_service.codes import Denied
from key_release_service.http_types import ApiResponse
from key_release_service.policy import ReleaseFacts, build_policy, evaluate, parse_policy
from key_release_service.service import KeyReleaseService

ServiceFactory = Callable[..., KeyReleaseService]
CLASS = "trustbox-edge-201"


def assert_denied(response: ApiResponse, code: str, status: int) -> None:
    assert response.status == status, response.body
    assert error_code(response.body) == code


async def test_chain_stream_differing_from_the_signed_digest_refused(
        make_service: ServiceFactory, manufacturer: Manufacturer, kek: KeyVaultKek, publisher: Publisher,
        set_policy: Callable[..., Any]) -> None:
    """The leaf plus the (pinned) root still validates, but it is not the chain the manifest records."""
    service = make_service()
    counter = UnwrapCounter(service)
    pid = unique("chain")
    set_policy(pid)
    pkg, _ = build_package(kek, publisher, pid)
    assert len(pkg.signed.chain) == 1
    longer = SignedManifest(manifest_bytes=pkg.signed.manifest_bytes, signature=pkg.signed.signature,
                            chain=(*pkg.signed.chain, to_der(publisher.root)))
    device = manufacturer.device(unique("dev"))
    response, _ = await release(service, device, dataclasses.replace(pkg, signed=longer))
    assert_denied(response, codes.MANIFEST_UNTRUSTED, 403)
    response, _ = await release(service, device, pkg)  # the same package with its own chain is released
    assert response.status == 200
    assert counter.calls == 1


async def test_evidence_naming_another_device_signed_by_this_devices_key(
        make_service: ServiceFactory, manufacturer: Manufacturer, kek: KeyVaultKek, publisher: Publisher,
        set_policy: Callable[..., Any]) -> None:
    service = make_service()
    counter = UnwrapCounter(service)
    pid = unique("subj")
    set_policy(pid)
    pkg, _ = build_package(kek, publisher, pid)
    device_a, device_b = manufacturer.device(unique("dev-a")), manufacturer.device(unique("dev-b"))
    response, _ = await release(service, device_a, pkg, device_id=device_b.device_id)
    assert_denied(response, codes.DEVICE_MISMATCH, 401)
    assert counter.calls == 0


async def test_device_leaf_with_only_any_extended_key_usage_refused(
        make_service: ServiceFactory, manufacturer: Manufacturer, kek: KeyVaultKek, publisher: Publisher,
        set_policy: Callable[..., Any]) -> None:
    service = make_service()
    counter = UnwrapCounter(service)
    pid = unique("anyeku")
    set_policy(pid)
    pkg, _ = build_package(kek, publisher, pid)
    device = manufacturer.device(unique("dev"), ekus=[ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE])
    response, _ = await release(service, device, pkg)
    assert_denied(response, codes.CERT_WRONG_PURPOSE, 401)
    assert counter.calls == 0


async def test_device_without_a_class_against_a_class_only_policy(
        make_service: ServiceFactory, manufacturer: Manufacturer, kek: KeyVaultKek, publisher: Publisher,
        set_policy: Callable[..., Any]) -> None:
    service = make_service()
    counter = UnwrapCounter(service)
    pid = unique("noclass")
    device = manufacturer.device(unique("dev"), device_class=None)
    set_policy(pid, device_classes=[CLASS])
    pkg, _ = build_package(kek, publisher, pid, devices=(device.device_id,))  # the package targets it by id
    response, _ = await release(service, device, pkg)
    assert_denied(response, codes.DEVICE_CLASS_NOT_ALLOWED, 403)
    assert counter.calls == 0
    with pytest.raises(Denied) as exc:  # the pure rule too
        evaluate(build_policy("p", device_classes=[CLASS], measurements=["ab" * 32]), _facts(device_class=None))
    assert exc.value.code == codes.DEVICE_CLASS_NOT_ALLOWED


async def test_policy_with_no_allowed_measurements_denies(
        make_service: ServiceFactory, manufacturer: Manufacturer, kek: KeyVaultKek, publisher: Publisher,
        set_policy: Callable[..., Any]) -> None:
    """``"measurements": []`` parses (an operator emptied the list) and must mean "none", never "any"."""
    doc = json.dumps({"schema": "edb.release-policy/1", "packageId": "p", "deviceClasses": [CLASS],
                      "measurements": []})
    policy = parse_policy(doc, expected_package_id="p")
    with pytest.raises(Denied) as exc:
        evaluate(policy, _facts())
    assert exc.value.code == codes.MEASUREMENT_NOT_ALLOWED

    service = make_service()
    counter = UnwrapCounter(service)
    pid = unique("nomeas")
    set_policy(pid, measurements=[])
    pkg, _ = build_package(kek, publisher, pid)
    response, _ = await release(service, manufacturer.device(unique("dev")), pkg)
    assert_denied(response, codes.MEASUREMENT_NOT_ALLOWED, 403)
    assert counter.calls == 0


def _facts(**overrides: object) -> ReleaseFacts:
    base: dict[str, object] = {"device_id": "dev-1", "device_class": CLASS, "tee_svn": 3,
                               "tee_measurement": "ab" * 32, "package_id": "p", "version": "1.0.0",
                               "security_version": 2}
    base.update(overrides)
    return ReleaseFacts(**base)  # type: ignore[arg-type]


def test_policy_minimums_default_to_zero_when_absent() -> None:
    """A document without minTeeSvn/minSecurityVersion means 0 (what the documents say); found
    unpinned by make mutate (a default of 1 survived)."""
    doc = json.dumps({"schema": "edb.release-policy/1", "packageId": "p", "deviceClasses": [CLASS],
                      "measurements": ["ab" * 32]})
    policy = parse_policy(doc, expected_package_id="p")
    assert (policy.min_tee_svn, policy.min_security_version, policy.revoked_versions) == (0, 0, frozenset())
    evaluate(policy, _facts(tee_svn=0, security_version=0))
