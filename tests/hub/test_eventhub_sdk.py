"""The Event Hub-compatible endpoint with the real azure-eventhub consumers (sync and aio) and the
real device SDK as the sender: properties and annotations as IoT Hub sets them, management reads,
start positions, consumer groups, checkpoint restarts, and bad tokens refused."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from azure.core.credentials import AzureSasCredential
from azure.eventhub import EventHubConsumerClient
from azure.eventhub._pyamqp.utils import generate_sas_token
from azure.eventhub.aio import EventHubConsumerClient as AsyncConsumerClient
from azure.eventhub.exceptions import EventHubError
from azure.iot.device import IoTHubDeviceClient, Message
from azure.iot.hub import IoTHubRegistryManager
from eventhub_helpers import consumer, read_numbered, receive
from hub_helpers import new_key

from edb_local.hub import HubConfig, HubThread, twin_events
from edb_local.hub.amqp.auth import service_policy_key
from edb_local.hub.amqp.eventlog import partition_of
from edb_local.hub.topics import Identity, PropertyBag
from edb_local.stack_ca import StackCA

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def hub_config(stack_ca: StackCA, loopback_address: str, tmp_path: Path) -> HubConfig:
    from hub_helpers import HUB_NAME

    creds = stack_ca.issue_server("hub", ips=[loopback_address], out_dir=tmp_path / "certs")
    return HubConfig(state_dir=tmp_path / "hub", address=loopback_address, hub_name=HUB_NAME,
                     cert_path=creds.cert_path, key_path=creds.key_path, owner_key=new_key(),
                     consumer_groups=("$Default", "ops"))


def ingest(hub: HubThread, device: str, bodies: list[dict[str, Any]], module: str | None = None) -> None:
    def run() -> None:
        for body in bodies:
            bag = PropertyBag({"contentType": "application/json", "contentEncoding": "utf-8",
                               "messageId": str(uuid.uuid4())}, {"kind": "test"})
            hub.server.core.ingest(Identity(device, module), bag, json.dumps(body).encode())

    hub.call(run)


def test_device_telemetry_reaches_the_sync_consumer_with_iot_hub_properties(
        hub: HubThread, stack_ca: StackCA, registry: IoTHubRegistryManager) -> None:
    key = new_key()
    registry.create_device_with_sas("eh-dev", key, new_key(), "enabled")
    device = IoTHubDeviceClient.create_from_connection_string(hub.config.device_connection_string("eh-dev", key),
                                                              server_verification_cert=stack_ca.ca_pem)
    device.connect()
    try:
        for n in range(3):
            message = Message(json.dumps({"n": n}), message_id=f"mid-{n}", content_encoding="utf-8",
                              content_type="application/json")
            message.correlation_id = f"cid-{n}"
            message.custom_properties["level"] = "info"
            device.send_message(message)
    finally:
        device.shutdown()

    client = consumer(hub, str(stack_ca.ca_path))
    props = client.get_eventhub_properties()
    assert props["eventhub_name"] == hub.config.eventhub_name and props["partition_ids"] == ["0", "1", "2", "3"]
    partition = str(partition_of("eh-dev", 4))
    events = receive(client, 3)
    assert [json.loads(e.body_as_str()) for e in events] == [{"n": 0}, {"n": 1}, {"n": 2}]
    first = events[0]
    system = first.system_properties
    assert system[b"iothub-connection-device-id"] == b"eh-dev"
    assert system[b"iothub-message-source"] == b"Telemetry"
    assert system[b"message-id"] == b"mid-0" and system[b"correlation-id"] == b"cid-0"
    assert system[b"content-type"] == b"application/json" and system[b"content-encoding"] == b"utf-8"
    assert isinstance(system[b"iothub-enqueuedtime"], int) and b"iothub-connection-module-id" not in system
    assert first.properties == {b"level": b"info"}
    assert first.offset == str(first.sequence_number) and first.partition_key is None
    assert abs((dt.datetime.now(dt.UTC) - first.enqueued_time).total_seconds()) < 600
    assert len({e.sequence_number for e in events}) == 3

    client = consumer(hub, str(stack_ca.ca_path))
    partition_props = client.get_partition_properties(partition)
    client.close()
    assert partition_props["last_enqueued_sequence_number"] == events[-1].sequence_number
    assert partition_props["last_enqueued_offset"] == events[-1].offset and not partition_props["is_empty"]
    assert partition_props["beginning_sequence_number"] == events[0].sequence_number

    # start positions: after a sequence number, at an offset (inclusive), after an enqueued time
    after = receive(consumer(hub, str(stack_ca.ca_path)), 2, start=events[0].sequence_number,
                    partition_id=partition)
    assert [e.sequence_number for e in after] == [e.sequence_number for e in events[1:]]
    at = receive(consumer(hub, str(stack_ca.ca_path)), 2, start=events[1].offset, inclusive=True,
                 partition_id=partition)
    assert [e.sequence_number for e in at] == [e.sequence_number for e in events[1:]]
    time.sleep(0.05)
    boundary = dt.datetime.now(dt.UTC)
    time.sleep(0.05)
    ingest(hub, "eh-dev", [{"late": True}])
    late = receive(consumer(hub, str(stack_ca.ca_path)), 1, start=boundary, partition_id=partition)
    assert [json.loads(e.body_as_str()) for e in late] == [{"late": True}]


def test_module_twin_change_notifications_reach_the_endpoint(
        hub: HubThread, stack_ca: StackCA, registry: IoTHubRegistryManager, make_module: Any) -> None:
    from test_routing_sdk import deploy

    key = make_module("edge-eh", "sensor")
    deploy(hub, "edge-eh", {"twin": "FROM /twinChangeNotifications INTO $upstream"})
    identity = Identity("edge-eh", "sensor")
    twin = hub.call(lambda: hub.server.core.state.set_reported(identity, {"fw": "1.2"}))
    hub.call(lambda: hub.server.core._twin_change_notification(  # what a reported patch over MQTT triggers
        identity, twin_events.change_body(twin, reported={"fw": "1.2"}), twin_events.UPDATE, reported=True))
    assert key
    events = receive(consumer(hub, str(stack_ca.ca_path)), 1, partition_id=str(partition_of("edge-eh", 4)))
    assert len(events) == 1
    system = events[0].system_properties
    assert system[b"iothub-message-source"] == b"twinChangeEvents"
    assert system[b"iothub-connection-module-id"] == b"sensor"
    assert events[0].properties[b"opType"] == b"updateTwin"
    assert json.loads(events[0].body_as_str())["properties"]["reported"]["fw"] == "1.2"


async def test_aio_consumer_resumes_from_a_checkpoint_without_loss_or_duplicates(
        hub: HubThread, stack_ca: StackCA) -> None:
    partition = str(partition_of("ckpt-dev", 4))
    ingest(hub, "ckpt-dev", [{"n": n} for n in range(10)])
    seen: list[int] = []
    checkpoint: dict[str, Any] = {}

    async def read_until(client: AsyncConsumerClient, count: int, start: Any) -> None:
        await read_numbered(client, partition, count, start, seen, checkpoint)

    def make() -> AsyncConsumerClient:
        return AsyncConsumerClient.from_connection_string(hub.config.eventhub_connection_string, "ops",
                                                          connection_verify=str(stack_ca.ca_path))

    await read_until(make(), 5, "-1")
    assert seen == [0, 1, 2, 3, 4]
    ingest(hub, "ckpt-dev", [{"n": n} for n in range(10, 15)])     # arrives while no consumer is connected
    await read_until(make(), 15, checkpoint["offset"])                  # exclusive: the next one after it
    assert seen == list(range(10)) + list(range(10, 15))


def _sas(hub: HubThread, audience: str, policy: str, key: str, expiry: int) -> str:
    return generate_sas_token(audience, policy, key, expiry)


@pytest.mark.parametrize("case", ["wrong-key", "other-policy", "expired", "other-hub", "device-key",
                                  "unknown-group"])
def test_bad_credentials_are_refused(hub: HubThread, stack_ca: StackCA, case: str) -> None:
    config = hub.config
    namespace = f"sb://{config.address}/{config.eventhub_name}"
    good = service_policy_key(config.owner_key)
    future = int(time.time()) + 600
    group = "$Default"
    if case == "wrong-key":
        cs = config.eventhub_connection_string.replace(good, new_key())
        client = EventHubConsumerClient.from_connection_string(cs, group, connection_verify=str(stack_ca.ca_path),
                                                               retry_total=0)
    elif case == "unknown-group":
        client = consumer(hub, str(stack_ca.ca_path), group="nobody", retry_total=0)
    else:
        token = {
            "other-policy": lambda: _sas(hub, namespace, "registryRead", good, future),
            "expired": lambda: _sas(hub, namespace, "service", good, int(time.time()) - 5),
            "other-hub": lambda: _sas(hub, f"sb://{config.address}/another-hub", "service", good, future),
            "device-key": lambda: _sas(hub, namespace, "", good, future),
        }[case]()
        client = EventHubConsumerClient(config.address, config.eventhub_name, group, AzureSasCredential(token),
                                        connection_verify=str(stack_ca.ca_path), retry_total=0)
    errors: list[BaseException] = []
    if case == "unknown-group":
        events = receive(client, 1, errors=errors, timeout=20)
        assert events == [] and errors
        assert "HUB_AMQP_NOT_FOUND" in hub.server.core.refusal_codes()
        return
    with pytest.raises(EventHubError):
        client.get_eventhub_properties()
    client.close()
    cause = {"wrong-key": "HUB_AUTH_BAD_SIGNATURE", "other-policy": "HUB_AUTH_UNKNOWN_POLICY",
             "expired": "HUB_AUTH_TOKEN_EXPIRED", "other-hub": "HUB_AUTH_WRONG_RESOURCE",
             "device-key": "HUB_AUTH_BAD_TOKEN"}[case]
    refusals = list(hub.server.core.refusals)
    assert any(r.code == "HUB_AMQP_CBS_REFUSED" and r.detail.startswith(cause) for r in refusals), refusals
    assert not any(r.code == "HUB_INTERNAL" for r in refusals)
