"""The Azure Functions v2 app: routes, methods and auth levels as declared, and the functions
calling the same handlers (func.HttpRequest in, func.HttpResponse out)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from kr_helpers import Manufacturer, Publisher, build_package, release_body, unique

from edb.attestation.keywrap import open_released_key
from edb.keys.azure_keyvault import KeyVaultKek
from key_release_service import codes
from key_release_service.functions_adapter import set_service
from key_release_service.request import MAX_BODY_BYTES
from key_release_service.service import KeyReleaseService

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "cloud" / "key_release"))
import function_app

# the Functions library indexes an app once (as the host does at start-up)
FUNCTIONS = {f.get_function_name(): f for f in function_app.app.get_functions()}


@pytest.fixture
def functions() -> Iterator[dict[str, Any]]:
    yield FUNCTIONS
    set_service(None)


def test_routes_methods_and_auth_levels(functions: dict[str, Any]) -> None:
    def trigger(name: str) -> dict[str, Any]:
        spec = json.loads(functions[name].get_function_json())
        return next(b for b in spec["bindings"] if b["type"] == "httpTrigger")

    assert set(functions) == {"nonce", "release", "WrapKey", "ProvisionKey"}
    assert trigger("nonce")["route"] == "nonce" and trigger("nonce")["methods"] == ["POST"]
    assert trigger("release")["authLevel"] == "ANONYMOUS"
    assert trigger("WrapKey")["authLevel"] == "FUNCTION"
    assert trigger("ProvisionKey")["route"] == "ProvisionKey/{key_name}"
    host = json.loads((Path(function_app.__file__).parent / "host.json").read_text())
    assert host["extensions"]["http"]["routePrefix"] == "api"


async def test_functions_serve_the_same_handlers(functions: dict[str, Any], make_service: Callable[..., Any],
                                                 manufacturer: Manufacturer, kek: KeyVaultKek, publisher: Publisher,
                                                 set_policy: Callable[..., Any]) -> None:
    service: KeyReleaseService = make_service()
    set_service(service)
    pid = unique("fn")
    set_policy(pid)
    pkg, _ = build_package(kek, publisher, pid)
    device = manufacturer.device(unique("dev"))

    async def call(name: str, body: bytes = b"", route_params: dict[str, str] | None = None,
                   method: str = "POST") -> func.HttpResponse:
        request = func.HttpRequest(method=method, url=f"https://kr.example/api/{name}", body=body,
                                   headers={"x-forwarded-for": "203.0.113.9, 10.0.0.1"},
                                   route_params=route_params or {})
        response: func.HttpResponse = await functions[name].get_user_function()(request)
        return response

    nonce_response = await call("nonce")
    assert nonce_response.status_code == 200 and nonce_response.mimetype == "application/json"
    nonce = json.loads(nonce_response.get_body())["nonce"]
    evidence, otk = device.evidence(nonce, pkg)
    response = await call("release", release_body(evidence, pkg))
    assert response.status_code == 200
    jwe = json.loads(response.get_body())["jwe"]
    assert len(open_released_key(jwe, otk, package_id=pid, version="1.0.0").dek) == 32

    replay = await call("release", release_body(evidence, pkg))
    assert replay.status_code == 401
    assert json.loads(replay.get_body())["error"]["code"] == codes.NONCE_REPLAYED
    too_big = await call("release", b"x" * (MAX_BODY_BYTES + 1))
    assert too_big.status_code == 413
    legacy = await call("ProvisionKey", route_params={"key_name": "abc"}, method="GET")
    assert legacy.status_code == 404 and json.loads(legacy.get_body())["error"]["code"] == codes.LEGACY_DISABLED


async def test_misconfigured_app_fails_closed(functions: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDB_KEYVAULT_URL", raising=False)
    set_service(None)
    request = func.HttpRequest(method="POST", url="https://kr.example/api/nonce", body=b"")
    response: func.HttpResponse = await functions["nonce"].get_user_function()(request)
    assert response.status_code == 500
    assert json.loads(response.get_body())["error"]["code"] == codes.INTERNAL


MARKER = b"SECRET-LOOKING-BODY"


async def test_oversized_request_in_the_functions_adapter_is_audited(
        functions: dict[str, Any], make_service: Callable[..., KeyReleaseService], audit_lines: list[str]) -> None:
    set_service(make_service())
    for name, event in (("release", "release"), ("nonce", "nonce")):
        request = func.HttpRequest(method="POST", url=f"https://kr.example/api/{name}",
                                   body=MARKER + b"x" * MAX_BODY_BYTES,
                                   headers={"x-forwarded-for": "198.51.100.7, 203.0.113.9:443"})
        response: func.HttpResponse = await functions[name].get_user_function()(request)
        assert response.status_code == 413
        assert json.loads(response.get_body())["error"]["code"] == codes.REQUEST_TOO_LARGE
        (line,) = [json.loads(x) for x in audit_lines[-1:]]
        assert (line["event"], line["decision"], line["code"], line["remote"]) == (
            event, "deny", codes.REQUEST_TOO_LARGE, "203.0.113.9")  # the platform's (last) address
    assert len(audit_lines) == 2
    assert not any(MARKER.decode() in line for line in audit_lines)
