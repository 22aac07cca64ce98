"""Every decision is audited, including requests refused before a handler runs: a body over the
limit (413 ``KR_REQUEST_TOO_LARGE``) on the local HTTPS host (the Functions adapter: in
test_function_app.py), and
a refused nonce request (429). Each gives exactly one audit line with the event, the decision, the
code and the remote address, and nothing of the request body."""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable
from typing import Any

import aiohttp

from edb_local.stack_ca import StackCA
from key_release_service import codes
from key_release_service.host import KeyReleaseHost
from key_release_service.request import MAX_BODY_BYTES
from key_release_service.service import KeyReleaseService

MARKER = b"SECRET-LOOKING-BODY"


def records(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines]


async def test_oversized_requests_on_the_local_host_are_audited(
        make_service: Callable[..., KeyReleaseService], audit_lines: list[str], stack_ca: StackCA,
        loopback_address: str) -> None:
    creds = stack_ca.issue_server(f"kr-audit-{loopback_address}", ips=[loopback_address])
    host = KeyReleaseHost(make_service(nonce_rate_burst=1, nonce_rate_per_minute=1.0), address=loopback_address,
                          port=0, cert=creds.cert_path, key=creds.key_path)
    await host.start()
    try:
        ctx = ssl.create_default_context(cafile=str(stack_ca.ca_path))
        big = MARKER + b" " * MAX_BODY_BYTES
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
            async with session.post(f"{host.url}/api/release", data=big) as r:  # Content-Length over the limit
                assert r.status == 413 and (await r.json())["error"]["code"] == codes.REQUEST_TOO_LARGE

            async def chunked() -> Any:  # no Content-Length: refused while it streams in
                for _ in range(MAX_BODY_BYTES // 65536 + 2):
                    yield MARKER + b" " * 65536

            async with session.post(f"{host.url}/api/release", data=chunked()) as r:
                assert r.status == 413
            async with session.post(f"{host.url}/api/nonce", data=big) as r:
                assert r.status == 413
            statuses = []
            for _ in range(2):  # burst 1: the second nonce request is refused (429) and audited
                async with session.post(f"{host.url}/api/nonce") as r:
                    statuses.append(r.status)
            assert statuses == [200, 429]
    finally:
        await host.stop()
    got = records(audit_lines)
    assert [(r["event"], r["decision"], r["code"]) for r in got] == [
        ("release", "deny", codes.REQUEST_TOO_LARGE), ("release", "deny", codes.REQUEST_TOO_LARGE),
        ("nonce", "deny", codes.REQUEST_TOO_LARGE), ("nonce", "deny", codes.RATE_LIMITED)]
    assert all(r["remote"] == "127.0.0.1" or r["remote"].startswith("127.") for r in got)
    assert not any(MARKER.decode() in line for line in audit_lines)
