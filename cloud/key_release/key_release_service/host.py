"""The local HTTPS host: the same handlers as the Azure Functions app, served by aiohttp.

Routes (as in Azure Functions with the default ``api`` route prefix): ``POST /api/nonce``,
``POST /api/release``, ``POST /api/WrapKey`` and ``GET|POST /api/ProvisionKey/{key_name}`` (legacy,
off by default; they require the ``EDB_KR_LEGACY_API_KEY`` as ``?code=`` or ``x-functions-key``,
like a Functions key), ``GET /healthz``.
"""

from __future__ import annotations

import hmac
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from edb.errors import ConfigError
from key_release_service import codes
from key_release_service.audit import AuditLog, AuditRecord
from key_release_service.codes import Denied
from key_release_service.http_types import ApiRequest, ApiResponse
from key_release_service.request import MAX_BODY_BYTES
from key_release_service.service import KeyReleaseService

Handler = Callable[[ApiRequest], Awaitable[ApiResponse]]


def _to_web(response: ApiResponse) -> web.Response:
    return web.Response(status=response.status, body=response.body_bytes(), content_type="application/json",
                        headers=response.headers)


async def _read_body(request: web.Request) -> bytes | None:
    """The whole body, or None as soon as it is known to exceed the limit (never buffered past it)."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        return None
    chunks: list[bytes] = []
    total = 0
    while chunk := await request.content.read(64 * 1024):
        total += len(chunk)
        if total > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _adapt(handler: Handler, service: KeyReleaseService, event: str, *, legacy_key: str | None = None,
           legacy: bool = False, audit: AuditLog | None = None) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def route(request: web.Request) -> web.Response:
        if legacy and legacy_key is not None:
            presented = request.query.get("code") or request.headers.get("x-functions-key") or ""
            if not hmac.compare_digest(presented.encode(), legacy_key.encode()):
                if audit is not None:
                    audit.write(AuditRecord(event="legacy-auth", code=codes.LEGACY_UNAUTHORIZED,
                                            remote=request.remote))
                return _to_web(ApiResponse.from_denial(Denied(codes.LEGACY_UNAUTHORIZED, "function key required")))
        body = await _read_body(request)
        if body is None:  # refused before the handler: audited here like every other decision
            return _to_web(service.refuse_early(event, Denied(codes.REQUEST_TOO_LARGE, "request body too large"),
                                                request.remote))
        api_request = ApiRequest(method=request.method, body=body, headers=dict(request.headers),
                                 query=dict(request.query), route_params=dict(request.match_info),
                                 remote=request.remote)
        return _to_web(await handler(api_request))

    return route


def build_app(service: KeyReleaseService) -> web.Application:
    if service.config.legacy_enabled and not service.config.legacy_api_key:
        raise ConfigError("EDB_KR_LEGACY_ENABLED needs EDB_KR_LEGACY_API_KEY on the local host", code="CONFIG_MISSING")
    legacy_key = service.config.legacy_api_key
    app = web.Application(client_max_size=MAX_BODY_BYTES + 1)
    app.router.add_post("/api/nonce", _adapt(service.nonce, service, "nonce"))
    app.router.add_post("/api/release", _adapt(service.release, service, "release"))
    app.router.add_post("/api/WrapKey", _adapt(service.legacy_wrap_key, service, "legacy-wrap", legacy_key=legacy_key,
                                               legacy=True, audit=service.audit))
    provision = _adapt(service.legacy_provision_key, service, "legacy-provision", legacy_key=legacy_key, legacy=True,
                       audit=service.audit)
    app.router.add_route("GET", "/api/ProvisionKey/{key_name}", provision)
    app.router.add_route("POST", "/api/ProvisionKey/{key_name}", provision)

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app.router.add_get("/healthz", health)

    async def on_cleanup(_: web.Application) -> None:
        await service.close()

    app.on_cleanup.append(on_cleanup)
    return app


def server_ssl_context(cert: Path | str, key: Path | str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


class KeyReleaseHost:
    """Start/stop the host on the current event loop (tests, benchmarks, the CLI)."""

    def __init__(self, service: KeyReleaseService, *, address: str, port: int, cert: Path | str,
                 key: Path | str) -> None:
        self.service = service
        self.address, self.port = address, port
        self._ssl = server_ssl_context(cert, key)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"https://{self.address}:{self.port}"

    async def start(self) -> None:
        if self.port == 0:
            from edb_local.net import free_port

            self.port = free_port(self.address)
        self._runner = web.AppRunner(build_app(self.service), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.address, self.port, ssl_context=self._ssl, backlog=512).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
