"""The AMQP endpoint's pure parts: who may do what (CBS tokens), selector filters, partition
addresses, frame splitting limits, the monitor's event shape and catch-up bookkeeping."""

from __future__ import annotations

import base64
import datetime as dt
import struct
import time
from typing import Any

import pytest
from azure.eventhub._pyamqp.utils import generate_sas_token
from hub_helpers import new_key

from edb_local.hub import errors
from edb_local.hub.amqp import codec
from edb_local.hub.amqp import errors as amqp_errors
from edb_local.hub.amqp.auth import normalise, service_policy_key, verify_service_token
from edb_local.hub.amqp.eventlog import Position, parse_partition_address, parse_selector, partition_of
from edb_local.hub.errors import HubError
from edb_local.hub.eventhub_monitor import CatchUp, parse_enqueued_time, resolve_monitor_settings, start_targets
from edb_local.hub.monitor_format import eventhub_event
from edb_local.hub.sas import make_token

ADDRESS = "127.9.8.7"
HUB = "edb-rules.azure-devices.net"
ENTITY = "edb-rules"
OWNER = new_key()


def verify(token: str, now: float | None = None) -> object:
    return verify_service_token(token, address=ADDRESS, hub_names=frozenset({HUB, ADDRESS}), entity=ENTITY,
                                owner_key=OWNER, now=time.time() if now is None else now)


def eh_token(audience: str, policy: str = "service", key: str | None = None, expiry: int | None = None) -> str:
    key = service_policy_key(OWNER) if key is None else key
    return generate_sas_token(audience, policy, key, expiry or int(time.time()) + 600)


def code_of(fn: object) -> str:
    with pytest.raises(HubError) as info:
        fn()  # type: ignore[operator]
    return info.value.code


def test_event_hub_tokens_as_azure_eventhub_signs_them_are_accepted_and_scoped() -> None:
    grant = verify(eh_token(f"sb://{ADDRESS}/{ENTITY}/consumergroups/$default"))
    now = time.time()
    assert grant.covers(f"amqps://{ADDRESS}/{ENTITY}/ConsumerGroups/$Default/Partitions/0", event_hub=True, now=now)
    assert not grant.covers(f"amqps://{ADDRESS}/{ENTITY}/ConsumerGroups/other/Partitions/0", event_hub=True, now=now)
    assert not grant.covers(f"{ADDRESS}/messages/devicebound", event_hub=False, now=now)
    owner = verify(eh_token(f"sb://{ADDRESS}/{ENTITY}", policy="iothubowner", key=OWNER))
    assert owner.covers(f"sb://{ADDRESS}/{ENTITY}/consumergroups/x/partitions/3", event_hub=True, now=now)
    assert not owner.covers(f"sb://{ADDRESS}/{ENTITY}", event_hub=True, now=owner.expiry + 1)


def test_iot_hub_service_tokens_as_azure_iot_hub_signs_them() -> None:
    token = make_token(ADDRESS, OWNER, expiry=int(time.time()) + 600, key_name="iothubowner", quote_plus=True)
    grant = verify(token)
    assert grant.covers(f"amqps://{ADDRESS}/messages/devicebound", event_hub=False, now=time.time())
    assert not grant.covers(f"sb://{ADDRESS}/{ENTITY}", event_hub=True, now=time.time())


def test_bad_tokens_are_refused_with_their_codes() -> None:
    audience = f"sb://{ADDRESS}/{ENTITY}"
    assert code_of(lambda: verify(eh_token(audience, expiry=int(time.time()) - 1))) == errors.AUTH_TOKEN_EXPIRED
    assert code_of(lambda: verify(eh_token(audience, policy="registryRead"))) == errors.AUTH_UNKNOWN_POLICY
    assert code_of(lambda: verify(eh_token(audience, key=new_key()))) == errors.AUTH_BAD_SIGNATURE
    assert code_of(lambda: verify(eh_token(f"sb://127.1.1.1/{ENTITY}"))) == errors.AUTH_WRONG_RESOURCE
    assert code_of(lambda: verify(eh_token(f"sb://{ADDRESS}/other-hub"))) == errors.AUTH_WRONG_RESOURCE
    # a device key: no skn
    device = make_token(f"{HUB}/devices/d1", new_key(), expiry=int(time.time()) + 600)
    assert code_of(lambda: verify(device)) == errors.AUTH_BAD_TOKEN
    # the Event Hubs key form (key string bytes) on an IoT Hub audience does not verify, nor the reverse
    wrong_form = generate_sas_token(ADDRESS, "iothubowner", OWNER, int(time.time()) + 600)
    assert code_of(lambda: verify(wrong_form)) == errors.AUTH_BAD_SIGNATURE
    assert code_of(lambda: verify(make_token(audience, service_policy_key(OWNER), expiry=int(time.time()) + 600,
                                             key_name="service", quote_plus=True))) == errors.AUTH_BAD_SIGNATURE
    assert code_of(lambda: verify("SharedAccessSignature garbage")) == errors.AUTH_BAD_TOKEN


