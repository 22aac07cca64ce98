"""AMQP over WebSockets on 443 (``/$servicebus/websocket``, subprotocol ``AMQPWSB10``) with the real
clients: azure-eventhub's consumers (sync: websocket-client; aio: aiohttp) with
``TransportType.AmqpOverWebsocket`` reading device telemetry sent by the device SDK, start positions
and checkpoint resumes as over 5671; azure-iot-hub's C2D send (uamqp-c's WebSocket IO); a refused
SAS token; bad upgrades; and the state machine's limits and write bound over the WebSocket.

The hub of this module listens for AMQP/TLS on a random port, never 5671: the WebSocket clients
(which only know 443) cannot have reached the TLS listener by accident."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import struct
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import certifi
import pytest
import websocket
from azure.core.credentials import AzureSasCredential
from azure.eventhub import EventHubConsumerClient, TransportType
from azure.eventhub._pyamqp.utils import generate_sas_token
from azure.eventhub.aio import EventHubConsumerClient as AsyncConsumerClient
from azure.eventhub.exceptions import EventHubError
from azure.iot.device import IoTHubDeviceClient, Message
from azure.iot.hub import IoTHubRegistryManager
from eventhub_helpers import RawAmqpWs, consumer, read_numbered, receive, wait_for
from hub_helpers import new_key

from edb_local.hub import HubConfig, HubThread
from edb_local.hub.amqp import codec
from edb_local.hub.amqp.auth import service_policy_key
from edb_local.hub.amqp.connection import MAX_FRAME, WRITE_HIGH
from edb_local.hub.amqp.endpoint import MAX_EVENT_MESSAGE
from edb_local.hub.amqp.eventlog import partition_of
from edb_local.hub.topics import Identity, PropertyBag
from edb_local.net import free_port
from edb_local.stack_ca import StackCA

pytestmark = pytest.mark.timeout(120)
WS = TransportType.AmqpOverWebsocket


@pytest.fixture
def hub_config(stack_ca: StackCA, loopback_address: str, tmp_path: Path) -> HubConfig:
    from hub_helpers import HUB_NAME

    creds = stack_ca.issue_server("hub", ips=[loopback_address], out_dir=tmp_path / "certs")
    return HubConfig(state_dir=tmp_path / "hub", address=loopback_address, hub_name=HUB_NAME,
                     cert_path=creds.cert_path, key_path=creds.key_path, owner_key=new_key(),
                     consumer_groups=("$Default", "ops"), amqp_port=free_port(loopback_address))


def ingest(hub: HubThread, device: str, bodies: list[dict[str, Any]]) -> None:
    def run() -> None:
        for body in bodies:
            hub.server.core.ingest(Identity(device), PropertyBag({"messageId": str(uuid.uuid4())}, {}),
                                   json.dumps(body).encode())

    hub.call(run)


def test_sync_consumer_over_websocket_reads_device_telemetry_with_the_positions_of_5671(
        hub: HubThread, stack_ca: StackCA, registry: IoTHubRegistryManager) -> None:
    ca = str(stack_ca.ca_path)
    key = new_key()
    registry.create_device_with_sas("ws-eh-dev", key, new_key(), "enabled")
    device = IoTHubDeviceClient.create_from_connection_string(
        hub.config.device_connection_string("ws-eh-dev", key), server_verification_cert=stack_ca.ca_pem)
    device.connect()
    try:
        for n in range(4):
            message = Message(json.dumps({"n": n}), message_id=f"mid-{n}", content_encoding="utf-8",
                              content_type="application/json")
            message.custom_properties["level"] = "info"
            device.send_message(message)
    finally:
        device.shutdown()

    client = consumer(hub, ca, transport_type=WS)
    props = client.get_eventhub_properties()
    assert props["partition_ids"] == ["0", "1", "2", "3"]
    partition = str(partition_of("ws-eh-dev", 4))
    events = receive(client, 4)
    assert [json.loads(e.body_as_str()) for e in events] == [{"n": n} for n in range(4)]
    system = events[0].system_properties
    assert system[b"iothub-connection-device-id"] == b"ws-eh-dev" and system[b"message-id"] == b"mid-0"
    assert system[b"iothub-message-source"] == b"Telemetry" and events[0].properties == {b"level": b"info"}

    # the same start positions give the same events over WebSocket and over TLS (on the moved port:
    # the SDK takes a TLS port only from a custom endpoint address, not from the connection string)
    tls = {"transport_type": TransportType.Amqp,
           "custom_endpoint_address": f"sb://{hub.config.address}:{hub.config.amqp_port}"}

    def both(**kwargs: Any) -> tuple[list[int], list[int]]:
        over_ws = receive(consumer(hub, ca, transport_type=WS), 3, partition_id=partition, **kwargs)
        over_tls = receive(consumer(hub, ca, **tls), 3, partition_id=partition, **kwargs)
        return [e.sequence_number for e in over_ws], [e.sequence_number for e in over_tls]

    after_first = [e.sequence_number for e in events[1:]]
    assert both(start=events[0].sequence_number) == (after_first, after_first)
    assert both(start=events[1].offset, inclusive=True) == (after_first, after_first)
    ws_client = consumer(hub, ca, transport_type=WS)
    partition_props = ws_client.get_partition_properties(partition)
    ws_client.close()
    assert partition_props["last_enqueued_sequence_number"] == events[-1].sequence_number


async def test_aio_consumer_over_websocket_resumes_from_a_checkpoint(hub: HubThread, stack_ca: StackCA) -> None:
    partition = str(partition_of("ws-ckpt", 4))
    ingest(hub, "ws-ckpt", [{"n": n} for n in range(10)])
    seen: list[int] = []
    checkpoint: dict[str, Any] = {}

    async def read_until(count: int, start: Any) -> None:
        client = AsyncConsumerClient.from_connection_string(hub.config.eventhub_connection_string, "ops",
                                                            connection_verify=str(stack_ca.ca_path),
                                                            transport_type=WS)
        await read_numbered(client, partition, count, start, seen, checkpoint)

    await read_until(5, "-1")
    assert seen == [0, 1, 2, 3, 4]
    ingest(hub, "ws-ckpt", [{"n": n} for n in range(10, 15)])       # while no consumer is connected
    await read_until(15, checkpoint["offset"])
    assert seen == list(range(15))                                   # no loss, no duplicate


def test_a_bad_sas_token_over_websocket_is_refused_by_cbs(hub: HubThread, stack_ca: StackCA) -> None:
    config = hub.config
    good = service_policy_key(config.owner_key)
    cs = config.eventhub_connection_string.replace(good, new_key())
    client = EventHubConsumerClient.from_connection_string(cs, "$Default", connection_verify=str(stack_ca.ca_path),
                                                           retry_total=0, transport_type=WS)
    with pytest.raises(EventHubError):
        client.get_eventhub_properties()
    client.close()
    expired = generate_sas_token(f"sb://{config.address}/{config.eventhub_name}", "service", good,
                                 int(time.time()) - 5)
    client = EventHubConsumerClient(config.address, config.eventhub_name, "$Default", AzureSasCredential(expired),
                                    connection_verify=str(stack_ca.ca_path), retry_total=0, transport_type=WS)
    with pytest.raises(EventHubError):
        client.get_eventhub_properties()
    client.close()
    refusals = [r for r in hub.call(lambda: list(hub.server.core.refusals)) if r.code == "HUB_AMQP_CBS_REFUSED"]
    assert [r.detail.split(":")[0] for r in refusals] == ["HUB_AUTH_BAD_SIGNATURE", "HUB_AUTH_TOKEN_EXPIRED"]
    assert all(r.who.startswith("amqp-ws:") for r in refusals), refusals


def _ssl(stack_ca: StackCA) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(stack_ca.ca_path))


_UPGRADE = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


@pytest.mark.parametrize("path,headers,detail", [
    ("/$servicebus/websocket", {**_UPGRADE, "Sec-WebSocket-Protocol": "mqtt"}, "subprotocol 'mqtt'"),
    ("/$servicebus/websocket", _UPGRADE, "subprotocol ''"),
    ("/$servicebus/websocket", {}, "no WebSocket upgrade headers"),
    ("/$servicebus/websockets", {**_UPGRADE, "Sec-WebSocket-Protocol": "AMQPWSB10"}, "no WebSocket endpoint at"),
    ("/", {**_UPGRADE, "Sec-WebSocket-Protocol": "AMQPWSB10"}, "no WebSocket endpoint at '/'"),
    ("/$iothub/websocket", {**_UPGRADE, "Sec-WebSocket-Protocol": "AMQPWSB10"}, "subprotocol 'AMQPWSB10'"),
])
async def test_bad_upgrades_are_refused(hub: HubThread, stack_ca: StackCA, path: str, headers: dict[str, str],
                                        detail: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(
            f"https://{hub.config.address}{path}", headers=headers, ssl=_ssl(stack_ca)) as response:
        body = await response.json()
    assert response.status == 400 and body["error"]["code"] == "HUB_WS_UPGRADE_REFUSED"
    assert detail in body["error"]["message"]
    assert "HUB_WS_UPGRADE_REFUSED" in hub.call(hub.server.core.refusal_codes)


async def test_the_sync_client_is_refused_on_a_wrong_path(hub: HubThread, stack_ca: StackCA) -> None:
    """The real client's view of a refused upgrade: a custom endpoint whose path is not ours."""
    client = consumer(hub, str(stack_ca.ca_path), transport_type=WS, retry_total=0,
                      custom_endpoint_address=f"sb://{hub.config.address}:443/elsewhere")
    with pytest.raises(EventHubError):
        await asyncio.to_thread(client.get_eventhub_properties)
    client.close()
    refusals = [r for r in hub.call(lambda: list(hub.server.core.refusals)) if r.code == "HUB_WS_UPGRADE_REFUSED"]
    assert refusals and "/elsewhere/$servicebus/websocket" in refusals[0].detail


