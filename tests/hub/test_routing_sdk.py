"""edgeHub routing with the real SDKs: deployment through applyConfigurationContent, routes with
WHERE clauses, property bags end to end, $upstream into the monitor feed, store-and-forward."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from azure.iot.device import Message
from azure.iot.hub import IoTHubConfigurationManager, IoTHubRegistryManager
from azure.iot.hub.models import ConfigurationContent
from hub_helpers import eventually, threadsafe_queue

from edb_local.hub import HubThread
from edb_local.hub.client import ServiceClient, resolve_settings

pytestmark = pytest.mark.timeout(60)

ROUTES = {
    "hot": 'FROM /messages/modules/sensor/outputs/readings WHERE $body.temperature > 30 '
           'INTO BrokeredEndpoint("/modules/runner/inputs/hot")',
    "alerts": {"route": "FROM /messages/modules/* WHERE messageType = 'alert' INTO $upstream",
               "priority": 0, "timeToLiveSecs": 60},
    "results": "FROM /messages/modules/runner/outputs/* INTO $upstream",
}


def deploy(hub: HubThread, device_id: str, routes: dict[str, Any], ttl: int = 7200) -> None:
    content = ConfigurationContent(modules_content={
        "$edgeAgent": {"properties.desired": {"schemaVersion": "1.1", "modules": {}}},
        "$edgeHub": {"properties.desired": {"schemaVersion": "1.1", "routes": routes,
                                            "storeAndForwardConfiguration": {"timeToLiveSecs": ttl}}},
    })
    manager = IoTHubConfigurationManager.from_connection_string(hub.config.service_connection_string)
    manager.apply_configuration_on_edge_device(device_id, content)


def json_message(body: dict[str, Any], output: str | None = None, **props: str) -> Message:
    message = Message(json.dumps(body), message_id=str(uuid.uuid4()), content_encoding="utf-8",
                      content_type="application/json", output_name=output)
    message.custom_properties.update(props)
    return message


def monitor(hub: HubThread, stack_ca: Any) -> ServiceClient:
    settings = resolve_settings(hub.config.service_connection_string, str(stack_ca.ca_path), environ={}, env_file={})
    return ServiceClient(settings)


async def test_routes_with_where_clauses_and_property_bags(
        hub: HubThread, stack_ca: Any, registry: IoTHubRegistryManager, make_module: Callable[..., str],
        module_clients: Callable[..., Any]) -> None:
    sensor_key = make_module("edge-r", "sensor")
    runner_key = make_module("edge-r", "runner")
    deploy(hub, "edge-r", ROUTES)
    assert registry.get_module_twin("edge-r", "$edgeHub").properties.reported["lastDesiredStatus"]["code"] == 200

    runner = await module_clients("edge-r", "runner", runner_key, connect=False)
    inputs, runner.on_message_received = threadsafe_queue()
    await runner.connect()
    sensor = await module_clients("edge-r", "sensor", sensor_key)

    odd = {"path": "a/b", "query": "x=y&z", "unicode": "é✓", "space": "two words", "empty": ""}
    hot = json_message({"temperature": 35.5}, "readings", **odd)
    await sensor.send_message_to_output(hot, "readings")
    await sensor.send_message_to_output(json_message({"temperature": 20}), "readings")          # WHERE false
    plain = Message(json.dumps({"temperature": 99}), content_type="text/plain")                  # no JSON body
    await sensor.send_message_to_output(plain, "readings")
    await sensor.send_message_to_output(json_message({"temperature": 99}), "other")              # other output

    received = await asyncio.wait_for(inputs.get(), 10)
    assert received.input_name == "hot"
    assert json.loads(received.data) == {"temperature": 35.5}
    assert received.message_id == hot.message_id
    assert received.content_type == "application/json" and received.content_encoding == "utf-8"
    assert {k: received.custom_properties[k] for k in odd} == odd
    assert received.custom_properties["$.cdid"] == "edge-r" and received.custom_properties["$.cmid"] == "sensor"

    await sensor.send_message_to_output(json_message({"level": "high"}, messageType="alert"), "alerts")
    await runner.send_message_to_output(json_message({"score": 0.9}), "results")
    feed = monitor(hub, stack_ca)
    events: list[dict[str, Any]] = []
    since = 0
    while len(events) < 2:
        page = await asyncio.to_thread(feed.messages, since, 100, 5.0)
        events += page.events
        since = page.next
    by_module = {e["event"]["module"]: e["event"] for e in events}
    assert by_module["sensor"]["payload"] == {"level": "high"}
    assert by_module["sensor"]["properties"]["application"] == {"messageType": "alert"}
    assert by_module["runner"]["payload"] == {"score": 0.9}
    assert by_module["runner"]["origin"] == "edge-r"
    assert by_module["runner"]["properties"]["system"]["content_type"] == "application/json"
    assert inputs.empty()  # the cold, non-JSON and other-output messages went nowhere
    assert len(events) == 2


async def test_store_and_forward_across_a_module_restart(
        hub: HubThread, make_module: Callable[..., str], module_clients: Callable[..., Any]) -> None:
    sensor_key = make_module("edge-s", "sensor")
    runner_key = make_module("edge-s", "runner")
    deploy(hub, "edge-s", ROUTES)
    first = await module_clients("edge-s", "runner", runner_key, connect=False)
    inputs, first.on_message_received = threadsafe_queue()
    await first.connect()
    sensor = await module_clients("edge-s", "sensor", sensor_key)
    await sensor.send_message_to_output(json_message({"temperature": 31, "n": -1}), "readings")
    assert json.loads((await asyncio.wait_for(inputs.get(), 10)).data)["n"] == -1
    await first.shutdown()  # the module process stops

    sent = []
    for n in range(25):
        message = json_message({"temperature": 31, "n": n})
        sent.append(n)
        await sensor.send_message_to_output(message, "readings")
    def backlog() -> int:
        return int(hub.call(lambda: len(hub.server.core.queues[_identity("edge-s", "runner")])))

    queued = await eventually(backlog, 25)
    assert queued == 25

    second = await module_clients("edge-s", "runner", runner_key, connect=False)  # the restarted module
    inputs, second.on_message_received = threadsafe_queue()
    await second.connect()
    got: list[int] = []
    while len(set(got)) < len(sent):
        got.append(json.loads((await asyncio.wait_for(inputs.get(), 10)).data)["n"])
    assert sorted(set(got)) == sent          # nothing lost
    assert got[:25] == sent                  # in order (same priority)
    # every one acknowledged and deleted (the SDK acknowledges after handing the message over)
    hub_queue = await eventually(backlog, 0)
    assert hub_queue == 0


async def test_expired_messages_are_dropped_not_delivered(
        hub: HubThread, make_module: Callable[..., str], module_clients: Callable[..., Any]) -> None:
    sensor_key = make_module("edge-t", "sensor")
    runner_key = make_module("edge-t", "runner")
    routes = {"hot": {"route": ROUTES["hot"], "timeToLiveSecs": 1}}
    deploy(hub, "edge-t", routes)
    sensor = await module_clients("edge-t", "sensor", sensor_key)
    await sensor.send_message_to_output(json_message({"temperature": 40, "n": "old"}), "readings")
    await asyncio.sleep(1.5)
    runner = await module_clients("edge-t", "runner", runner_key, connect=False)
    inputs, runner.on_message_received = threadsafe_queue()
    await runner.connect()
    await sensor.send_message_to_output(json_message({"temperature": 40, "n": "new"}), "readings")
    assert json.loads((await asyncio.wait_for(inputs.get(), 10)).data)["n"] == "new"
    assert hub.call(lambda: hub.server.core.queues[_identity("edge-t", "runner")].expired) == 1


async def test_priority_orders_the_backlog(hub: HubThread, make_module: Callable[..., str],
                                           module_clients: Callable[..., Any]) -> None:
    sensor_key = make_module("edge-p", "sensor")
    runner_key = make_module("edge-p", "runner")
    sink = 'BrokeredEndpoint("/modules/runner/inputs/in")'
    deploy(hub, "edge-p", {
        "bulk": {"route": f"FROM /messages/modules/sensor/outputs/bulk INTO {sink}", "priority": 5},
        "urgent": {"route": f"FROM /messages/modules/sensor/outputs/urgent INTO {sink}", "priority": 0},
    })
    sensor = await module_clients("edge-p", "sensor", sensor_key)
    for n in range(3):
        await sensor.send_message_to_output(json_message({"n": f"bulk{n}"}), "bulk")
    await sensor.send_message_to_output(json_message({"n": "urgent"}), "urgent")
    runner = await module_clients("edge-p", "runner", runner_key, connect=False)
    inputs, runner.on_message_received = threadsafe_queue()
    await runner.connect()
    order = [json.loads((await asyncio.wait_for(inputs.get(), 10)).data)["n"] for _ in range(4)]
    assert order == ["urgent", "bulk0", "bulk1", "bulk2"]


async def test_invalid_routes_are_refused_and_reported(hub: HubThread, registry: IoTHubRegistryManager,
                                                       make_module: Callable[..., str]) -> None:
    from azure.iot.hub.models import Twin, TwinProperties
    from msrest.exceptions import HttpOperationError

    make_module("edge-v", "sensor")
    deploy(hub, "edge-v", {"ok": "FROM /* INTO $upstream"})
    with pytest.raises(HttpOperationError) as refused:
        deploy(hub, "edge-v", {"bad": "FROM /messages/* WHERE $twin.tags.x = 1 INTO $upstream"})
    assert refused.value.response.json()["error"]["code"] == "HUB_ROUTE_INVALID"
    # written straight into the $edgeHub twin, edgeHub keeps its last good routes and reports the failure
    registry.update_module_twin("edge-v", "$edgeHub", Twin(properties=TwinProperties(
        desired={"routes": {"ok": None, "bad": "FROM nowhere INTO $upstream"}})))
    reported = registry.get_module_twin("edge-v", "$edgeHub").properties.reported
    assert reported["lastDesiredStatus"]["code"] == 400
    assert "HUB_ROUTE_INVALID" in reported["lastDesiredStatus"]["description"]
    assert [r.name for r in hub.call(lambda: hub.server.core.route_tables["edge-v"].routes)] == ["ok"]


def _identity(device: str, module: str) -> Any:
    from edb_local.hub.topics import Identity

    return Identity(device, module)


class _RawModule:
    """A module connection speaking MQTT through the hub's own codec, so the test decides when (and
    whether) to acknowledge, and sees the DUP flag the SDK hides."""

    def __init__(self, hub: HubThread, ca_path: str, device: str, module: str, key: str) -> None:
        import socket
        import ssl
        import time

        from edb_local.hub.mqtt.codec import MqttDecoder
        from edb_local.hub.sas import make_token

        context = ssl.create_default_context(cafile=ca_path)
        self.sock = context.wrap_socket(socket.create_connection((hub.config.address, 8883), timeout=10),
                                        server_hostname=hub.config.address)
        self.decoder = MqttDecoder()
        self.packets: list[Any] = []
        self._buffer: list[Any] = []
        self._taken = 0  # packets already looked at by publishes()
        self.client_id = f"{device}/{module}"
        self.username = f"{hub.config.hub_name}/{device}/{module}/?api-version=2021-04-12"
        self.password = make_token(f"{hub.config.hub_name}/devices/{device}/modules/{module}", key,
                                   expiry=int(time.time()) + 600).encode()
        self.inputs = f"devices/{device}/modules/{module}/inputs/#"

    def connect_and_subscribe(self) -> None:
        from edb_local.hub.mqtt.codec import ConnAck, Connect, SubAck, Subscribe, encode

        self.sock.sendall(encode(Connect(client_id=self.client_id, clean_session=False, username=self.username,
                                         password=self.password)))
        connack = self.next_packet()
        assert isinstance(connack, ConnAck) and connack.return_code == 0
        self.sock.sendall(encode(Subscribe(1, ((self.inputs, 1),))))
        while not any(isinstance(p, SubAck) for p in self.packets):
            self.next_packet()

    def next_packet(self) -> Any:
        while not self._buffer:
            data = self.sock.recv(65536)
            assert data, "the hub closed the connection"
            self._buffer.extend(self.decoder.feed(data))
        packet = self._buffer.pop(0)
        self.packets.append(packet)
        return packet

    def publishes(self, count: int) -> list[Any]:
        """The next ``count`` input PUBLISHes (also those that came before the SUBACK: a restored
        session is pumped as soon as it is attached)."""
        from edb_local.hub.mqtt.codec import Publish

        while sum(isinstance(p, Publish) for p in self.packets[self._taken:]) < count:
            self.next_packet()
        got: list[Any] = []
        while len(got) < count:
            packet = self.packets[self._taken]
            self._taken += 1
            if isinstance(packet, Publish):
                got.append(packet)
        return got

    def ack(self, packet_id: int) -> None:
        from edb_local.hub.mqtt.codec import PubAck, encode

        self.sock.sendall(encode(PubAck(packet_id)))

    def drop(self) -> None:
        """The process dies: the TCP connection ends without DISCONNECT (nor a TLS close_notify)."""
        import socket

        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


async def test_a_dropped_connection_with_unacknowledged_inputs_gets_them_again_with_dup(
        hub: HubThread, make_module: Callable[..., str], module_clients: Callable[..., Any], stack_ca: Any) -> None:
    sensor_key = make_module("edge-u", "sensor")
    runner_key = make_module("edge-u", "runner")
    deploy(hub, "edge-u", ROUTES)
    sensor = await module_clients("edge-u", "sensor", sensor_key)
    first = _RawModule(hub, str(stack_ca.ca_path), "edge-u", "runner", runner_key)
    await asyncio.to_thread(first.connect_and_subscribe)
    for n in range(12):
        await sensor.send_message_to_output(json_message({"temperature": 40, "n": n}), "readings")
    held = await asyncio.to_thread(first.publishes, 12)     # all in flight, none acknowledged
    assert [json.loads(p.payload)["n"] for p in held] == list(range(12)) and not any(p.dup for p in held)
    await asyncio.to_thread(first.ack, held[0].packet_id)  # only the first one was processed

    def backlog() -> int:
        return int(hub.call(lambda: len(hub.server.core.queues[_identity("edge-u", "runner")])))

    def connected() -> bool:
        return bool(hub.call(lambda: _identity("edge-u", "runner") in hub.server.core.sessions))

    assert await eventually(backlog, 11) == 11              # the acknowledged one is gone
    first.drop()
    assert await eventually(connected, False) is False
    for n in range(12, 15):                                 # more arrive while the module is away
        await sensor.send_message_to_output(json_message({"temperature": 40, "n": n}), "readings")
    assert await eventually(backlog, 14) == 14              # 11 unacknowledged + 3 new, none lost

    second = _RawModule(hub, str(stack_ca.ca_path), "edge-u", "runner", runner_key)  # the restarted module
    await asyncio.to_thread(second.connect_and_subscribe)
    again = await asyncio.to_thread(second.publishes, 14)
    assert [json.loads(p.payload)["n"] for p in again] == list(range(1, 15))  # in order, nothing lost
    assert [p.dup for p in again] == [True] * 11 + [False] * 3   # redeliveries say so
    for packet in again:
        await asyncio.to_thread(second.ack, packet.packet_id)
    assert await eventually(backlog, 0) == 0
    second.drop()
