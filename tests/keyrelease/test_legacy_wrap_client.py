"""The device side of the LEGACY wrap contract (edb.keyrelease.LegacyWrapClient, what the installer
uses for v1 packages) against the real key release host over HTTPS: the wrapped key opens with the
device's RSA key to the class key in Key Vault; every refusal keeps the service's code."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.keyvault.secrets import SecretClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from kr_helpers import unique

from edb.keyrelease import LegacyWrapClient, ReleaseFailed
from edb_local.stack_ca import StackCA
from key_release_service.host import KeyReleaseHost
from key_release_service.legacy import LEGACY_CONTENT_TYPE, legacy_secret_name
from key_release_service.policy import CONTENT_TYPE as POLICY_CONTENT_TYPE

FUNCTION_KEY = "legacy-fn-key"
_DEVICE_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
SPKI = _DEVICE_KEY.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)


async def _host(make_service: Callable[..., Any], stack_ca: StackCA, address: str, **overrides: Any) -> KeyReleaseHost:
    creds = stack_ca.issue_server(f"kr-legacy-{address}", ips=[address])
    host = KeyReleaseHost(make_service(**overrides), address=address, port=0, cert=creds.cert_path,
                          key=creds.key_path)
    await host.start()
    return host


@pytest.fixture
async def legacy_host(make_service: Callable[..., Any], stack_ca: StackCA,
                      loopback_address: str) -> AsyncIterator[KeyReleaseHost]:
    host = await _host(make_service, stack_ca, loopback_address, legacy_enabled=True, legacy_api_key=FUNCTION_KEY)
    try:
        yield host
    finally:
        await host.stop()


def _refused(client: LegacyWrapClient, name: str, spki: bytes = SPKI) -> ReleaseFailed:
    with pytest.raises(ReleaseFailed) as err:
        client.wrap(name, spki)
    return err.value


async def test_wrapped_key_opens_to_the_class_key_and_refusals_keep_their_codes(
        legacy_host: KeyReleaseHost, stack_ca: StackCA, secret_client: SecretClient, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    name = unique("legacy")
    class_key = base64.b64encode(bytes(range(32))).decode()
    secret_client.set_secret(legacy_secret_name(name), class_key, content_type=LEGACY_CONTENT_TYPE)
    # the environment names another CA: the client's own CA bundle is what counts
    unrelated = StackCA.load_or_create(tmp_path / "unrelated").ca_path
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(unrelated))
    url = f"{legacy_host.url}/api/WrapKey"
    client = LegacyWrapClient(url, function_key=FUNCTION_KEY, ca_bundle=str(stack_ca.ca_path))

    wrapped = await asyncio.to_thread(client.wrap, name, SPKI)
    assert _DEVICE_KEY.decrypt(base64.b64decode(wrapped), padding.PKCS1v15()) == base64.b64decode(class_key)
    assert FUNCTION_KEY not in repr(client)

    cases = [
        (LegacyWrapClient(url, ca_bundle=str(stack_ca.ca_path)), name, SPKI, "KR_LEGACY_UNAUTHORIZED", 401),
        (LegacyWrapClient(url, function_key="wrong", ca_bundle=str(stack_ca.ca_path)), name, SPKI,
         "KR_LEGACY_UNAUTHORIZED", 401),
        (client, unique("missing"), SPKI, "KR_LEGACY_KEY_NOT_FOUND", 404),
        (client, "edb-policy-x", SPKI, "KR_LEGACY_BAD_KEY_NAME", 400),
        (client, name, ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
         "KR_LEGACY_BAD_PUBLIC_KEY", 400),
    ]
    for wrapper, key_name, spki, code, status in cases:
        failure = await asyncio.to_thread(_refused, wrapper, key_name, spki)
        assert (failure.code, failure.status, failure.retryable) == (code, status, False), code

    # the key release service's certificate does not verify against another CA: fail closed
    untrusting = LegacyWrapClient(url, function_key=FUNCTION_KEY, ca_bundle=str(unrelated))
    failure = await asyncio.to_thread(_refused, untrusting, name)
    assert failure.code == "KR_UNREACHABLE" and failure.retryable


async def test_no_other_secret_in_the_vault_can_be_obtained_under_any_key_name(
        legacy_host: KeyReleaseHost, stack_ca: StackCA, secret_client: SecretClient) -> None:
    """WrapKey used to wrap ANY secret not named edb-* that decoded to 32 bytes. Now only secrets
    edb-legacy-<name> that ProvisionKey stored with the class key content type are ever read."""
    tag = unique("x")
    worth_32_bytes = base64.b64encode(bytes(range(100, 132))).decode()  # decodes to exactly 32 bytes
    unrelated = {
        f"app-db-password-{tag}": (worth_32_bytes, None),                        # an application secret
        f"orig-{tag}": (worth_32_bytes, LEGACY_CONTENT_TYPE),                   # right type, outside the namespace
        f"edb-policy-{tag}": (worth_32_bytes, POLICY_CONTENT_TYPE),             # a policy name
        legacy_secret_name(f"planted-{tag}"): (worth_32_bytes, "text/plain"),   # in the namespace, not a class key
    }
    for secret_name, (value, content_type) in unrelated.items():
        secret_client.set_secret(secret_name, value, content_type=content_type)
    client = LegacyWrapClient(f"{legacy_host.url}/api/WrapKey", function_key=FUNCTION_KEY,
                              ca_bundle=str(stack_ca.ca_path))
    attempts = [
        (f"app-db-password-{tag}", "KR_LEGACY_KEY_NOT_FOUND"), (f"orig-{tag}", "KR_LEGACY_KEY_NOT_FOUND"),
        (f"APP-DB-PASSWORD-{tag}", "KR_LEGACY_KEY_NOT_FOUND"), (f"edb-policy-{tag}", "KR_LEGACY_BAD_KEY_NAME"),
        (f"edb-legacy-planted-{tag}", "KR_LEGACY_BAD_KEY_NAME"), (f"planted-{tag}", "KR_LEGACY_NOT_CLASS_KEY"),
        (f"../app-db-password-{tag}", "KR_LEGACY_BAD_KEY_NAME"), (f"app-db-password-{tag}/x", "KR_LEGACY_BAD_KEY_NAME"),
        ("-" + "a" * 10, "KR_LEGACY_BAD_KEY_NAME"), ("a" * 117, "KR_LEGACY_BAD_KEY_NAME"),
    ]
    for key_name, code in attempts:
        failure = await asyncio.to_thread(_refused, client, key_name)
        assert failure.code == code and not failure.retryable, (key_name, failure.code)
    # ProvisionKey on those names never touches the secrets that are there, and cannot overwrite
    # the planted one; WrapKey then hands out only the new class key, never the unrelated value
    def provision_key(key_name: str) -> int:
        r = requests.post(f"{legacy_host.url}/api/ProvisionKey/{key_name}", timeout=10, verify=str(stack_ca.ca_path),
                          headers={"x-functions-key": FUNCTION_KEY})
        return r.status_code

    assert await asyncio.to_thread(provision_key, f"app-db-password-{tag}") == 201
    assert await asyncio.to_thread(provision_key, f"planted-{tag}") == 403
    wrapped = await asyncio.to_thread(client.wrap, f"app-db-password-{tag}", SPKI)
    assert _DEVICE_KEY.decrypt(base64.b64decode(wrapped), padding.PKCS1v15()) != base64.b64decode(worth_32_bytes)
    for secret_name, (value, content_type) in unrelated.items():  # nothing lost or changed
        stored = secret_client.get_secret(secret_name)
        assert (stored.value, stored.properties.content_type) == (value, content_type)


async def test_legacy_routes_are_off_by_default(make_service: Callable[..., Any], stack_ca: StackCA,
                                                loopback_address: str) -> None:
    host = await _host(make_service, stack_ca, loopback_address)
    try:
        client = LegacyWrapClient(f"{host.url}/api/WrapKey", function_key=FUNCTION_KEY,
                                  ca_bundle=str(stack_ca.ca_path))
        failure = await asyncio.to_thread(_refused, client, "anything")
        assert (failure.code, failure.status, failure.retryable) == ("KR_LEGACY_DISABLED", 404, False)
    finally:
        await host.stop()


def test_the_client_refuses_plain_http_and_keys_in_urls() -> None:
    with pytest.raises(ValueError):
        LegacyWrapClient("http://127.0.0.1/api/WrapKey")
    with pytest.raises(ValueError):
        LegacyWrapClient("https://127.0.0.1/api/WrapKey?code=secret")