def test_the_amqp_state_machine_refuses_over_websocket_as_over_tls(hub: HubThread, stack_ca: StackCA) -> None:
    ca = str(stack_ca.ca_path)
    # no SASL layer: answered with the SASL header, closed
    raw = RawAmqpWs(hub, ca)
    raw.send(codec.AMQP_HEADER)
    assert raw.read_exact(8) == codec.SASL_HEADER and raw.closed()
    # a frame declaring more than the max-frame-size: framing error
    raw = RawAmqpWs(hub, ca)
    raw.open_session()
    raw.send(struct.pack(">IBcH", 64 * 1024 * 1024, 2, b"\x00", 0))
    assert raw.until(codec.CLOSE).fields[0][0] == b"amqp:connection:framing-error" and raw.closed()
    # one WebSocket message above a frame's bound: refused before it is buffered
    raw = RawAmqpWs(hub, ca)
    raw.send(codec.SASL_HEADER)
    assert raw.read_exact(8) == codec.SASL_HEADER
    with contextlib.suppress(websocket.WebSocketConnectionClosedException, OSError):
        raw.send(b"\x00" * (MAX_FRAME + 9))   # the hub may close while the message is still being sent
    assert raw.closed()
    # a text message: AMQP is binary
    raw = RawAmqpWs(hub, ca)
    raw.sock.send("AMQP please")
    assert raw.closed()
    # links without a token: unauthorized
    raw = RawAmqpWs(hub, ca)
    raw.open_session()
    raw.attach(0, f"amqps://{hub.config.address}/{hub.config.eventhub_name}/ConsumerGroups/$Default/Partitions/0",
               receiver=True)
    raw.until(codec.ATTACH)
    assert raw.until(codec.DETACH).fields[2][0] == b"amqp:unauthorized-access"
    raw.close()
    codes = hub.call(hub.server.core.refusal_codes)
    for code in ("HUB_AMQP_SASL_REFUSED", "HUB_AMQP_FRAME_TOO_LARGE", "HUB_AMQP_MALFORMED", "HUB_AMQP_UNAUTHORIZED"):
        assert code in codes, codes
    assert codes.count("HUB_AMQP_FRAME_TOO_LARGE") == 2
    refusals = hub.call(lambda: list(hub.server.core.refusals))
    assert all(r.who.startswith("amqp-ws:") for r in refusals if r.code.startswith("HUB_AMQP_")), refusals
    assert wait_for(lambda: not hub.call(lambda: hub.server.amqp.connections if hub.server.amqp else ()))


