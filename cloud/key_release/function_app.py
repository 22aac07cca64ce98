"""Azure Functions app (Python v2 programming model) over the plain handlers in key_release_service.

Routes (default prefix ``api``): ``POST /api/nonce`` and ``POST /api/release`` are anonymous at the
Functions layer (the device's evidence is the authentication); the legacy ``POST /api/WrapKey`` and
``/api/ProvisionKey/{key_name}`` need a function key, as the original did, and answer 404
``KR_LEGACY_DISABLED`` unless ``EDB_KR_LEGACY_ENABLED=1``. Settings: see docs/key-release.md.
"""

from __future__ import annotations

import logging

import azure.functions as func

from edb.errors import EdbError
from key_release_service import codes
from key_release_service.codes import Denied
from key_release_service.functions_adapter import EVENTS, client_address, get_service, to_api_request, to_func_response
from key_release_service.http_types import ApiResponse

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


async def _serve(req: func.HttpRequest, handler_name: str) -> func.HttpResponse:
    try:
        service = get_service()
    except EdbError as exc:  # missing or invalid application settings: fail closed, say so in the log
        logging.getLogger("edb.keyrelease").error("key release service misconfigured: %s", exc)
        return to_func_response(ApiResponse.from_denial(Denied(codes.INTERNAL, "service misconfigured")))
    api_request = to_api_request(req)
    if isinstance(api_request, Denied):  # refused before the handler: audited like every decision
        return to_func_response(service.refuse_early(EVENTS[handler_name], api_request, client_address(req)))
    return to_func_response(await getattr(service, handler_name)(api_request))


@app.function_name(name="nonce")
@app.route(route="nonce", methods=[func.HttpMethod.POST], auth_level=func.AuthLevel.ANONYMOUS)
async def nonce(req: func.HttpRequest) -> func.HttpResponse:
    return await _serve(req, "nonce")


@app.function_name(name="release")
@app.route(route="release", methods=[func.HttpMethod.POST], auth_level=func.AuthLevel.ANONYMOUS)
async def release(req: func.HttpRequest) -> func.HttpResponse:
    return await _serve(req, "release")


@app.function_name(name="WrapKey")
@app.route(route="WrapKey", methods=[func.HttpMethod.POST], auth_level=func.AuthLevel.FUNCTION)
async def wrap_key(req: func.HttpRequest) -> func.HttpResponse:
    return await _serve(req, "legacy_wrap_key")


@app.function_name(name="ProvisionKey")
@app.route(route="ProvisionKey/{key_name}", methods=[func.HttpMethod.GET, func.HttpMethod.POST],
           auth_level=func.AuthLevel.FUNCTION)
async def provision_key(req: func.HttpRequest) -> func.HttpResponse:
    return await _serve(req, "legacy_provision_key")