def test_service_policy_key_is_derived_and_not_the_owner_key() -> None:
    derived = service_policy_key(OWNER)
    assert derived != OWNER and len(base64.b64decode(derived)) == 32
    assert service_policy_key(OWNER) == derived and service_policy_key(new_key()) != derived


def test_normalise_strips_scheme_port_and_case() -> None:
    assert normalise("amqps://127.0.0.1:5671/Hub/ConsumerGroups/$Default/") == "127.0.0.1/hub/consumergroups/$default"
    assert normalise("$cbs") == "$cbs"


@pytest.mark.parametrize(("text", "expected"), [
    (None, Position("start")),
    ("amqp.annotation.x-opt-offset > '-1'", Position("start")),
    ("amqp.annotation.x-opt-offset > '@latest'", Position("latest")),
    ("amqp.annotation.x-opt-offset > '42'", Position("sequence", 42)),
    ("amqp.annotation.x-opt-offset >= '42'", Position("sequence", 42, True)),
    ("amqp.annotation.x-opt-sequence-number > '7'", Position("sequence", 7)),
    ("amqp.annotation.x-opt-enqueued-time > '1700000000000'", Position("enqueued", 1700000000000)),
    ("amqp.annotation.x-opt-enqueuedtimeutc > 1700000000000", Position("enqueued", 1700000000000)),
])
def test_selector_filters_the_clients_send(text: str | None, expected: Position) -> None:
    assert parse_selector(text) == expected


@pytest.mark.parametrize("text", ["amqp.annotation.x-opt-offset > 'abc'", "1=1; drop table",
                                  "amqp.annotation.x-opt-offset > '-5'", "x" * 300,
                                  "amqp.annotation.x-opt-partition-key = 'a'"])
def test_unknown_selector_filters_are_refused(text: str) -> None:
    assert code_of(lambda: parse_selector(text)) == amqp_errors.AMQP_BAD_FILTER


def test_partition_addresses_and_partitioning() -> None:
    assert parse_partition_address(f"amqps://{ADDRESS}/{ENTITY}/ConsumerGroups/$Default/Partitions/3", ENTITY) == (
        "$Default", "3")
    assert parse_partition_address(f"amqps://{ADDRESS}/{ENTITY.upper()}/consumergroups/cg/partitions/0",
                                   ENTITY) == ("cg", "0")
    assert parse_partition_address(f"amqps://{ADDRESS}/other/ConsumerGroups/$Default/Partitions/3", ENTITY) is None
    assert parse_partition_address(f"amqps://{ADDRESS}/{ENTITY}/ConsumerGroups/$Default", ENTITY) is None
    spread = {partition_of(f"device-{i}", 4) for i in range(64)}
    assert spread == {0, 1, 2, 3}
    assert partition_of("device-1", 4) == partition_of("device-1", 4)


def test_frames_above_the_limit_are_refused_before_they_are_read() -> None:
    header = struct.pack(">IBcH", 10 * 1024 * 1024, 2, b"\x00", 0)
    assert code_of(lambda: codec.split_frame(header, codec.MIN_FRAME * 512)) == amqp_errors.AMQP_FRAME_TOO_LARGE
    assert code_of(lambda: codec.split_frame(struct.pack(">IBcH", 4, 2, b"\x00", 0), 4096)) == (
        amqp_errors.AMQP_MALFORMED)
    garbage = struct.pack(">IBcH", 12, 2, b"\x00", 0) + b"\xff\xff\xff\xff"
    assert code_of(lambda: codec.split_frame(garbage, 4096)) == amqp_errors.AMQP_MALFORMED
    assert codec.split_frame(header[:6], 4096) is None
    heartbeat = struct.pack(">IBcH", 8, 2, b"\x00", 0)
    split = codec.split_frame(heartbeat, 4096)
    assert split is not None and split[0].code is None and split[1] == 8


