"""HTTP framing of the stand-in: challenge authentication, routing, Key Vault error bodies.

Routing is by path segments (not aiohttp patterns) because the SDK sends empty segments, e.g.
``GET /keys/{name}/`` for "latest version". Any ``api-version`` is accepted; it must be present, as
on the real service.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web

from edb_local.keyvault.errors import VaultError, bad_parameter
from edb_local.keyvault.identity import IdentityEndpoints, token_path
from edb_local.keyvault.operations import KEY_OPERATIONS, Result, VaultOperations
from edb_local.keyvault.store import VaultStore
from edb_local.keyvault.tokens import RESOURCE, TENANT, Issuer, Principal, TokenInvalid

log = logging.getLogger("edb_local.keyvault")

MAX_BODY = 256 * 1024
TOKEN_PATH = token_path(TENANT)


def _json(status: int, body: dict[str, Any] | None, headers: dict[str, str] | None = None) -> web.Response:
    if body is None:
        return web.Response(status=status, headers=headers)
    return web.Response(status=status, text=json.dumps(body), content_type="application/json", headers=headers)


class VaultApp:
    def __init__(self, store: VaultStore, issuer: Issuer, base_url: str) -> None:
        self.store = store
        self.issuer = issuer
        self.base_url = base_url.rstrip("/")
        self.ops = VaultOperations(store, self.base_url)

    def build(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        IdentityEndpoints(self.store, self.issuer, self.base_url).add_routes(app)
        app.router.add_route("GET", "/healthz", self.health)
        app.router.add_route("*", "/{tail:.*}", self.vault)
        return app

    @property
    def challenge(self) -> str:
        return f'Bearer authorization="{self.base_url}/{TENANT}", resource="{RESOURCE}"'

    async def health(self, request: web.Request) -> web.Response:
        return _json(200, {"status": "ok"})

    # -- the vault ---------------------------------------------------------------------------------

    def _authenticate(self, request: web.Request) -> Principal:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise TokenInvalid("AKV10000: Request is missing a Bearer or PoP token.")
        return self.issuer.verify(token.strip())

    async def vault(self, request: web.Request) -> web.Response:
        try:
            principal = self._authenticate(request)
        except TokenInvalid as exc:
            return _json(401, {"error": {"code": "Unauthorized", "message": str(exc)}},
                         {"WWW-Authenticate": self.challenge})
        try:
            if "api-version" not in request.query:
                raise bad_parameter("The api-version query parameter is required.")
            body = await self._body(request)
            status, payload = await self._route(principal, request.method, request.rel_url.raw_path,
                                                dict(request.query), body)
        except VaultError as exc:
            log.info("%s %s -> %d %s", request.method, request.rel_url.raw_path, exc.status, exc.code)
            return _json(exc.status, exc.body())
        log.info("%s %s -> %d (%s)", request.method, request.rel_url.raw_path, status, principal.client_id)
        return _json(status, payload)

    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any]:
        if request.method not in ("POST", "PUT", "PATCH"):
            return {}
        raw = await request.read()
        if not raw:
            return {}
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise bad_parameter("The request body is not valid JSON.") from exc
        if not isinstance(body, dict):
            raise bad_parameter("The request body must be a JSON object.")
        return body

    async def _route(self, p: Principal, method: str, path: str, query: dict[str, str],
                     body: dict[str, Any]) -> Result:
        seg = path.strip("/").split("/") if path.strip("/") else []
        # keep an explicitly empty trailing version ("/keys/name/") as "latest"
        if path.endswith("/") and len(seg) == 2:
            seg.append("")
        n = len(seg)
        ops = self.ops
        if n >= 1 and seg[0] == "keys":
            if n == 1 and method == "GET":
                return ops.list_keys(p, query)
            name = seg[1] if n > 1 else ""
            if n == 2 and method == "DELETE":
                return ops.delete(p, "key", name)
            if n == 2 and method == "GET":
                return ops.get_key(p, name, None)
            if n == 3 and seg[2] == "create" and method == "POST":
                return await ops.create_key(p, name, body)
            if n == 3 and seg[2] == "rotate" and method == "POST":
                return await ops.rotate_key(p, name)
            if n == 3 and seg[2] == "versions" and method == "GET":
                return ops.list_key_versions(p, name, query)
            if n == 3 and method == "GET":
                return ops.get_key(p, name, seg[2])
            if n == 3 and method == "PATCH":
                return ops.update_key(p, name, seg[2], body)
            if n == 4 and method == "POST" and seg[3].lower() in KEY_OPERATIONS:
                return ops.key_operation(p, name, seg[2], seg[3].lower(), body)
        if n >= 1 and seg[0] == "secrets":
            if n == 1 and method == "GET":
                return ops.list_secrets(p, query)
            name = seg[1] if n > 1 else ""
            if n == 2 and method == "PUT":
                return ops.set_secret(p, name, body)
            if n == 2 and method == "DELETE":
                return ops.delete(p, "secret", name)
            if n == 2 and method == "GET":
                return ops.get_secret(p, name, None)
            if n == 3 and seg[2] == "versions" and method == "GET":
                return ops.list_secret_versions(p, name, query)
            if n == 3 and method == "GET":
                return ops.get_secret(p, name, seg[2])
            if n == 3 and method == "PATCH":
                return ops.update_secret(p, name, seg[2], body)
        if n >= 1 and seg[0] in ("deletedkeys", "deletedsecrets"):
            kind = "key" if seg[0] == "deletedkeys" else "secret"
            if n == 1 and method == "GET":
                return ops.list_deleted(p, kind, query)
            if n == 2 and method == "GET":
                return ops.get_deleted(p, kind, seg[1])
            if n == 2 and method == "DELETE":
                return ops.purge(p, kind, seg[1])
            if n == 3 and seg[2] == "recover" and method == "POST":
                return ops.recover(p, kind, seg[1])
        raise VaultError(404 if method in ("GET", "DELETE") else 405, "NotFound" if method in ("GET", "DELETE")
                         else "MethodNotAllowed", f"{method} {path} is not a Key Vault operation")
