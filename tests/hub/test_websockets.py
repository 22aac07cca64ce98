"""MQTT over WebSockets on 443 (`/$iothub/websocket`, subprotocol `mqtt`) with the real device SDK
(`websockets=True`), and malformed upgrades and frames refused without harming the hub."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from azure.iot.device import Message, MethodResponse
from azure.iot.device.aio import IoTHubDeviceClient
from azure.iot.hub import IoTHubRegistryManager
from azure.iot.hub.models import CloudToDeviceMethod, Twin, TwinProperties
from hub_helpers import eventually, new_key, threadsafe_queue

from edb_local.hub import HubThread
from edb_local.stack_ca import StackCA

pytestmark = pytest.mark.timeout(60)


def _upstream(hub: HubThread) -> list[Any]:
    return list(hub.call(hub.server.core.upstream_since, 0, 1000))


def _echo(client: Any) -> Callable[[Any], Any]:
    async def handler(request: Any) -> None:
        await client.send_method_response(MethodResponse.create_from_method_request(request, 200, request.payload))
    return handler


async def _exercise(hub: HubThread, registry: IoTHubRegistryManager, client: Any, device: str,
                    module: str | None) -> None:
    """Telemetry, twin (get, reported, desired patch) and a direct method over the client's transport."""
    patches, client.on_twin_desired_properties_patch_received = threadsafe_queue()
    client.on_method_request_received = _echo(client)
    await client.connect()
    assert (await asyncio.wait_for(patches.get(), 10))["$version"] == 1  # the SDK's own patch from its GET

    message = Message(json.dumps({"t": 21.5}), content_encoding="utf-8", content_type="application/json")
    message.custom_properties["kind"] = "ws"
    await (client.send_message_to_output(message, "out") if module else client.send_message(message))
    def sent() -> list[Any]:
        return [r for r in _upstream(hub) if r.props["application"].get("kind") == "ws"]

    assert await eventually(lambda: len(sent()), 1) == 1
    rows = sent()
    assert len(rows) == 1 and json.loads(rows[0].body) == {"t": 21.5} and rows[0].module_id == module

    await client.patch_twin_reported_properties({"transport": "websockets"})
    twin = await client.get_twin()
    assert twin["reported"]["transport"] == "websockets"
    desired = Twin(properties=TwinProperties(desired={"rate": 3}))
    if module:
        await asyncio.to_thread(registry.update_module_twin, device, module, desired, "*")
    else:
        await asyncio.to_thread(registry.update_twin, device, desired, "*")
    assert await asyncio.wait_for(patches.get(), 10) == {"rate": 3, "$version": 2}

    method = CloudToDeviceMethod(method_name="echo", payload={"n": 1}, response_timeout_in_seconds=10)
    if module:
        result = await asyncio.to_thread(registry.invoke_device_module_method, device, module, method)
    else:
        result = await asyncio.to_thread(registry.invoke_device_method, device, method)
    assert result.status == 200 and result.payload == {"n": 1}


async def test_module_client_over_websockets(hub: HubThread, registry: IoTHubRegistryManager,
                                             make_module: Callable[..., str],
                                             module_clients: Callable[..., Any]) -> None:
    key = make_module("dev-ws", "mod", edge=False)
    client = await module_clients("dev-ws", "mod", key, connect=False, websockets=True)
    await _exercise(hub, registry, client, "dev-ws", "mod")
    # it really is the WebSocket listener: nothing connected to 8883 for this identity
    assert hub.call(lambda: type(hub.server.core.sessions[client_identity("dev-ws", "mod")].transport).__name__) \
        == "WebSocketTransport"


def client_identity(device: str, module: str | None) -> Any:
    from edb_local.hub.topics import Identity

    return Identity(device, module)


async def test_device_client_over_websockets(hub: HubThread, registry: IoTHubRegistryManager,
                                             stack_ca: StackCA) -> None:
    key = new_key()
    registry.create_device_with_sas("dev-wsd", key, key, "enabled")
    client = IoTHubDeviceClient.create_from_connection_string(
        hub.config.device_connection_string("dev-wsd", key), server_verification_cert=stack_ca.ca_pem,
        websockets=True)
    try:
        await _exercise(hub, registry, client, "dev-wsd", None)
    finally:
        await client.shutdown()


async def test_websocket_with_a_bad_key_is_refused(hub: HubThread, registry: IoTHubRegistryManager,
                                                   stack_ca: StackCA) -> None:
    registry.create_device_with_sas("dev-wsk", new_key(), new_key(), "enabled")
    client = IoTHubDeviceClient.create_from_connection_string(
        hub.config.device_connection_string("dev-wsk", new_key()), server_verification_cert=stack_ca.ca_pem,
        websockets=True, connection_retry=False)
    try:
        with pytest.raises(Exception):  # noqa: B017 (the SDK's error class varies; the hub's code is checked)
            await client.connect()
    finally:
        await client.shutdown()
    assert "HUB_AUTH_BAD_SIGNATURE" in hub.call(hub.server.core.refusal_codes)


def _ssl(stack_ca: StackCA) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(stack_ca.ca_path))


