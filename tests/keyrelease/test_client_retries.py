"""edb.keyrelease.KeyReleaseClient against a scripted HTTPS server (real TLS, real HTTP):
retries 5xx and network failures with jittered backoff and a fresh nonce/evidence each attempt,
never retries denials, surfaces the service's code, bounds what it reads."""

from __future__ import annotations

import asyncio
import json
import random
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from edb.keyrelease import KeyReleaseClient, ReleaseFailed, RetryPolicy
from edb.keyrelease.client import BAD_RESPONSE, UNREACHABLE
from edb_local.net import free_port
from edb_local.stack_ca import StackCA


@dataclass(frozen=True)
class Ev:
    jws: str
    cert_chain: tuple[str, ...]
    one_time_jwk: dict[str, str]


class Manifest:
    def to_json(self) -> dict[str, Any]:
        return {"json": "e30=", "signature": "AA==", "chain": ["AA=="]}


@dataclass
class Script:
    """Responses for /api/release, in order; the last one repeats."""

    releases: list[tuple[int, bytes, dict[str, str]]]
    nonce_count: int = 0
    release_bodies: list[dict[str, Any]] = field(default_factory=list)


JWE_OK = json.dumps({"jwe": "a.b.c.d.e", "kid": "k", "package": {}}).encode()


