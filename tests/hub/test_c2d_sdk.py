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


# -- purge and feedback (azure-iot-hub's protocol layer over HTTPS) ----------------------------

def _feedback(registry: IoTHubRegistryManager, *, timeout: float = 15.0) -> Any:
    """`receive_feedback_notification` until a feedback message arrives (a PUBACK completes a
    message shortly after the device got it); the raw response (status, headers, body)."""
    deadline = time.monotonic() + timeout
    while True:
        raw = registry.protocol.cloud_to_device_messages.receive_feedback_notification(raw=True)
        if raw.response.status_code == 200 or time.monotonic() > deadline:
            return raw.response
        time.sleep(0.2)


def _lock_token(response: Any) -> str:
    etag = response.headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"')
    return str(etag.strip('"'))


def test_purge_empties_the_queue(hub: HubThread, registry: IoTHubRegistryManager, device: Any) -> None:
    from msrest.exceptions import HttpOperationError

    c2d_api = registry.protocol.cloud_to_device_messages
    for n in range(3):
        registry.send_c2d_message("c2d-dev", f"stale {n}")
    result = c2d_api.purge_cloud_to_device_message_queue("c2d-dev")
    assert (result.device_id, result.total_messages_purged) == ("c2d-dev", 3)
    assert c2d_api.purge_cloud_to_device_message_queue("c2d-dev").total_messages_purged == 0
    inbox = Inbox()
    device(inbox)
    registry.send_c2d_message("c2d-dev", "fresh")        # the device is subscribed and receiving...
    assert [m.data for m in inbox.wait(1)] == [b"fresh"]
    time.sleep(0.5)
    assert [m.data for m in inbox.messages] == [b"fresh"]  # ...and got none of the purged ones
    with pytest.raises(HttpOperationError) as unknown:
        c2d_api.purge_cloud_to_device_message_queue("nobody")
    assert unknown.value.response.status_code == 404
    assert unknown.value.response.json()["error"]["code"] == "HUB_NOT_FOUND"


def test_ack_full_and_negative_feedback_after_the_device_receives(
        hub: HubThread, registry: IoTHubRegistryManager, device: Any) -> None:
    inbox = Inbox()
    device(inbox)
    registry.send_c2d_message("c2d-dev", "a", properties={"messageId": "m-full", "iothub-ack": "full"})
    registry.send_c2d_message("c2d-dev", "b", properties={"messageId": "m-negative", "iothub-ack": "negative"})
    registry.send_c2d_message("c2d-dev", "c", properties={"messageId": "m-positive", "iothub-ack": "positive"})
    registry.send_c2d_message("c2d-dev", "d", properties={"messageId": "m-none"})
    assert len(inbox.wait(4)) == 4
    deadline = time.monotonic() + 10
    while hub.call(lambda: hub.server.core.counters.get("c2d_success", 0)) < 4 and time.monotonic() < deadline:
        time.sleep(0.1)      # all four PUBACKed: their feedback is recorded
    response = _feedback(registry)
    assert response.status_code == 200, response.status_code
    assert response.headers["Content-Type"].startswith("application/vnd.microsoft.iothub.feedback.json")
    records = response.json()
    generation_id = registry.get_device("c2d-dev").generation_id
    assert sorted(r["originalMessageId"] for r in records) == ["m-full", "m-positive"]   # negative: none
    full = next(r for r in records if r["originalMessageId"] == "m-full")
    assert full["statusCode"] == "Success" and full["description"] == "Success"
    assert full["deviceId"] == "c2d-dev" and full["deviceGenerationId"] == generation_id
    assert full["enqueuedTimeUtc"].endswith("Z")
    assert response.headers["iothub-deliverycount"] == "0"
    c2d_api = registry.protocol.cloud_to_device_messages
    c2d_api.complete_feedback_notification(_lock_token(response))
    empty = c2d_api.receive_feedback_notification(raw=True).response
    assert empty.status_code == 204 and not empty.content


def test_expired_message_gives_expired_feedback(hub: HubThread, registry: IoTHubRegistryManager) -> None:
    registry.create_device_with_sas("offline-dev", None, None, "enabled")
    soon = int((time.time() + 1.0) * 1000)
    registry.send_c2d_message("offline-dev", "never read", properties={
        "messageId": "m-expiring", "iothub-ack": "negative", "expiryTimeUtc": soon})
    time.sleep(1.5)
    response = _feedback(registry)
    assert response.status_code == 200
    [record] = response.json()
    assert (record["originalMessageId"], record["statusCode"], record["deviceId"]) == (
        "m-expiring", "Expired", "offline-dev")
    expired_at = dt.datetime.fromisoformat(record["enqueuedTimeUtc"].replace("Z", "+00:00"))
    assert abs(expired_at.timestamp() - soon / 1000) < 0.01        # when it expired, not when noticed


