"""Direct methods both ways with the real SDKs: service -> module (azure-iot-hub) and module -> module
through the edgeHub gateway endpoint (IoTHubModuleClient.invoke_method over HTTPS 443)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import requests
from azure.iot.device import MethodResponse
from azure.iot.device.aio import IoTHubModuleClient
from azure.iot.hub import IoTHubRegistryManager
from azure.iot.hub.models import CloudToDeviceMethod
from msrest.exceptions import HttpOperationError

from edb_local.hub import HubThread
from edb_local.hub.sas import make_token

pytestmark = pytest.mark.timeout(60)


def _echo_handler(client: Any) -> Callable[[Any], Any]:
    async def handler(request: Any) -> None:
        status = 404 if request.name == "missing" else 200
        await client.send_method_response(MethodResponse.create_from_method_request(
            request, status, {"method": request.name, "echo": request.payload}))
    return handler


def _invoke(registry: IoTHubRegistryManager, device: str, module: str, name: str, payload: Any,
            timeout: int = 10, connect_timeout: int = 0) -> Any:
    method = CloudToDeviceMethod(method_name=name, payload=payload, response_timeout_in_seconds=timeout,
                                 connect_timeout_in_seconds=connect_timeout)
    return registry.invoke_device_module_method(device, module, method)


async def test_service_invokes_module_method(registry: IoTHubRegistryManager, make_module: Callable[..., str],
                                             module_clients: Callable[..., Any]) -> None:
    key = make_module("dev-m", "runner")
    client = await module_clients("dev-m", "runner", key, connect=False)
    client.on_method_request_received = _echo_handler(client)
    await client.connect()
    result = await asyncio.to_thread(_invoke, registry, "dev-m", "runner", "reload", {"model": "m", "n": [1, 2]})
    assert result.status == 200
    assert result.payload == {"method": "reload", "echo": {"model": "m", "n": [1, 2]}}
    result = await asyncio.to_thread(_invoke, registry, "dev-m", "runner", "missing", "x")
    assert result.status == 404 and result.payload == {"method": "missing", "echo": "x"}


async def test_method_to_offline_module_is_404_and_silent_module_is_504(
        hub: HubThread, registry: IoTHubRegistryManager, make_module: Callable[..., str],
        module_clients: Callable[..., Any]) -> None:
    key = make_module("dev-n", "runner")
    with pytest.raises(HttpOperationError) as offline:
        await asyncio.to_thread(_invoke, registry, "dev-n", "runner", "ping", {})
    assert offline.value.response.status_code == 404
    assert offline.value.response.json()["error"]["code"] == "HUB_DEVICE_NOT_ONLINE"

    silent = await module_clients("dev-n", "runner", key, connect=False)
    calls, silent.on_method_request_received = _counting_handler()
    await silent.connect()
    with pytest.raises(HttpOperationError) as timeout:
        await asyncio.to_thread(_invoke, registry, "dev-n", "runner", "ping", {}, 1)
    assert timeout.value.response.status_code == 504
    assert timeout.value.response.json()["error"]["code"] == "HUB_METHOD_TIMEOUT"
    assert calls == ["ping"]  # the request reached the module; it just never answered


def _counting_handler() -> tuple[list[str], Callable[[Any], None]]:
    calls: list[str] = []
    return calls, lambda request: calls.append(request.name)


async def test_connect_timeout_waits_for_the_module(registry: IoTHubRegistryManager,
                                                    make_module: Callable[..., str],
                                                    module_clients: Callable[..., Any]) -> None:
    key = make_module("dev-o", "runner")
    pending = asyncio.create_task(asyncio.to_thread(_invoke, registry, "dev-o", "runner", "ping", 7, 10, 20))
    await asyncio.sleep(0.3)
    assert not pending.done()
    client = await module_clients("dev-o", "runner", key, connect=False)
    client.on_method_request_received = _echo_handler(client)  # the SDK connects to enable methods
    result = await asyncio.wait_for(pending, 20)
    assert result.status == 200 and result.payload["echo"] == 7


async def test_module_invokes_module_through_the_gateway(
        hub: HubThread, make_module: Callable[..., str], module_clients: Callable[..., Any],
        stack_ca: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    caller_key = make_module("edge-g", "installer")
    callee_key = make_module("edge-g", "runner")
    callee = await module_clients("edge-g", "runner", callee_key, connect=False)
    callee.on_method_request_received = _echo_handler(callee)
    # invoke_method needs an edge-environment client; this is its local-debugging variant
    # (the production variant, through the workload API, is tested with the edge agent)
    connection_string = hub.config.module_connection_string("edge-g", "installer", caller_key)
    monkeypatch.setenv("EdgeHubConnectionString", connection_string)
    monkeypatch.setenv("EdgeModuleCACertificateFile", str(stack_ca.ca_path))
    caller = IoTHubModuleClient.create_from_edge_environment()
    try:
        await caller.connect()
        response = await caller.invoke_method(
            {"methodName": "swap", "payload": {"version": "2"}, "responseTimeoutInSeconds": 10,
             "connectTimeoutInSeconds": 0}, device_id="edge-g", module_id="runner")
        assert response == {"status": 200, "payload": {"method": "swap", "echo": {"version": "2"}}}
        with pytest.raises(Exception, match=r"Unexpected failure|not online|404"):
            await caller.invoke_method({"methodName": "x", "payload": None, "responseTimeoutInSeconds": 5},
                                       device_id="edge-g", module_id="nobody")
    finally:
        await caller.shutdown()


def test_gateway_refuses_a_module_token_for_another_module(hub: HubThread, make_module: Callable[..., str],
                                                           stack_ca: Any) -> None:
    key = make_module("edge-h", "installer")
    make_module("edge-h", "runner")
    token = make_token(f"{hub.config.hub_name}/devices/edge-h/modules/installer", key, expiry=2**31)
    url = f"https://{hub.config.address}/twins/edge-h/modules/runner/methods?api-version=2021-04-12"
    body = {"methodName": "ping", "payload": None}
    # the token is installer's, the header claims runner: refused
    response = requests.post(url, json=body, headers={"Authorization": token, "x-ms-edge-moduleId": "edge-h/runner"},
                             verify=str(stack_ca.ca_path), timeout=10)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "HUB_AUTH_WRONG_RESOURCE"
    # a module token without the edge header is not a service credential either
    response = requests.post(url, json=body, headers={"Authorization": token}, verify=str(stack_ca.ca_path),
                             timeout=10)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "HUB_AUTH_UNKNOWN_POLICY"