def test_a_websocket_consumer_that_never_reads_costs_a_bounded_buffer(hub: HubThread, stack_ca: StackCA) -> None:
    config = hub.config
    stalled = RawAmqpWs(hub, str(stack_ca.ca_path))
    stalled.open_session()
    audience = f"sb://{config.address}/{config.eventhub_name}"
    token = generate_sas_token(audience, "service", service_policy_key(config.owner_key), int(time.time()) + 600)
    assert stalled.put_token(token, audience) == 200
    partition = partition_of("ws-flood", config.eventhub_partitions)
    stalled.attach(2, f"amqps://{config.address}/{config.eventhub_name}/ConsumerGroups/$Default/Partitions/"
                      f"{partition}", receiver=True)
    stalled.until(codec.ATTACH)
    stalled.flow(2, 100_000)                       # all the credit it wants, then it never reads again
    total = 1500
    for _ in range(3):
        ingest(hub, "ws-flood", [{"n": n, "pad": "x" * 16 * 1024} for n in range(total // 3)])   # 24 MB

    def buffers() -> list[tuple[bool, int, str]]:
        endpoint = hub.server.amqp
        assert endpoint is not None
        return [(c.paused, c.transport.get_write_buffer_size() if c.transport else 0,
                 type(c.transport).__name__) for c in endpoint.connections]

    paused = wait_for(lambda: [b for b in hub.call(buffers) if b[0]])
    assert paused and paused[0][2] == "WebSocketTransport", paused
    events = receive(consumer(hub, str(stack_ca.ca_path), transport_type=WS), total, timeout=90,
                     partition_id=str(partition))
    assert [json.loads(e.body_as_str())["n"] for e in events] == [n for _ in range(3) for n in range(total // 3)]
    assert all(size <= WRITE_HIGH + 2 * MAX_EVENT_MESSAGE for _, size, _ in hub.call(buffers))
    stalled.close()


# -- azure-iot-hub's C2D send (uamqp-c) over WebSockets ---------------------------------------

@pytest.fixture
def uamqp_trusts_stack_ca(stack_ca: StackCA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """uamqp verifies against certifi's bundle and has no CA option (see test_c2d_sdk.py)."""
    import uamqp.authentication.common as uamqp_common

    bundle = tmp_path / "certifi-plus-stack-ca.pem"
    bundle.write_text(Path(certifi.where()).read_text() + "\n" + stack_ca.ca_path.read_text())
    monkeypatch.setattr(uamqp_common.certifi, "where", lambda: str(bundle))


@pytest.fixture
def ws_registry(hub: HubThread, uamqp_trusts_stack_ca: None) -> Iterator[IoTHubRegistryManager]:
    import uamqp

    registry = IoTHubRegistryManager.from_connection_string(hub.config.service_connection_string,
                                                            transport_type=uamqp.TransportType.AmqpOverWebsocket)
    yield registry
    registry.amqp_svc_client.disconnect_sync()


def test_c2d_send_over_websocket_reaches_the_device(hub: HubThread, stack_ca: StackCA,
                                                    ws_registry: IoTHubRegistryManager) -> None:
    key = new_key()
    ws_registry.create_device_with_sas("ws-c2d", key, new_key(), "enabled")
    ws_registry.send_c2d_message("ws-c2d", '{"cmd": "reboot"}', properties={"messageId": "m-ws", "reason": "ws"})
    with pytest.raises(Exception, match="C2D message send failure"):
        ws_registry.send_c2d_message("nobody", "to no one")
    assert "HUB_C2D_UNKNOWN_DEVICE" in hub.call(hub.server.core.refusal_codes)
    device = IoTHubDeviceClient.create_from_connection_string(
        hub.config.device_connection_string("ws-c2d", key), server_verification_cert=stack_ca.ca_pem)
    device.connect()
    try:
        message = device.receive_message(timeout=20)
    finally:
        device.shutdown()
    assert message is not None and message.data == b'{"cmd": "reboot"}'
    assert message.message_id == "m-ws" and message.custom_properties == {"reason": "ws"}
    who = [r.who for r in hub.call(lambda: list(hub.server.core.refusals)) if r.code == "HUB_C2D_UNKNOWN_DEVICE"]
    assert who and who[0].startswith("amqp-ws:")


def test_edb_monitor_reads_over_websocket_where_5671_is_not_served(hub: HubThread, stack_ca: StackCA,
                                                                   tmp_path: Path) -> None:
    """This hub serves AMQP over TLS on a moved port. With the port in the connection string
    `edb monitor` reaches it (the SDK ignores that port: the monitor passes it as a custom endpoint);
    without it, 5671 answers nothing and only --websockets (443) reads the events."""
    from click.testing import CliRunner

    from edb.cli.main import root
    from edb_local.hub.errors import UNREACHABLE

    ingest(hub, "ws-mon", [{"n": n} for n in range(3)])
    expected = [{"n": n} for n in range(3)]
    common = ["--ca-cert", str(stack_ca.ca_path), "--json", "--state-dir", str(tmp_path)]

    def payloads(output: str) -> list[Any]:
        return [json.loads(line)["event"]["payload"] for line in output.splitlines()]

    with_port = CliRunner().invoke(root, ["monitor", "-e", hub.config.eventhub_connection_string, *common])
    assert with_port.exit_code == 0, with_port.output
    assert payloads(with_port.output) == expected
    no_port = hub.config.eventhub_connection_string.replace(f":{hub.config.amqp_port}/", "/")
    assert no_port != hub.config.eventhub_connection_string
    over_tls = CliRunner().invoke(root, ["monitor", "-e", no_port, *common])
    assert over_tls.exit_code != 0 and getattr(over_tls.exception, "code", None) == UNREACHABLE
    over_ws = CliRunner().invoke(root, ["monitor", "-e", no_port, *common, "--websockets"])
    assert over_ws.exit_code == 0, over_ws.output
    assert payloads(over_ws.output) == expected