def denial(status: int, code: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    return status, json.dumps({"error": {"code": code, "message": "no"}}).encode(), headers or {}


@pytest.fixture
async def server(stack_ca: StackCA, loopback_address: str) -> AsyncIterator[tuple[str, Script]]:
    script = Script(releases=[(200, JWE_OK, {})])

    async def nonce(_: web.Request) -> web.Response:
        script.nonce_count += 1
        return web.json_response({"nonce": f"n{script.nonce_count}", "expiresAt": "x"})

    async def release(request: web.Request) -> web.Response:
        script.release_bodies.append(await request.json())
        index = min(len(script.release_bodies), len(script.releases)) - 1
        status, body, headers = script.releases[index]
        return web.Response(status=status, body=body, headers=headers, content_type="application/json")

    app = web.Application()
    app.router.add_post("/api/nonce", nonce)
    app.router.add_post("/api/release", release)
    creds = stack_ca.issue_server(f"scripted-{loopback_address}", ips=[loopback_address])
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(creds.cert_path, creds.key_path)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port(loopback_address)
    await web.TCPSite(runner, loopback_address, port, ssl_context=ctx).start()
    yield f"https://{loopback_address}:{port}", script
    await runner.cleanup()


def make_client(url: str, stack_ca: StackCA, sleeps: list[float], **kwargs: Any) -> KeyReleaseClient:
    return KeyReleaseClient(url, ca_bundle=str(stack_ca.ca_path), sleep=sleeps.append, rng=random.Random(7),
                            retry=kwargs.pop("retry", RetryPolicy(max_attempts=4, base_s=0.5, cap_s=4.0)), **kwargs)


def evidence_for(nonces: list[str]) -> Any:
    def make(nonce: str) -> Ev:
        nonces.append(nonce)
        return Ev(f"ev-for-{nonce}", ("AA==",), {"kty": "EC"})

    return make


async def test_retries_5xx_with_fresh_nonce_then_succeeds(server: tuple[str, Script], stack_ca: StackCA) -> None:
    url, script = server
    script.releases = [denial(503, "KR_KEYVAULT_UNAVAILABLE", {"Retry-After": "1"}), denial(502, "KR_KEYVAULT_ERROR"),
                       (200, JWE_OK, {})]
    sleeps: list[float] = []
    nonces: list[str] = []
    jwe = await asyncio.to_thread(make_client(url, stack_ca, sleeps).release, ("p", "1"), Manifest(),
                                  evidence_for(nonces))
    assert jwe == "a.b.c.d.e"
    assert nonces == ["n1", "n2", "n3"]  # a fresh nonce and fresh evidence per attempt
    assert [b["evidence"] for b in script.release_bodies] == ["ev-for-n1", "ev-for-n2", "ev-for-n3"]
    assert script.release_bodies[0]["package"] == {"id": "p", "version": "1"}
    assert len(sleeps) == 2 and sleeps[0] >= 1.0  # Retry-After is a floor
    assert 0 <= sleeps[1] <= 1.0  # attempt 2: uniform(0, min(cap, 0.5 * 2))


async def test_denials_are_not_retried(server: tuple[str, Script], stack_ca: StackCA) -> None:
    url, script = server
    script.releases = [denial(403, "KR_PACKAGE_REVOKED")]
    sleeps: list[float] = []
    with pytest.raises(ReleaseFailed) as exc:
        await asyncio.to_thread(make_client(url, stack_ca, sleeps).release, ("p", "1"), Manifest(), evidence_for([]))
    assert exc.value.code == "KR_PACKAGE_REVOKED" and exc.value.status == 403 and not exc.value.retryable
    assert sleeps == [] and len(script.release_bodies) == 1


async def test_retries_stop_after_max_attempts(server: tuple[str, Script], stack_ca: StackCA) -> None:
    url, script = server
    script.releases = [denial(500, "KR_INTERNAL")]
    sleeps: list[float] = []
    with pytest.raises(ReleaseFailed) as exc:
        await asyncio.to_thread(make_client(url, stack_ca, sleeps).release, ("p", "1"), Manifest(), evidence_for([]))
    assert exc.value.code == "KR_INTERNAL" and exc.value.retryable
    assert len(script.release_bodies) == 4 and len(sleeps) == 3
    assert all(0 <= s <= min(4.0, 0.5 * 2 ** i) for i, s in enumerate(sleeps))


async def test_unknown_error_shapes_and_bad_responses(server: tuple[str, Script], stack_ca: StackCA) -> None:
    url, script = server
    script.releases = [(418, b"<html>teapot</html>", {})]
    with pytest.raises(ReleaseFailed) as exc:
        await asyncio.to_thread(make_client(url, stack_ca, []).release, ("p", "1"), Manifest(), evidence_for([]))
    assert exc.value.code == "KR_HTTP_418" and not exc.value.retryable
    script.releases = [(200, json.dumps({"jwe": "not-a-jwe"}).encode(), {})]
    with pytest.raises(ReleaseFailed) as exc:
        await asyncio.to_thread(make_client(url, stack_ca, []).release, ("p", "1"), Manifest(), evidence_for([]))
    assert exc.value.code == BAD_RESPONSE
    script.releases = [(500, b"x" * (200 * 1024), {})]  # bounded read, still a retryable 5xx
    with pytest.raises(ReleaseFailed) as exc:
        await asyncio.to_thread(make_client(url, stack_ca, [], retry=RetryPolicy(max_attempts=1)).release,
                                ("p", "1"), Manifest(), evidence_for([]))
    assert exc.value.code == BAD_RESPONSE


async def test_redirects_are_refused_not_followed(server: tuple[str, Script], stack_ca: StackCA) -> None:
    url, script = server
    # a 307 keeps the method and body: following it would re-send the evidence to the other URL
    script.releases = [(307, b"", {"Location": url + "/api/nonce"}), (200, JWE_OK, {})]
    sleeps: list[float] = []
    with pytest.raises(ReleaseFailed) as exc:
        await asyncio.to_thread(make_client(url, stack_ca, sleeps).release, ("p", "1"), Manifest(), evidence_for([]))
    assert exc.value.code == "KR_HTTP_307" and exc.value.status == 307 and not exc.value.retryable
    assert len(script.release_bodies) == 1 and script.nonce_count == 1 and sleeps == []


async def test_network_failure_is_retried_then_reported(stack_ca: StackCA, loopback_address: str) -> None:
    url = f"https://{loopback_address}:{free_port(loopback_address)}"  # nothing listens there
    sleeps: list[float] = []
    with pytest.raises(ReleaseFailed) as exc:
        await asyncio.to_thread(make_client(url, stack_ca, sleeps, connect_timeout_s=2).release, ("p", "1"),
                                Manifest(), evidence_for([]))
    assert exc.value.code == UNREACHABLE and exc.value.retryable and len(sleeps) == 3


async def test_untrusted_server_certificate_is_refused(server: tuple[str, Script], tmp_path: Any) -> None:
    url, script = server
    other_ca = StackCA.load_or_create(tmp_path / "other-ca")
    client = KeyReleaseClient(url, ca_bundle=str(other_ca.ca_path), sleep=lambda s: None,
                              retry=RetryPolicy(max_attempts=1))
    with pytest.raises(ReleaseFailed) as exc:
        await asyncio.to_thread(client.release, ("p", "1"), Manifest(), evidence_for([]))
    assert exc.value.code == UNREACHABLE and script.nonce_count == 0


def test_plain_http_refused_and_backoff_bounds() -> None:
    with pytest.raises(ValueError):
        KeyReleaseClient("http://127.0.0.1:7071")
    policy = RetryPolicy(base_s=0.5, cap_s=4.0)
    rng = random.Random(1)
    for attempt in range(10):
        assert 0 <= policy.delay(attempt, None, rng) <= min(4.0, 0.5 * 2 ** attempt)
    assert policy.delay(0, 7.0, rng) == 7.0
