"""Cloud-to-device messages end to end with the real SDKs: azure-iot-hub's `send_c2d_message`
(uamqp, AMQP on :5671, CBS with the iothubowner key) in, azure-iot-device's MQTT client out, with
properties; the per-device queue limit, time to live, unknown devices and oversized messages refused
with codes; queued messages survive until the device connects."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import certifi
import pytest
from azure.iot.device import IoTHubDeviceClient
from azure.iot.hub import IoTHubRegistryManager
from hub_helpers import new_key

from edb_local.hub import HubConfig, HubThread
from edb_local.stack_ca import StackCA

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def hub_config(stack_ca: StackCA, loopback_address: str, tmp_path: Path) -> HubConfig:
    """A 16 KiB C2D limit (IoT Hub's is 64 KiB): uamqp itself refuses to send more than 64 KiB, so
    only a lower limit shows the hub's own refusal."""
    from hub_helpers import HUB_NAME

    creds = stack_ca.issue_server("hub", ips=[loopback_address], out_dir=tmp_path / "certs")
    return HubConfig(state_dir=tmp_path / "hub", address=loopback_address, hub_name=HUB_NAME,
                     cert_path=creds.cert_path, key_path=creds.key_path, owner_key=new_key(),
                     c2d_max_message_bytes=16 * 1024)


@pytest.fixture(autouse=True)
def uamqp_trusts_stack_ca(stack_ca: StackCA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """azure-iot-hub's AMQP client (uamqp) verifies against certifi's bundle and has no CA option:
    give it certifi's roots plus the stack CA (on Azure the public roots suffice). Autouse: uamqp
    reads the bundle when the registry manager builds its AMQP client, so this goes first."""
    import uamqp.authentication.common as uamqp_common

    bundle = tmp_path / "certifi-plus-stack-ca.pem"
    bundle.write_text(Path(certifi.where()).read_text() + "\n" + stack_ca.ca_path.read_text())
    monkeypatch.setattr(uamqp_common.certifi, "where", lambda: str(bundle))


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.changed = threading.Condition()

    def __call__(self, message: Any) -> None:
        with self.changed:
            self.messages.append(message)
            self.changed.notify_all()

    def wait(self, count: int, timeout: float = 30.0) -> list[Any]:
        with self.changed:
            self.changed.wait_for(lambda: len(self.messages) >= count, timeout)
            return list(self.messages)


@pytest.fixture
def device(hub: HubThread, stack_ca: StackCA, registry: IoTHubRegistryManager) -> Iterator[Any]:
    key = new_key()
    registry.create_device_with_sas("c2d-dev", key, new_key(), "enabled")
    clients: list[IoTHubDeviceClient] = []

    def connect(inbox: Inbox) -> IoTHubDeviceClient:
        client = IoTHubDeviceClient.create_from_connection_string(
            hub.config.device_connection_string("c2d-dev", key), server_verification_cert=stack_ca.ca_pem)
        client.on_message_received = inbox
        client.connect()
        clients.append(client)
        return client

    yield connect
    for client in clients:
        client.shutdown()


def test_send_c2d_message_reaches_the_device_with_its_properties(
        hub: HubThread, registry: IoTHubRegistryManager, device: Any) -> None:
    inbox = Inbox()
    device(inbox)
    registry.send_c2d_message("c2d-dev", '{"cmd": "reboot"}', properties={
        "contentType": "application/json", "contentEncoding": "utf-8", "correlationId": "corr-1",
        "messageId": "msg-1", "reason": "maintenance"})
    [message] = inbox.wait(1)
    assert message.data == b'{"cmd": "reboot"}'
    assert message.message_id == "msg-1" and message.correlation_id == "corr-1"
    assert message.content_type == "application/json" and message.content_encoding == "utf-8"
    assert message.custom_properties == {"reason": "maintenance"}
    assert hub.server.core.counters.get("c2d_queued") == 1


def test_queue_limit_ttl_and_refusals(hub: HubThread, registry: IoTHubRegistryManager, device: Any) -> None:
    limit = hub.config.c2d_queue_limit
    soon = int((time.time() + 1.0) * 1000)          # expires before the device connects
    registry.send_c2d_message("c2d-dev", "short-lived", properties={"expiryTimeUtc": soon})
    for n in range(limit - 1):
        registry.send_c2d_message("c2d-dev", f"m{n}")
    with pytest.raises(Exception, match="C2D message send failure"):      # the 51st: queue full
        registry.send_c2d_message("c2d-dev", "one too many")
    with pytest.raises(Exception, match="C2D message send failure"):
        registry.send_c2d_message("nobody", "to no one")
    past = int((time.time() - 60) * 1000)
    with pytest.raises(Exception, match="C2D message send failure"):
        registry.send_c2d_message("c2d-dev", "already expired", properties={"expiryTimeUtc": past})
    with pytest.raises(Exception, match="C2D message send failure"):
        registry.send_c2d_message("c2d-dev", "x" * (hub.config.c2d_max_message_bytes + 1))
    codes = hub.server.core.refusal_codes()
    assert codes.count("HUB_C2D_QUEUE_FULL") >= 1 and "HUB_C2D_UNKNOWN_DEVICE" in codes
    assert codes.count("HUB_C2D_BAD_MESSAGE") >= 2, list(hub.server.core.refusals)

    deadline = dt.datetime.fromtimestamp(soon / 1000, dt.UTC)
    while dt.datetime.now(dt.UTC) <= deadline:      # let the short-lived one expire while queued
        time.sleep(0.1)
    inbox = Inbox()
    device(inbox)
    received = inbox.wait(limit - 1)
    assert [m.data.decode() for m in received] == [f"m{n}" for n in range(limit - 1)]
    # the queue drained (PUBACKed): there is room again
    registry.send_c2d_message("c2d-dev", "after")
    assert [m.data.decode() for m in inbox.wait(limit)][-1] == "after"


def test_service_tokens_of_other_hubs_or_keys_cannot_send(hub: HubThread) -> None:
    wrong = hub.config.service_connection_string.replace(hub.config.owner_key, new_key())
    registry = IoTHubRegistryManager.from_connection_string(wrong)
    with pytest.raises(Exception):  # noqa: B017 (uamqp raises its own TokenAuthFailure types)
        registry.send_c2d_message("c2d-dev", "forged")
    refusals = list(hub.server.core.refusals)
    assert any(r.code == "HUB_AMQP_CBS_REFUSED" and r.detail.startswith("HUB_AUTH_BAD_SIGNATURE") for r in refusals)