def test_feedback_abandon_redelivers_and_complete_removes(
        hub: HubThread, registry: IoTHubRegistryManager, device: Any) -> None:
    from msrest.exceptions import HttpOperationError

    c2d_api = registry.protocol.cloud_to_device_messages
    registry.send_c2d_message("c2d-dev", "x", properties={"messageId": "m-1", "iothub-ack": "full"})
    assert c2d_api.purge_cloud_to_device_message_queue("c2d-dev").total_messages_purged == 1
    first = _feedback(registry)
    assert [r["statusCode"] for r in first.json()] == ["Purged"]
    token = _lock_token(first)
    assert c2d_api.receive_feedback_notification(raw=True).response.status_code == 204   # locked
    c2d_api.abandon_feedback_notification(token)
    second = _feedback(registry)
    assert second.json() == first.json() and second.headers["iothub-messageid"] == first.headers["iothub-messageid"]
    assert second.headers["iothub-deliverycount"] == "1" and _lock_token(second) != token
    with pytest.raises(HttpOperationError) as stale:
        c2d_api.complete_feedback_notification(token)            # the abandoned lock is gone
    assert stale.value.response.status_code == 412
    c2d_api.complete_feedback_notification(_lock_token(second))
    assert c2d_api.receive_feedback_notification(raw=True).response.status_code == 204


def test_purge_and_feedback_credentials(hub: HubThread, registry: IoTHubRegistryManager) -> None:
    from msrest.exceptions import HttpOperationError

    from edb_local.hub.amqp.auth import service_policy_key

    registry.create_device_with_sas("cred-dev", None, None, "enabled")
    forged = IoTHubRegistryManager.from_connection_string(
        hub.config.service_connection_string.replace(hub.config.owner_key, new_key()))
    for call in (lambda: forged.protocol.cloud_to_device_messages.receive_feedback_notification(),
                 lambda: forged.protocol.cloud_to_device_messages.purge_cloud_to_device_message_queue("cred-dev"),
                 lambda: forged.protocol.cloud_to_device_messages.complete_feedback_notification("t"),
                 lambda: forged.protocol.cloud_to_device_messages.abandon_feedback_notification("t")):
        with pytest.raises(HttpOperationError) as refused:
            call()
        assert refused.value.response.status_code == 401
    # the `service` policy (ServiceConnect) may purge and read feedback, not read the registry
    service = IoTHubRegistryManager.from_connection_string(
        f"HostName={hub.config.service_host};SharedAccessKeyName=service;"
        f"SharedAccessKey={service_policy_key(hub.config.owner_key)}")
    c2d_api = service.protocol.cloud_to_device_messages
    assert c2d_api.purge_cloud_to_device_message_queue("cred-dev").total_messages_purged == 0
    assert c2d_api.receive_feedback_notification(raw=True).response.status_code == 204
    with pytest.raises(HttpOperationError) as registry_read:
        service.get_device("cred-dev")
    assert registry_read.value.response.status_code == 401


def test_queued_message_and_its_ack_survive_a_hub_restart(
        hub: HubThread, registry: IoTHubRegistryManager, device: Any) -> None:
    registry.send_c2d_message("c2d-dev", "kept", properties={"messageId": "m-kept", "iothub-ack": "positive"})
    hub.stop()
    hub.start()             # same state directory: the message is reloaded from the pending table
    inbox = Inbox()
    device(inbox)
    assert [m.data for m in inbox.wait(1)] == [b"kept"]
    response = _feedback(registry)
    assert response.status_code == 200
    assert [(r["originalMessageId"], r["statusCode"]) for r in response.json()] == [("m-kept", "Success")]


# -- feedback over AMQP (uamqp's ReceiveClient, as `az iot hub monitor-feedback`) ----------------

def _service_auth(host: str, policy: str, key: str) -> Any:
    """A CBS token for the IoT Hub service audience, made as azure-iot-hub's own AMQP client makes
    it (`iothub_amqp_client.IoTHubAmqpClientSharedAccessKeyAuth`)."""
    import base64
    import hashlib
    import hmac
    import urllib.parse

    import uamqp
    from azure.core.credentials import AccessToken

    def get_token() -> AccessToken:
        expiry = int(time.time() + 3600)
        digest = hmac.new(base64.b64decode(key), f"{host}\n{expiry}".encode(), hashlib.sha256).digest()
        signature = urllib.parse.quote(base64.b64encode(digest))
        return AccessToken(f"SharedAccessSignature sr={host}&sig={signature}&se={expiry}&skn={policy}", expiry)

    auth = uamqp.authentication.JWTTokenAuth(audience="https://" + host, uri="https://" + host,
                                             get_token=get_token, token_type=b"servicebus.windows.net:sastoken")
    auth.update_token()
    return auth


