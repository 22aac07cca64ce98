"""The stand-in's token issuer as azure-identity and MSAL expect Microsoft Entra ID to be, so
``DefaultAzureCredential`` works unchanged against it (docs/keyvault-standin.md, "Credentials"):

- OpenID discovery ``GET /{tenant}/v2.0/.well-known/openid-configuration`` (and the ADFS-form
  ``GET /adfs/.well-known/openid-configuration``), the JWKS, and the client-credentials token endpoint
  ``POST /{tenant}/oauth2/v2.0/token``: what ``ClientSecretCredential(tenant,
  client, secret, authority=<stand-in>)`` and ``EnvironmentCredential`` (``AZURE_AUTHORITY_HOST``) use.
  Tenants: the stand-in's own (``edb-local``) and ``adfs``. MSAL sends an authority it does not know to
  Microsoft's instance discovery (login.microsoftonline.com) unless the tenant is ``adfs`` or the
  credential was built with ``disable_instance_discovery=True``; the ``adfs`` tenant is the form that
  needs neither, so an unmodified ``DefaultAzureCredential()`` works from environment variables alone.
- The App Service / Functions managed identity endpoint ``GET /msi/token?resource=...&api-version=
  2019-08-01`` with ``X-IDENTITY-HEADER`` (``IDENTITY_ENDPOINT`` + ``IDENTITY_HEADER``), what
  ``ManagedIdentityCredential`` uses in a Functions app.

Every endpoint issues the same ES256 tokens the vault verifies (:class:`Issuer`); wrong secrets and
headers are refused with OAuth-style errors and no token.
"""

from __future__ import annotations

import hmac
import json
import time
from typing import Any

from aiohttp import web

from edb_local.keyvault.store import VaultStore
from edb_local.keyvault.tokens import RESOURCE, SCOPE, TENANT, Issuer, Principal, secret_digest, secrets_match

ADFS = "adfs"
TENANTS = (TENANT, ADFS)
MSI_PATH = "/msi/token"
MSI_API_VERSION = "2019-08-01"
#: the identity header is "<client id>.<secret>"; its digest is stored as client "msi:<client id>"
MSI_CLIENT_PREFIX = "msi:"


def token_path(tenant: str) -> str:
    # the v2.0 path for ADFS too: azure-identity's async client builds it whatever the tenant
    return f"/{tenant}/oauth2/v2.0/token"


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


def _oauth_error(status: int, error: str, description: str) -> web.Response:
    return _json(status, {"error": error, "error_description": description})


def split_identity_header(header: str) -> tuple[str, str] | None:
    client_id, dot, secret = header.partition(".")
    if not dot or not client_id or not secret or len(header) > 512:
        return None
    return client_id, secret


class IdentityEndpoints:
    def __init__(self, store: VaultStore, issuer: Issuer, base_url: str) -> None:
        self.store = store
        self.issuer = issuer
        self.base_url = base_url.rstrip("/")

    def add_routes(self, app: web.Application) -> None:
        for tenant in TENANTS:
            discovery = "/adfs/.well-known/openid-configuration" if tenant == ADFS \
                else f"/{tenant}/v2.0/.well-known/openid-configuration"
            app.router.add_route("GET", discovery, self._discovery(tenant))
            app.router.add_route("POST", token_path(tenant), self.token)
            app.router.add_route("GET", f"/{tenant}/discovery/v2.0/keys", self.keys)
        app.router.add_route("GET", MSI_PATH, self.managed_identity)

    def discovery_document(self, tenant: str) -> dict[str, Any]:
        base = f"{self.base_url}/{tenant}"
        return {
            "issuer": f"{base}/v2.0" if tenant != ADFS else base,
            "token_endpoint": f"{self.base_url}{token_path(tenant)}",
            # MSAL reads it (a confidential client never calls it: no interactive sign-in here)
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "response_types_supported": ["token"],
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_post"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "scopes_supported": [SCOPE],
            "tenant_region_scope": None,
        }

    def _discovery(self, tenant: str) -> Any:
        async def handler(request: web.Request) -> web.Response:
            return _json(200, self.discovery_document(tenant))
        return handler

    async def keys(self, request: web.Request) -> web.Response:
        return _json(200, {"keys": [self.issuer.public_jwk()]})

    # -- OAuth 2.0 client credentials (what MSAL and azure-identity's AadClient post) ------------------

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        grant, client_id, secret, scope = (form.get(k) for k in ("grant_type", "client_id", "client_secret", "scope"))
        if grant != "client_credentials" or not isinstance(client_id, str) or not isinstance(secret, str):
            return _oauth_error(400, "invalid_request", "client credentials (client_id, client_secret) required")
        scopes = scope.split() if isinstance(scope, str) else []
        if scopes != [SCOPE]:
            return _oauth_error(400, "invalid_scope", f"only {SCOPE} is issued")
        if client_id.startswith(MSI_CLIENT_PREFIX):
            return _oauth_error(401, "invalid_client", "unknown client or wrong secret")
        stored = self.store.get_client(client_id)
        if stored is None or not secrets_match(stored[0], secret):
            return _oauth_error(401, "invalid_client", "unknown client or wrong secret")
        token, expires_on = self.issuer.issue(Principal(client_id, stored[1]), SCOPE)
        now = int(time.time())
        return _json(200, {"token_type": "Bearer", "expires_in": expires_on - now, "ext_expires_in": expires_on - now,
                           "expires_on": expires_on, "access_token": token})

    # -- managed identity (App Service / Functions: IDENTITY_ENDPOINT + IDENTITY_HEADER) -------------

    async def managed_identity(self, request: web.Request) -> web.Response:
        header = split_identity_header(request.headers.get("X-IDENTITY-HEADER", ""))
        stored = self.store.get_client(MSI_CLIENT_PREFIX + header[0]) if header else None
        if header is None or stored is None or not hmac.compare_digest(stored[0], secret_digest(header[1])):
            return _oauth_error(401, "invalid_client", "missing or wrong X-IDENTITY-HEADER")
        client_id = header[0]
        query = request.query
        if query.get("api-version") != MSI_API_VERSION:
            return _oauth_error(400, "invalid_request", f"api-version must be {MSI_API_VERSION}")
        resource = query.get("resource", "")
        if resource.removesuffix("/.default").rstrip("/") != RESOURCE:
            return _oauth_error(400, "invalid_resource", f"only {RESOURCE} is issued")
        asked = query.get("client_id") or query.get("principal_id") or query.get("mi_res_id")
        if asked is not None and asked != client_id:
            return _oauth_error(400, "invalid_request", "this endpoint serves one identity; client_id does not match")
        token, expires_on = self.issuer.issue(Principal(client_id, stored[1]), SCOPE)
        return _json(200, {"access_token": token, "expires_on": str(expires_on), "resource": RESOURCE,
                           "token_type": "Bearer", "client_id": client_id})
