"""Direct methods through edgeHub stay on the caller's device; the twin shows the Plug and Play
model id a module announced; an unreachable hub has its own code.

Real clients: the device SDK's ``IoTHubModuleClient.invoke_method`` (the edgeHub gateway path), the
service SDK's ``invoke_device_module_method``, the reporter's own ``product_info`` announcement, and
``edb``'s service client.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

import pytest
from azure.iot.device import MethodResponse
from azure.iot.device.aio import IoTHubModuleClient
from azure.iot.hub import IoTHubRegistryManager
from azure.iot.hub.models import CloudToDeviceMethod
from click.testing import CliRunner

from edb_local.hub import HubThread
from edb_local.hub.client import ServiceClient, ServiceSettings
from edb_local.hub.errors import HubError
from edb_local.hub.mqtt.codec import ConnAck, Connect, MqttDecoder, encode
from edb_local.hub.sas import make_token
from edb_local.net import free_port
from telemetry_reporter.main import MODEL_ID

pytestmark = pytest.mark.timeout(90)


def _recording_handler(client: Any, calls: list[str]) -> Callable[[Any], Any]:
    async def handler(request: Any) -> None:
        calls.append(request.name)
        await client.send_method_response(MethodResponse.create_from_method_request(request, 200, {"ok": True}))
    return handler


async def test_a_module_invokes_methods_only_on_modules_of_its_own_device(
        hub: HubThread, registry: IoTHubRegistryManager, make_module: Callable[..., str],
        module_clients: Callable[..., Any], stack_ca: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    a_installer = make_module("edge-a", "installer")
    a_runner = make_module("edge-a", "runner")
    b_installer = make_module("edge-b", "package_installer")
    calls: dict[str, list[str]] = {"a": [], "b": []}
    own = await module_clients("edge-a", "runner", a_runner, connect=False)
    own.on_method_request_received = _recording_handler(own, calls["a"])
    await own.connect()
    victim = await module_clients("edge-b", "package_installer", b_installer, connect=False)
    victim.on_method_request_received = _recording_handler(victim, calls["b"])
    await victim.connect()

    monkeypatch.setenv("EdgeHubConnectionString", hub.config.module_connection_string("edge-a", "installer",
                                                                                      a_installer))
    monkeypatch.setenv("EdgeModuleCACertificateFile", str(stack_ca.ca_path))
    caller = IoTHubModuleClient.create_from_edge_environment()
    try:
        await caller.connect()
        params = {"methodName": "uninstall", "payload": {"name": "digits"}, "responseTimeoutInSeconds": 5,
                  "connectTimeoutInSeconds": 0}
        # its own device's module: allowed
        response: Any = await caller.invoke_method(params, device_id="edge-a", module_id="runner")
        assert response == {"status": 200, "payload": {"ok": True}}
        # another device's module, or a device-level method: refused before anything is delivered
        with pytest.raises(Exception):  # noqa: B017 (the SDK wraps the 401 in its own exception types)
            await caller.invoke_method(params, device_id="edge-b", module_id="package_installer")
        with pytest.raises(Exception):  # noqa: B017
            await caller.invoke_method(params, device_id="edge-b")
    finally:
        await caller.shutdown()
    codes = hub.call(hub.server.core.refusal_codes)
    assert codes.count("HUB_AUTH_METHOD_TARGET") == 2
    assert calls == {"a": ["uninstall"], "b": []}

    # the service may invoke any module's methods
    method = CloudToDeviceMethod(method_name="status", payload=None, response_timeout_in_seconds=5)
    result = await asyncio.to_thread(registry.invoke_device_module_method, "edge-b", "package_installer", method)
    assert result.status == 200 and calls["b"] == ["status"]


async def test_the_twin_shows_the_model_id_the_reporter_announces(
        hub: HubThread, make_module: Callable[..., str], module_clients: Callable[..., Any], stack_ca: Any) -> None:
    key = make_module("edge-p", "telemetry_reporter")
    service = ServiceClient(ServiceSettings(hub.config.service_host, "iothubowner", hub.config.owner_key,
                                            str(stack_ca.ca_path)))
    assert service.module_twin("edge-p", "telemetry_reporter")["modelId"] == ""
    reporter = await module_clients("edge-p", "telemetry_reporter", key, product_info=MODEL_ID)
    assert service.module_twin("edge-p", "telemetry_reporter")["modelId"] == MODEL_ID == "dtmi:edb:telemetryReporter;1"
    await reporter.shutdown()
    # kept on the twin while the module is away, and across a restart of the hub's state
    assert service.module_twin("edge-p", "telemetry_reporter")["modelId"] == MODEL_ID
    assert hub.call(lambda: hub.server.core.state.twin(_identity("edge-p", "telemetry_reporter")).to_record())[
        "modelId"] == MODEL_ID


def _identity(device: str, module: str) -> Any:
    from edb_local.hub.topics import Identity

    return Identity(device, module)


@pytest.mark.parametrize("model_id", ["not-a-dtmi", "dtmi:edb:x", "dtmi:1bad;1", "dtmi:a;0"])
def test_a_malformed_model_id_is_refused_at_connect(hub: HubThread, make_module: Callable[..., str],
                                                    stack_ca: Any, model_id: str) -> None:
    import urllib.parse

    key = make_module("edge-q", "m")
    username = (f"{hub.config.hub_name}/edge-q/m/?api-version=2020-09-30&"
                f"model-id={urllib.parse.quote(model_id, safe='')}")
    token = make_token(f"{hub.config.hub_name}/devices/edge-q/modules/m", key, expiry=int(time.time()) + 600)
    context = ssl.create_default_context(cafile=str(stack_ca.ca_path))
    with context.wrap_socket(socket.create_connection((hub.config.address, 8883), timeout=10),
                             server_hostname=hub.config.address) as sock:
        sock.sendall(encode(Connect(client_id="edge-q/m", username=username, password=token.encode())))
        assert MqttDecoder().feed(sock.recv(4096)) == [ConnAck(4)]
    assert "HUB_AUTH_BAD_USERNAME" in hub.call(hub.server.core.refusal_codes)


def test_an_unreachable_hub_is_not_a_configuration_error(loopback_address: str, stack_ca: Any,
                                                         monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    from edb.cli.main import root

    host = f"{loopback_address}:{free_port(loopback_address)}"  # nothing listens there
    client = ServiceClient(ServiceSettings(host, "iothubowner", "a2V5", str(stack_ca.ca_path)), timeout=5)
    with pytest.raises(HubError) as down:
        client.module_twin("d", "m")
    assert down.value.code == "HUB_UNREACHABLE"
    # and through the CLI, as a script sees it
    monkeypatch.setenv("EDB_IOTHUB_CONNECTION_STRING",
                       f"HostName={host};SharedAccessKeyName=iothubowner;SharedAccessKey=a2V5")
    monkeypatch.setenv("EDB_CA_CERT", str(stack_ca.ca_path))
    result = CliRunner().invoke(root, ["twin", "show", "d", "m", "--state-dir", str(tmp_path)])
    assert isinstance(result.exception, HubError) and result.exception.code == "HUB_UNREACHABLE"
    # a connection string that is wrong stays a configuration error
    monkeypatch.setenv("EDB_IOTHUB_CONNECTION_STRING", "HostName=x")
    result = CliRunner().invoke(root, ["twin", "show", "d", "m", "--state-dir", str(tmp_path)])
    assert isinstance(result.exception, HubError) and result.exception.code == "HUB_CONFIG_INVALID"
