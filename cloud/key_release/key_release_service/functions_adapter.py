"""Azure Functions glue: ``func.HttpRequest`` -> :class:`ApiRequest`, :class:`ApiResponse` ->
``func.HttpResponse``, and the per-worker service instance built from application settings."""

from __future__ import annotations

import azure.functions as func

from key_release_service import codes
from key_release_service.codes import Denied
from key_release_service.config import ServiceConfig
from key_release_service.http_types import ApiRequest, ApiResponse
from key_release_service.request import MAX_BODY_BYTES
from key_release_service.service import KeyReleaseService

_service: KeyReleaseService | None = None


def get_service() -> KeyReleaseService:
    """One service per worker process: its rate limits are in memory; spent nonces are shared through
    the table named by ``EDB_KR_NONCE_STORE`` (in memory too when that is ``memory``)."""
    global _service
    if _service is None:
        _service = KeyReleaseService.from_config(ServiceConfig.from_env())
    return _service


def set_service(service: KeyReleaseService | None) -> None:
    """For tests and embedding: use this instance instead of one built from the environment."""
    global _service
    _service = service


def platform_client_address(forwarded: str) -> str | None:
    """The client address App Service's front end appended to ``X-Forwarded-For`` (``ip:port``,
    ``[v6]:port`` or a bare address). Only the LAST entry is the platform's; earlier ones are
    whatever the client sent, so using them would let anyone pick the address it is limited as."""
    last = forwarded.split(",")[-1].strip()
    if last.startswith("["):
        end = last.find("]")
        return last[1:end] if end > 1 else None
    if last.count(":") == 1:  # IPv4 with a port
        last = last.split(":")[0]
    return last or None


#: The audit ``event`` of each handler (the Functions app's routes).
EVENTS = {"nonce": "nonce", "release": "release", "legacy_wrap_key": "legacy-wrap",
          "legacy_provision_key": "legacy-provision"}


def to_api_request(req: func.HttpRequest) -> ApiRequest | Denied:
    """The request for the handlers, or the denial of a request refused before any handler runs
    (the caller answers it through :meth:`KeyReleaseService.refuse_early`, which audits it)."""
    body = req.get_body() or b""
    if len(body) > MAX_BODY_BYTES:
        return Denied(codes.REQUEST_TOO_LARGE, "request body too large")
    return ApiRequest(method=req.method, body=body, headers=dict(req.headers), query=dict(req.params),
                      route_params=dict(req.route_params), remote=client_address(req))


def client_address(req: func.HttpRequest) -> str | None:
    return platform_client_address(req.headers.get("x-forwarded-for", ""))


def to_func_response(response: ApiResponse) -> func.HttpResponse:
    return func.HttpResponse(body=response.body_bytes(), status_code=response.status, headers=response.headers,
                             mimetype="application/json", charset="utf-8")
