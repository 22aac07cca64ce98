"""The service through its aiohttp host with real HTTPS, driven by the device-side client
(edb.keyrelease) and by raw aiohttp requests: happy path, denials surfaced, 50 concurrent
releases, rate limiting, oversized bodies, and the legacy routes."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from azure.keyvault.secrets import SecretClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from kr_helpers import Manufacturer, Publisher, SimDevice, SimEvidence, build_package, release_body, unique

from edb.attestation.keywrap import open_released_key
from edb.cpk import BuildResult
from edb.keyrelease import KeyReleaseClient, PackageRef, ReleaseFailed
from edb.keys.azure_keyvault import KeyVaultKek
from edb_local.net import free_loopback_address
from edb_local.stack_ca import StackCA
from key_release_service import codes
from key_release_service.host import KeyReleaseHost
from key_release_service.legacy import legacy_secret_name
from key_release_service.service import KeyReleaseService

HostFactory = Callable[..., Any]


@pytest.fixture
async def start_host(make_service: Callable[..., KeyReleaseService], stack_ca: StackCA,
                     loopback_address: str) -> AsyncIterator[HostFactory]:
    hosts: list[KeyReleaseHost] = []
    creds = stack_ca.issue_server(f"keyrelease-{loopback_address}", ips=[loopback_address])

    async def start(**overrides: Any) -> KeyReleaseHost:
        host = KeyReleaseHost(make_service(**overrides), address=loopback_address, port=0,
                              cert=creds.cert_path, key=creds.key_path)
        await host.start()
        hosts.append(host)
        return host

    yield start
    for host in hosts:
        await host.stop()


@pytest.fixture
def package(kek: KeyVaultKek, publisher: Publisher, set_policy: Callable[..., Any]) -> BuildResult:
    pid = unique("http")
    set_policy(pid)
    return build_package(kek, publisher, pid)[0]


class Tee:
    """Stands in for the TEE client: evidence for a nonce, and it keeps the one-time private key."""

    def __init__(self, device: SimDevice, package: BuildResult) -> None:
        self.device, self.package = device, package
        self.nonces: list[str] = []
        self.otk: ec.EllipticCurvePrivateKey | None = None

    def __call__(self, nonce: str) -> SimEvidence:
        self.nonces.append(nonce)
        evidence, self.otk = self.device.evidence(nonce, self.package)
        return evidence


def _client(host: KeyReleaseHost, stack_ca: StackCA, **kwargs: Any) -> KeyReleaseClient:
    return KeyReleaseClient(host.url, ca_bundle=str(stack_ca.ca_path), **kwargs)


async def test_device_client_release_over_https(start_host: HostFactory, stack_ca: StackCA,
                                                manufacturer: Manufacturer, package: BuildResult,
                                                audit_lines: list[str]) -> None:
    host = await start_host()
    tee = Tee(manufacturer.device(unique("dev")), package)
    m = package.manifest
    jwe = await asyncio.to_thread(_client(host, stack_ca).release, PackageRef(m.package_id, m.version),
                                  package.signed, tee)
    assert tee.otk is not None
    released = open_released_key(jwe, tee.otk, package_id=m.package_id, version=m.version)
    assert len(released.dek) == 32 and released.kid == m.kid
    assert ipaddress.ip_address(json.loads(audit_lines[-1])["remote"]).is_loopback  # the peer address is logged


async def test_denial_is_surfaced_and_not_retried(start_host: HostFactory, stack_ca: StackCA,
                                                  manufacturer: Manufacturer, package: BuildResult,
                                                  audit_lines: list[str]) -> None:
    host = await start_host()
    tee = Tee(manufacturer.device(unique("dev"), device_class="unknown-class"), package)
    sleeps: list[float] = []
    client = _client(host, stack_ca, sleep=sleeps.append)
    with pytest.raises(ReleaseFailed) as exc:
        await asyncio.to_thread(client.release, ("x", "y"), package.signed, tee)
    # the request named package "x": the service refuses the mismatch before looking at the class
    assert exc.value.code == codes.PACKAGE_MISMATCH and exc.value.status == 403 and not exc.value.retryable
    m = package.manifest
    with pytest.raises(ReleaseFailed) as exc:
        await asyncio.to_thread(client.release, (m.package_id, m.version), package.signed, tee)
    assert exc.value.code == codes.TARGET_MISMATCH and not exc.value.retryable
    assert sleeps == [] and len(tee.nonces) == 2 and len(audit_lines) == 2


async def test_fifty_concurrent_releases(start_host: HostFactory, stack_ca: StackCA, manufacturer: Manufacturer,
                                         package: BuildResult) -> None:
    host = await start_host()
    devices = [manufacturer.device(unique("fleet")) for _ in range(50)]
    ctx = ssl.create_default_context(cafile=str(stack_ca.ca_path))
    m = package.manifest

    async def one(session: aiohttp.ClientSession, device: SimDevice) -> bytes:
        async with session.post(f"{host.url}/api/nonce") as r:
            assert r.status == 200
            nonce = (await r.json())["nonce"]
        evidence, otk = device.evidence(nonce, package)
        async with session.post(f"{host.url}/api/release", data=release_body(evidence, package),
                                headers={"Content-Type": "application/json"}) as r:
            body = await r.json()
            assert r.status == 200, body
        return open_released_key(body["jwe"], otk, package_id=m.package_id, version=m.version).dek

    connector = aiohttp.TCPConnector(ssl=ctx, limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        deks = await asyncio.gather(*(one(session, d) for d in devices))
    assert len(deks) == 50 and len(set(deks)) == 1  # every device got the package's one DEK


async def test_rate_limit_over_http(start_host: HostFactory, stack_ca: StackCA, manufacturer: Manufacturer,
                                    package: BuildResult) -> None:
    host = await start_host(rate_burst=1, rate_per_minute=2.0)
    tee = Tee(manufacturer.device(unique("dev")), package)
    client = _client(host, stack_ca, sleep=lambda s: None)
    m = package.manifest
    await asyncio.to_thread(client.release, (m.package_id, m.version), package.signed, tee)
    with pytest.raises(ReleaseFailed) as exc:
        await asyncio.to_thread(client.release, (m.package_id, m.version), package.signed, tee)
    assert exc.value.code == codes.RATE_LIMITED and exc.value.status == 429
    assert exc.value.retryable and exc.value.retry_after is not None and exc.value.retry_after >= 1
    assert len(tee.nonces) == 2  # 429 is left to the caller's schedule, not retried in a loop


async def test_nonce_flood_from_one_address_is_limited_and_devices_still_release(
        start_host: HostFactory, stack_ca: StackCA, manufacturer: Manufacturer, package: BuildResult) -> None:
    """Defence in depth on the anonymous route: one address flooding /api/nonce gets 429 past its
    bucket; a device at another address is not affected and gets its key."""
    host = await start_host(nonce_rate_burst=5, nonce_rate_per_minute=1.0)
    flooder = free_loopback_address()  # another 127.x.y.z: the device's requests come from 127.0.0.1
    ctx = ssl.create_default_context(cafile=str(stack_ca.ca_path))
    statuses: list[int] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, local_addr=(flooder, 0))) as session:
        for _ in range(40):
            async with session.post(f"{host.url}/api/nonce") as r:
                statuses.append(r.status)
                if r.status == 429:
                    assert (await r.json())["error"]["code"] == codes.RATE_LIMITED
                    assert int(r.headers["Retry-After"]) >= 1
    assert statuses.count(200) == 5 and statuses.count(429) == 35
    tee = Tee(manufacturer.device(unique("dev")), package)
    m = package.manifest
    jwe = await asyncio.to_thread(_client(host, stack_ca).release, PackageRef(m.package_id, m.version),
                                  package.signed, tee)
    assert tee.otk is not None and open_released_key(jwe, tee.otk, package_id=m.package_id, version=m.version).dek


async def test_oversized_and_malformed_over_http(start_host: HostFactory, stack_ca: StackCA) -> None:
    host = await start_host()
    ctx = ssl.create_default_context(cafile=str(stack_ca.ca_path))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        async with session.post(f"{host.url}/api/release", data=b"{" + b" " * (300 * 1024) + b"}") as r:
            assert r.status == 413 and (await r.json())["error"]["code"] == codes.REQUEST_TOO_LARGE
        async with session.post(f"{host.url}/api/release", data=b'{"evidence": []}') as r:
            assert r.status == 400 and (await r.json())["error"]["code"] == codes.MALFORMED_REQUEST
        async with session.get(f"{host.url}/api/release") as r:
            assert r.status == 405
        async with session.post(f"{host.url}/api/nonce") as r:
            assert r.status == 200 and r.headers["Cache-Control"] == "no-store"


async def test_legacy_routes_off_by_default(start_host: HostFactory, stack_ca: StackCA) -> None:
    host = await start_host()
    ctx = ssl.create_default_context(cafile=str(stack_ca.ca_path))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        for method, path in (("POST", "/api/WrapKey"), ("GET", "/api/ProvisionKey/abc")):
            async with session.request(method, host.url + path, data=b"{}") as r:
                assert r.status == 404 and (await r.json())["error"]["code"] == codes.LEGACY_DISABLED


async def test_legacy_wrap_contract_when_enabled(start_host: HostFactory, stack_ca: StackCA,
                                                 secret_client: SecretClient, audit_lines: list[str]) -> None:
    host = await start_host(legacy_enabled=True, legacy_api_key="fn-key-123")
    ctx = ssl.create_default_context(cafile=str(stack_ca.ca_path))
    name = unique("3f2b")
    device_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # the TEE's RSA-2048 key
    spki = device_key.public_key().public_bytes(serialization.Encoding.DER,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
    body = json.dumps({"key_name": name, "client_public_key": base64.b64encode(spki).decode()})
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        async with session.post(f"{host.url}/api/ProvisionKey/{name}") as r:  # no function key
            assert r.status == 401 and (await r.json())["error"]["code"] == codes.LEGACY_UNAUTHORIZED
        async with session.post(f"{host.url}/api/WrapKey?code=fn-key-123", data=body) as r:
            assert r.status == 404 and (await r.json())["error"]["code"] == codes.LEGACY_KEY_NOT_FOUND
        async with session.post(f"{host.url}/api/ProvisionKey/{name}", headers={"x-functions-key": "fn-key-123"}) as r:
            assert r.status == 201 and await r.json() == {"key_name": name, "created": True}
        async with session.get(f"{host.url}/api/ProvisionKey/{name}?code=fn-key-123") as r:
            assert r.status == 200 and (await r.json())["created"] is False
        async with session.post(f"{host.url}/api/WrapKey?code=fn-key-123", data=body) as r:
            assert r.status == 200
            wrapped = base64.b64decode((await r.json())["wrapped_key"])
    class_key = device_key.decrypt(wrapped, padding.PKCS1v15())
    assert class_key == base64.b64decode(secret_client.get_secret(legacy_secret_name(name)).value)  # in Key Vault
    events = [json.loads(line)["event"] for line in audit_lines]
    assert events == ["legacy-auth", "legacy-wrap", "legacy-provision", "legacy-provision", "legacy-wrap"]