@pytest.mark.parametrize("headers,detail", [
    ({}, "no WebSocket upgrade headers"),
    ({"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
      "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Protocol": "AMQPWSB10"}, "subprotocol"),
    ({"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
      "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}, "subprotocol"),
    ({"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
      "Sec-WebSocket-Key": "short", "Sec-WebSocket-Protocol": "mqtt"}, "no WebSocket upgrade headers"),
])
async def test_malformed_upgrades_are_refused(hub: HubThread, stack_ca: StackCA, headers: dict[str, str],
                                              detail: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(
            f"https://{hub.config.address}/$iothub/websocket", headers=headers, ssl=_ssl(stack_ca)) as response:
        body = await response.json()
    assert response.status == 400 and body["error"]["code"] == "HUB_WS_UPGRADE_REFUSED"
    assert detail in body["error"]["message"]


async def _ws_send(hub: HubThread, stack_ca: StackCA, send: Callable[[Any], Any]) -> aiohttp.WSMessage:
    """Open an mqtt WebSocket, send something, return what ends it (the hub must close it)."""
    async with aiohttp.ClientSession() as session, session.ws_connect(
            f"https://{hub.config.address}/$iothub/websocket", protocols=("mqtt",), ssl=_ssl(stack_ca),
            max_msg_size=0) as ws:
        assert ws.protocol == "mqtt"
        await send(ws)
        return await asyncio.wait_for(ws.receive(), 15)


@pytest.mark.parametrize("send,code", [
    (lambda ws: ws.send_bytes(b"\xff\xff\xff\xff\xff garbage"), "HUB_MQTT_MALFORMED"),
    (lambda ws: ws.send_str("CONNECT please"), "HUB_MQTT_MALFORMED"),
    (lambda ws: ws.send_bytes(b"\x30" + b"\x00" * 400_000), "HUB_MQTT_OVERSIZED"),
    (lambda ws: ws.send_bytes(b"\xc0\x00"), "HUB_MQTT_UNEXPECTED_PACKET"),  # PINGREQ before CONNECT
])
async def test_garbage_frames_close_that_socket_only(hub: HubThread, registry: IoTHubRegistryManager,
                                                     stack_ca: StackCA, send: Callable[[Any], Any],
                                                     code: str) -> None:
    ending = await _ws_send(hub, stack_ca, send)
    assert ending.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
    assert code in hub.call(hub.server.core.refusal_codes)
    assert hub.call(lambda: len(hub.server._connections)) == 0
    # the hub keeps serving WebSocket clients
    key = new_key()
    registry.create_device_with_sas("dev-after", key, key, "enabled")
    client = IoTHubDeviceClient.create_from_connection_string(
        hub.config.device_connection_string("dev-after", key), server_verification_cert=stack_ca.ca_pem,
        websockets=True)
    try:
        await client.connect()
        assert (await client.get_twin())["desired"] == {"$version": 1}
    finally:
        await client.shutdown()


def _paho(hub: HubThread, stack_ca: StackCA, device: str, key: str, *, websockets: bool) -> Any:
    import threading
    import time

    import paho.mqtt.client as paho

    from edb_local.hub.sas import make_token

    client = paho.Client(client_id=device, clean_session=False, protocol=paho.MQTTv311,
                         transport="websockets" if websockets else "tcp")
    if websockets:
        client.ws_set_options(path="/$iothub/websocket")
    client.username_pw_set(f"{hub.config.hub_name}/{device}/?api-version=2021-04-12",
                           make_token(f"{hub.config.hub_name}/devices/{device}", key, expiry=int(time.time()) + 300))
    client.tls_set(ca_certs=str(stack_ca.ca_path), tls_version=ssl.PROTOCOL_TLS_CLIENT)
    client.connected_event = threading.Event()
    client.disconnected_event = threading.Event()
    client.on_connect = lambda c, u, f, rc: rc == 0 and c.connected_event.set()
    client.on_disconnect = lambda c, u, rc: c.disconnected_event.set()
    client.reconnect_delay_set(60, 120)  # no quick reconnect: the takeover must stand
    client.connect(hub.config.address, 443 if websockets else 8883)
    client.loop_start()
    assert client.connected_event.wait(10)
    return client


async def test_a_new_connection_takes_over_a_websocket_session(hub: HubThread, registry: IoTHubRegistryManager,
                                                               stack_ca: StackCA) -> None:
    """One connection per identity across both listeners: the WebSocket one is closed, not left hanging."""
    key = new_key()
    registry.create_device_with_sas("dev-take", key, key, "enabled")
    first = await asyncio.to_thread(_paho, hub, stack_ca, "dev-take", key, websockets=True)
    second = await asyncio.to_thread(_paho, hub, stack_ca, "dev-take", key, websockets=False)
    try:
        assert await asyncio.to_thread(first.disconnected_event.wait, 10)
        assert await eventually(lambda: hub.call(lambda: len(hub.server._connections)), 1) == 1
        assert "HUB_MQTT_SESSION_TAKEN_OVER" in hub.call(hub.server.core.refusal_codes)
        assert not second.disconnected_event.is_set()
    finally:
        for client in (first, second):
            client.loop_stop()
            client.disconnect()