def test_eventhub_event_has_the_monitor_shape() -> None:
    system = {b"message-id": b"m1", b"content-type": b"application/json", b"content-encoding": b"utf-8",
              b"iothub-connection-device-id": b"d1", b"iothub-connection-module-id": b"m",
              b"iothub-enqueuedtime": 1700000000123, b"iothub-message-source": b"Telemetry",
              b"x-opt-sequence-number": 5, b"x-opt-offset": b"5", b"x-opt-enqueued-time": 1700000000123}
    event = eventhub_event(system, {b"messageType": b"alert"}, b'{"n": 1}')["event"]
    assert event["origin"] == "d1" and event["module"] == "m" and event["payload"] == {"n": 1}
    assert event["properties"]["application"] == {"messageType": "alert"}
    assert event["properties"]["system"] == {
        "message_id": "m1", "content_type": "application/json", "content_encoding": "utf-8",
        "iothub-connection-device-id": "d1", "iothub-connection-module-id": "m",
        "iothub-enqueuedtime": "2023-11-14T22:13:20.123Z", "iothub-message-source": "Telemetry"}
    binary = eventhub_event({b"iothub-connection-device-id": b"d2"}, None, b"\xff\x00")["event"]
    assert binary["payload"] == "/wA=" and binary["properties"]["system"]["edb-payload-encoding"] == "base64"


def test_monitor_settings_and_catch_up() -> None:
    cs = f"Endpoint=sb://{ADDRESS}/;SharedAccessKeyName=service;SharedAccessKey=k;EntityPath={ENTITY}"
    settings = resolve_monitor_settings(None, None, environ={}, env_file={"EDB_EVENTHUB_CONNECTION_STRING": cs})
    assert (settings.host, settings.port, settings.ca_cert) == (ADDRESS, 5671, None)
    assert code_of(lambda: resolve_monitor_settings(None, None, environ={}, env_file={})) == errors.CONFIG_INVALID
    assert code_of(lambda: resolve_monitor_settings("HostName=h;SharedAccessKeyName=a;SharedAccessKey=b", None,
                                                    environ={}, env_file={})) == errors.CONFIG_INVALID
    assert code_of(lambda: resolve_monitor_settings(cs, "/no/such/ca.pem", environ={}, env_file={})) == (
        errors.CONFIG_INVALID)
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    partitions = {"0": {"is_empty": True, "last_enqueued_sequence_number": -1, "last_enqueued_time_utc": t0},
                  "1": {"is_empty": False, "last_enqueued_sequence_number": 9, "last_enqueued_time_utc": t0},
                  "2": {"is_empty": False, "last_enqueued_sequence_number": 4, "last_enqueued_time_utc": t0}}
    assert start_targets(partitions, "-1") == {"0": -1, "1": 9, "2": 4}
    assert start_targets(partitions, 5) == {"0": -1, "1": 9, "2": -1}
    assert start_targets(partitions, t0 + dt.timedelta(seconds=1)) == {"0": -1, "1": -1, "2": -1}
    catch_up = CatchUp(start_targets(partitions, "-1"))
    assert not catch_up.done
    catch_up.seen("1", 9)
    catch_up.seen("2", 3)
    assert not catch_up.done
    catch_up.seen("2", 4)
    assert catch_up.done
    assert parse_enqueued_time("2026-01-01T00:00:00Z") == t0
    assert parse_enqueued_time("-60") < dt.datetime.now(dt.UTC)
    assert code_of(lambda: parse_enqueued_time("yesterday")) == errors.CONFIG_INVALID


@pytest.mark.parametrize("props", [
    {"system": {"contentType": "application/json", "contentEncoding": "utf-8", "messageId": "m", "correlationId": "c",
                "userId": "u", "expiryTimeUtc": "2030-01-01T00:00:00Z", "interfaceId": "dtmi:x;1",
                "componentName": "thermo"}, "application": {"a": "b", "flag": None, "long": "x" * 300}},
    {"system": {"messageSchema": "twinChangeNotification"}, "application": {"opType": "updateTwin"}},
    {"system": {}, "application": {}},
])
def test_fast_event_encoding_decodes_like_pyamqps_own(props: dict[str, Any]) -> None:
    from edb_local.hub.amqp import fastcodec
    from edb_local.hub.amqp.eventlog import event_bytes, event_message
    from edb_local.hub.store import UpstreamRow

    for module in (None, "mod"):
        for body in (b"", b"\x00\xff" * 10, b"x" * 70_000):
            row = UpstreamRow(123456789, 1_700_000_000.5, "dev-\u00e9", module, body, props)
            fast = codec.decode_message(event_bytes(row))
            assert fast == codec.decode_message(codec.message_bytes(event_message(row)))
    frame, size = codec.split_frame(fastcodec.transfer_frame(3, 7, 9, b"payload", more=True), 1 << 20) or (None, 0)
    assert frame is not None and size == len(fastcodec.transfer_frame(3, 7, 9, b"payload", more=True))
    assert (frame.channel, frame.code, frame.fields[:6], bytes(frame.fields[-1])) == (
        3, codec.TRANSFER, [7, 9, (9).to_bytes(4, "big"), 0, True, True], b"payload")