def _feedback_receiver(hub: HubThread, *, key: str | None = None, path: str = "messages/serviceBound/feedback") -> Any:
    import uamqp

    from edb_local.hub.amqp.auth import service_policy_key

    host = hub.config.service_host
    auth = _service_auth(host, "service", key or service_policy_key(hub.config.owner_key))
    return uamqp.ReceiveClient(f"amqps://{host}/{path}", auth=auth, auto_complete=False, timeout=0)


def _amqp_feedback(receiver: Any, count: int = 1, timeout: float = 15.0) -> list[Any]:
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got += receiver.receive_message_batch(max_batch_size=count - len(got), timeout=1000)
    return got


def _wait_success(hub: HubThread, count: int) -> None:
    deadline = time.monotonic() + 10
    while hub.call(lambda: hub.server.core.counters.get("c2d_success", 0)) < count and time.monotonic() < deadline:
        time.sleep(0.1)


def test_feedback_over_amqp_accept_removes_and_release_redelivers(
        hub: HubThread, registry: IoTHubRegistryManager, device: Any) -> None:
    import json

    inbox = Inbox()
    device(inbox)
    registry.send_c2d_message("c2d-dev", "a", properties={"messageId": "m-amqp", "iothub-ack": "full"})
    assert len(inbox.wait(1)) == 1
    _wait_success(hub, 1)
    receiver = _feedback_receiver(hub)
    try:
        [first] = _amqp_feedback(receiver)
        assert first.properties.content_type == b"application/vnd.microsoft.iothub.feedback.json"
        [record] = json.loads(b"".join(first.get_data()))
        assert (record["originalMessageId"], record["statusCode"], record["deviceId"]) == (
            "m-amqp", "Success", "c2d-dev")
        # locked while the delivery is unsettled: the HTTPS receive finds nothing
        c2d_api = registry.protocol.cloud_to_device_messages
        assert c2d_api.receive_feedback_notification(raw=True).response.status_code == 204
        assert first.release()                            # abandon: the same message comes again
        [second] = _amqp_feedback(receiver)
        assert json.loads(b"".join(second.get_data())) == [record]
        assert second.properties.message_id == first.properties.message_id
        assert second.header.delivery_count == 1 and second.delivery_tag != first.delivery_tag
        assert second.accept()                            # complete: gone
        assert _amqp_feedback(receiver, timeout=2.0) == []
    finally:
        receiver.close()
    assert c2d_api.receive_feedback_notification(raw=True).response.status_code == 204


def test_feedback_over_amqp_unsettled_is_abandoned_when_the_receiver_goes(
        hub: HubThread, registry: IoTHubRegistryManager, device: Any) -> None:
    import json

    inbox = Inbox()
    device(inbox)
    registry.send_c2d_message("c2d-dev", "a", properties={"messageId": "m-left", "iothub-ack": "positive"})
    inbox.wait(1)
    _wait_success(hub, 1)
    receiver = _feedback_receiver(hub, path="messages/servicebound/feedback")   # IoT Hub's lower-case form
    try:
        [message] = _amqp_feedback(receiver)
    finally:
        receiver.close()                                  # never settled
    records = json.loads(b"".join(message.get_data()))
    response = _feedback(registry)                        # received again, over HTTPS this time
    assert response.status_code == 200 and response.json() == records
    assert response.headers["iothub-deliverycount"] == "1"


def test_feedback_over_amqp_refuses_a_wrong_token(hub: HubThread) -> None:
    receiver = _feedback_receiver(hub, key=new_key())
    try:
        with pytest.raises(Exception):  # noqa: B017 (uamqp raises its own TokenAuthFailure types)
            _amqp_feedback(receiver, timeout=5.0)
    finally:
        receiver.close()
    assert any(r.code == "HUB_AMQP_CBS_REFUSED" and r.detail.startswith("HUB_AUTH_BAD_SIGNATURE")
               for r in hub.server.core.refusals)


def test_feedback_over_amqp_reject_drops_it(hub: HubThread, registry: IoTHubRegistryManager, device: Any) -> None:
    inbox = Inbox()
    device(inbox)
    registry.send_c2d_message("c2d-dev", "a", properties={"messageId": "m-rejected", "iothub-ack": "positive"})
    inbox.wait(1)
    _wait_success(hub, 1)
    receiver = _feedback_receiver(hub)
    try:
        [message] = _amqp_feedback(receiver)
        assert message.reject(condition="test:rejected", description="not wanted")
        assert _amqp_feedback(receiver, timeout=2.0) == []
    finally:
        receiver.close()
    c2d_api = registry.protocol.cloud_to_device_messages
    assert c2d_api.receive_feedback_notification(raw=True).response.status_code == 204
