"""Hostile or broken MQTT clients (paho-mqtt and raw TLS sockets): each is refused with its code, only
its own connection is closed, and the legitimate traffic flowing meanwhile loses nothing."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as paho
import pytest
from azure.iot.device import Message
from hub_helpers import eventually, threadsafe_queue

from edb_local.hub import HubThread
from edb_local.hub.mqtt.codec import ConnAck, Connect, MqttDecoder, Publish, SubAck, Subscribe, encode
from edb_local.hub.sas import make_token

pytestmark = pytest.mark.timeout(60)

ROUTE = {"toRunner": 'FROM /messages/modules/sensor/* INTO BrokeredEndpoint("/modules/runner/inputs/in")',
         "up": "FROM /messages/modules/* INTO $upstream"}


def _token(hub: HubThread, device: str, module: str, key: str, ttl: int = 3600) -> str:
    return make_token(f"{hub.config.hub_name}/devices/{device}/modules/{module}", key, expiry=int(time.time()) + ttl)


def _username(hub: HubThread, device: str, module: str) -> str:
    return f"{hub.config.hub_name}/{device}/{module}/?api-version=2021-04-12"


class PahoClient:
    """A paho-mqtt 1.6 client over TLS to the hub, recording what happens to it."""

    def __init__(self, hub: HubThread, ca_path: str, device: str, module: str, password: str) -> None:
        self.connack: int | None = None
        self.disconnected = threading.Event()
        self.connected = threading.Event()
        self.messages: list[tuple[str, bytes]] = []
        self.subacks: dict[int, tuple[int, ...]] = {}
        self.client = paho.Client(client_id=f"{device}/{module}", clean_session=False, protocol=paho.MQTTv311)
        self.client.username_pw_set(_username(hub, device, module), password)
        self.client.tls_set(ca_certs=ca_path, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda c, u, rc: self.disconnected.set()
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload))
        self.client.on_subscribe = lambda c, u, mid, granted: self.subacks.__setitem__(mid, tuple(granted))
        self.client.reconnect_delay_set(60, 120)  # never reconnect during a test
        self.client.connect(hub.config.address, 8883, keepalive=30)
        self.client.loop_start()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: int) -> None:
        self.connack = rc
        if rc == 0:
            self.connected.set()
        else:
            self.disconnected.set()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def paho_clients(stack_ca: Any) -> Iterator[Callable[..., PahoClient]]:
    made: list[PahoClient] = []

    def make(hub: HubThread, device: str, module: str, password: str) -> PahoClient:
        client = PahoClient(hub, str(stack_ca.ca_path), device, module, password)
        made.append(client)
        return client

    yield make
    for client in made:
        client.stop()


class RawTls:
    """A TLS socket speaking whatever bytes the test gives it."""

    def __init__(self, hub: HubThread, ca_path: str) -> None:
        context = ssl.create_default_context(cafile=ca_path)
        raw = socket.create_connection((hub.config.address, 8883), timeout=10)
        self.sock = context.wrap_socket(raw, server_hostname=hub.config.address)
        self.decoder = MqttDecoder()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_packets(self) -> list[Any]:
        data = self.sock.recv(65536)
        return self.decoder.feed(data) if data else []

    def closed_by_peer(self) -> bool:
        """True once the hub closed the connection (reads return EOF or reset)."""
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
        except (ConnectionResetError, ssl.SSLError, BrokenPipeError):
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


async def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


@pytest.fixture
async def legit(hub: HubThread, make_module: Callable[..., str], module_clients: Callable[..., Any]) -> Any:
    """A sensor and a runner on edge device `edge-x`, routed sensor -> runner; the traffic that
    must not be disturbed."""
    from azure.iot.hub import IoTHubConfigurationManager
    from azure.iot.hub.models import ConfigurationContent

    keys = {m: make_module("edge-x", m) for m in ("sensor", "runner", "intruder")}
    IoTHubConfigurationManager.from_connection_string(hub.config.service_connection_string) \
        .apply_configuration_on_edge_device("edge-x", ConfigurationContent(modules_content={
            "$edgeAgent": {"properties.desired": {"schemaVersion": "1.1"}},
            "$edgeHub": {"properties.desired": {"schemaVersion": "1.1", "routes": ROUTE}}}))
    runner = await module_clients("edge-x", "runner", keys["runner"], connect=False)
    inputs, runner.on_message_received = threadsafe_queue()
    await runner.connect()
    sensor = await module_clients("edge-x", "sensor", keys["sensor"])

    class Legit:
        def __init__(self) -> None:
            self.sent: list[str] = []
            self.got: set[str] = set()
            self.keys = keys

        async def send(self) -> None:
            mid = str(uuid.uuid4())
            self.sent.append(mid)
            await sensor.send_message_to_output(Message(json.dumps({"mid": mid}), message_id=mid), "out")

        async def all_delivered(self) -> None:
            while not set(self.sent) <= self.got:
                self.got.add((await asyncio.wait_for(inputs.get(), 10)).message_id)

    legit = Legit()
    await legit.send()
    return legit


async def test_wrong_key_and_expired_token_are_refused(hub: HubThread, legit: Any,
                                                       paho_clients: Callable[..., PahoClient]) -> None:
    wrong = paho_clients(hub, "edge-x", "intruder", _token(hub, "edge-x", "intruder", legit.keys["sensor"]))
    expired = paho_clients(hub, "edge-x", "intruder", _token(hub, "edge-x", "intruder", legit.keys["intruder"], -60))
    other_hub = make_token("other.azure-devices.net/devices/edge-x/modules/intruder", legit.keys["intruder"],
                           expiry=int(time.time()) + 600)
    foreign = paho_clients(hub, "edge-x", "intruder", other_hub)
    await legit.send()
    for client in (wrong, expired, foreign):
        assert await asyncio.to_thread(client.disconnected.wait, 10)
        assert client.connack == 5  # not authorized
    codes = hub.call(hub.server.core.refusal_codes)
    assert {"HUB_AUTH_BAD_SIGNATURE", "HUB_AUTH_TOKEN_EXPIRED", "HUB_AUTH_WRONG_RESOURCE"} <= set(codes)
    await legit.send()
    await legit.all_delivered()


async def test_qos2_publish_closes_only_that_connection(hub: HubThread, legit: Any,
                                                        paho_clients: Callable[..., PahoClient]) -> None:
    intruder = paho_clients(hub, "edge-x", "intruder", _token(hub, "edge-x", "intruder", legit.keys["intruder"]))
    assert await asyncio.to_thread(intruder.connected.wait, 10)
    upstream_before = hub.call(lambda: hub.server.core.counters["telemetry_in"])
    intruder.client.publish("devices/edge-x/modules/intruder/messages/events/", b"{}", qos=2)
    assert await asyncio.to_thread(intruder.disconnected.wait, 10)
    assert "HUB_MQTT_QOS2_REFUSED" in hub.call(hub.server.core.refusal_codes)
    assert hub.call(lambda: hub.server.core.counters["telemetry_in"]) == upstream_before
    await legit.send()
    await legit.all_delivered()


async def test_topics_of_another_identity_are_refused(hub: HubThread, legit: Any,
                                                      paho_clients: Callable[..., PahoClient]) -> None:
    intruder = paho_clients(hub, "edge-x", "intruder", _token(hub, "edge-x", "intruder", legit.keys["intruder"]))
    assert await asyncio.to_thread(intruder.connected.wait, 10)
    # subscribing to the runner's inputs is refused in the SUBACK (connection stays)
    _, mid = intruder.client.subscribe("devices/edge-x/modules/runner/inputs/#", qos=1)
    await _wait_for(lambda: mid in intruder.subacks)
    assert intruder.subacks[mid] == (0x80,)
    await legit.send()
    await legit.all_delivered()                 # the runner still gets its messages ...
    assert intruder.messages == []              # ... and the intruder none of them
    # publishing as the sensor closes the intruder's connection and routes nothing
    intruder.client.publish("devices/edge-x/modules/sensor/messages/events/%24.on=out", b'{"mid": "forged"}', qos=1)
    assert await asyncio.to_thread(intruder.disconnected.wait, 10)
    codes = hub.call(hub.server.core.refusal_codes)
    assert codes.count("HUB_TOPIC_FORBIDDEN") == 2
    await legit.send()
    await legit.all_delivered()


async def test_malformed_and_oversized_packets_close_only_that_connection(
        hub: HubThread, legit: Any, stack_ca: Any) -> None:
    ca = str(stack_ca.ca_path)

    def connect_raw() -> RawTls:
        raw = RawTls(hub, ca)
        key = legit.keys["intruder"]
        raw.send(encode(Connect(client_id="edge-x/intruder", clean_session=True,
                                username=_username(hub, "edge-x", "intruder"),
                                password=_token(hub, "edge-x", "intruder", key).encode())))
        assert raw.read_packets() == [ConnAck(0)]
        return raw

    # garbage instead of CONNECT
    garbage = RawTls(hub, ca)
    garbage.send(b"\x10\x05\x00\x04MQ")
    garbage.send(b"\xff" * 16)
    assert await asyncio.to_thread(garbage.closed_by_peer)
    # a SUBSCRIBE with wrong fixed-header flags after a good CONNECT
    raw = await asyncio.to_thread(connect_raw)
    body = encode(Subscribe(1, (("$iothub/twin/res/#", 1),)))
    raw.send(bytes((0x80,)) + body[1:])
    assert await asyncio.to_thread(raw.closed_by_peer)
    # a PUBLISH declaring 10 MB: refused as soon as the length is read, before any body arrives
    raw = await asyncio.to_thread(connect_raw)
    raw.send(b"\x32" + bytes((0x80, 0x80, 0x80, 0x05)))
    assert await asyncio.to_thread(raw.closed_by_peer)
    # a remaining length of five bytes
    raw = await asyncio.to_thread(connect_raw)
    raw.send(b"\x30\xff\xff\xff\xff\x01")
    assert await asyncio.to_thread(raw.closed_by_peer)
    codes = hub.call(hub.server.core.refusal_codes)
    assert codes.count("HUB_MQTT_MALFORMED") == 3 and codes.count("HUB_MQTT_OVERSIZED") == 1
    await legit.send()
    await legit.all_delivered()


async def test_a_second_connection_of_an_identity_replaces_the_first(
        hub: HubThread, legit: Any, paho_clients: Callable[..., PahoClient], stack_ca: Any) -> None:
    first = paho_clients(hub, "edge-x", "intruder", _token(hub, "edge-x", "intruder", legit.keys["intruder"]))
    assert await asyncio.to_thread(first.connected.wait, 10)
    second = RawTls(hub, str(stack_ca.ca_path))
    second.send(encode(Connect(client_id="edge-x/intruder", clean_session=False,
                               username=_username(hub, "edge-x", "intruder"),
                               password=_token(hub, "edge-x", "intruder", legit.keys["intruder"]).encode())))
    assert second.read_packets() == [ConnAck(0, session_present=False)]
    assert await asyncio.to_thread(first.disconnected.wait, 10)
    assert "HUB_MQTT_SESSION_TAKEN_OVER" in hub.call(hub.server.core.refusal_codes)
    second.send(encode(Subscribe(7, (("$iothub/twin/res/#", 1),))))
    second.send(encode(Publish("$iothub/twin/GET/?$rid=r1", b" ", qos=0)))
    packets: list[Any] = []
    while len(packets) < 2:
        packets += second.read_packets()
    assert packets[0] == SubAck(7, (1,))
    assert packets[1].topic == "$iothub/twin/res/200/?$rid=r1"
    assert json.loads(packets[1].payload) == {"desired": {"$version": 1}, "reported": {"$version": 1}}
    second.close()
    await legit.send()
    await legit.all_delivered()


def test_connack_rejects_bad_protocol_level_and_client_ids(hub: HubThread, stack_ca: Any,
                                                           make_module: Callable[..., str]) -> None:
    key = make_module("dev-z", "m")
    raw = RawTls(hub, str(stack_ca.ca_path))
    raw.send(encode(Connect(client_id="dev-z/m", protocol_level=5, username=_username(hub, "dev-z", "m"),
                            password=_token(hub, "dev-z", "m", key).encode())))
    assert raw.read_packets() == [ConnAck(1)]
    raw = RawTls(hub, str(stack_ca.ca_path))
    raw.send(encode(Connect(client_id="dev-z/m/extra", username="x", password=b"y")))
    assert raw.read_packets() == [ConnAck(2)]
    raw = RawTls(hub, str(stack_ca.ca_path))
    raw.send(encode(Connect(client_id="dev-z/m", username=_username(hub, "dev-z", "other"),
                            password=_token(hub, "dev-z", "m", key).encode())))
    assert raw.read_packets() == [ConnAck(4)]
    codes = hub.call(hub.server.core.refusal_codes)
    assert {"HUB_MQTT_PROTOCOL_VERSION", "HUB_AUTH_BAD_CLIENT_ID", "HUB_AUTH_BAD_USERNAME"} <= set(codes)


async def test_connection_is_dropped_when_its_token_expires(hub: HubThread, legit: Any,
                                                           paho_clients: Callable[..., PahoClient]) -> None:
    short = paho_clients(hub, "edge-x", "intruder", _token(hub, "edge-x", "intruder", legit.keys["intruder"], 2))
    assert await asyncio.to_thread(short.connected.wait, 10)
    assert await asyncio.to_thread(short.disconnected.wait, 15)
    assert "HUB_AUTH_TOKEN_EXPIRED" in hub.call(hub.server.core.refusal_codes)
    await legit.send()
    await legit.all_delivered()


async def test_a_client_that_never_reads_is_dropped(hub: HubThread, legit: Any, stack_ca: Any,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from edb_local.hub.mqtt import connection

    monkeypatch.setattr(connection, "MAX_WRITE_BUFFER", 64 * 1024)
    raw = RawTls(hub, str(stack_ca.ca_path))
    raw.send(encode(Connect(client_id="edge-x/intruder", clean_session=True,
                            username=_username(hub, "edge-x", "intruder"),
                            password=_token(hub, "edge-x", "intruder", legit.keys["intruder"]).encode())))
    get = encode(Publish("$iothub/twin/GET/?$rid=1", b" ", qos=0))

    def flood() -> None:
        try:
            for _ in range(400):
                raw.send(get * 1000)   # ~35 MB of requests, never reading a response
        except OSError:
            return

    await asyncio.to_thread(flood)
    # the hub may still be working through the backlog the kernel buffered for it
    await _wait_for(lambda: "HUB_MQTT_SLOW_CONSUMER" in hub.call(hub.server.core.refusal_codes), 30)
    raw.close()
    await legit.send()
    await legit.all_delivered()


async def test_messages_over_256_kb_are_refused_and_close_only_that_connection(
        hub: HubThread, legit: Any, paho_clients: Callable[..., PahoClient]) -> None:
    limit = hub.config.max_message_bytes
    assert limit == 256 * 1024
    intruder = paho_clients(hub, "edge-x", "intruder", _token(hub, "edge-x", "intruder", legit.keys["intruder"]))
    assert await asyncio.to_thread(intruder.connected.wait, 10)
    topic = "devices/edge-x/modules/intruder/messages/events/"

    def upstream_from_intruder() -> int:
        rows = hub.server.core.store.upstream_since(0, 10_000)
        return sum(1 for row in rows if row.module_id == "intruder")

    # exactly at the limit: accepted and routed ($upstream)
    info = intruder.client.publish(topic, b"a" * limit, qos=1)
    await asyncio.to_thread(info.wait_for_publish, 10)
    assert info.is_published()
    assert await eventually(lambda: hub.call(upstream_from_intruder), 1) == 1
    # one byte more: refused, the connection closed, nothing ingested
    before = hub.call(lambda: hub.server.core.counters["telemetry_in"])
    intruder.client.publish(topic, b"a" * (limit + 1), qos=1)
    assert await asyncio.to_thread(intruder.disconnected.wait, 10)
    assert "HUB_MESSAGE_TOO_LARGE" in hub.call(hub.server.core.refusal_codes)
    assert hub.call(lambda: hub.server.core.counters["telemetry_in"]) == before
    assert hub.call(upstream_from_intruder) == 1
    await legit.send()
    await legit.all_delivered()
