"""The upstream log seen as an Event Hub: partitions, positions, and the event messages IoT Hub's
built-in endpoint delivers. Pure code (no I/O): the AMQP connection reads rows from the store and
calls in here.

One log, many views: every row of the hub's `upstream` table (everything routed to `$upstream`,
plus twin change notifications) belongs to partition ``partition_of(device_id)``. A row's store
sequence number is both its `x-opt-sequence-number` and (as a decimal string) its `x-opt-offset`,
so numbers grow within a partition but are not contiguous (Event Hubs only promises "increasing";
the SDK's checkpoints store both and resume with either).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from azure.eventhub._pyamqp.message import Message, Properties
from azure.eventhub._pyamqp.types import AMQPTypes

from edb_local.hub.amqp import errors as amqp_errors
from edb_local.hub.amqp import fastcodec as fc
from edb_local.hub.errors import HubError
from edb_local.hub.store import UpstreamRow

SELECTOR_FILTER = b"apache.org:selector-filter:string"
_MAX_FILTER = 256
_SELECTOR = re.compile(
    r"^\s*amqp\.annotation\.(x-opt-offset|x-opt-sequence-number|x-opt-enqueued-time|x-opt-enqueuedtimeutc)"
    r"\s*(>=|>)\s*'?([^']*)'?\s*$")
_SOURCES = {"twinChangeNotification": "twinChangeEvents",
            "deviceLifecycleNotification": "deviceLifecycleEvents",
            "deviceConnectionStateNotification": "deviceConnectionStateEvents",
            "digitalTwinChangeNotification": "digitalTwinChangeEvents"}
_AUTH_METHOD = json.dumps({"scope": "device", "type": "sas", "issuer": "iothub", "acceptingIpFilterRule": None},
                          separators=(",", ":"))


def partition_of(device_id: str, count: int) -> int:
    """IoT Hub keeps one device's messages in order in one partition: hash of the device id."""
    return int.from_bytes(hashlib.sha256(device_id.encode("utf-8")).digest()[:4], "big") % count


@dataclass(frozen=True, slots=True)
class Position:
    """Where a receiver starts. ``kind``: start | latest | sequence (offsets are sequence numbers
    here) | enqueued (``value`` in epoch milliseconds)."""

    kind: str
    value: int = 0
    inclusive: bool = False


def parse_selector(text: str | None) -> Position:
    """The `apache.org:selector-filter:string` value azure-eventhub and the azure-iot CLI send.
    No filter starts at the beginning of the retained log."""
    if text is None:
        return Position("start")
    match = _SELECTOR.match(text) if len(text) <= _MAX_FILTER else None
    if match is None:
        raise HubError("unsupported selector filter", code=amqp_errors.AMQP_BAD_FILTER)
    field, op, raw = match.groups()
    inclusive = op == ">="
    if field == "x-opt-offset":
        if raw == "@latest":
            return Position("latest")
        if raw == "-1":
            return Position("start")
    try:
        value = int(raw, 10)
    except ValueError:
        raise HubError("selector filter value is not a number", code=amqp_errors.AMQP_BAD_FILTER) from None
    if value < 0:
        raise HubError("selector filter value is negative", code=amqp_errors.AMQP_BAD_FILTER)
    if field in ("x-opt-enqueued-time", "x-opt-enqueuedtimeutc"):
        return Position("enqueued", value, inclusive)
    return Position("sequence", value, inclusive)


def parse_partition_address(address: str, entity: str) -> tuple[str, str] | None:
    """`amqps://host/<entity>/ConsumerGroups/<cg>/Partitions/<id>` -> (consumer group, partition id);
    None when it is not a partition address of this entity."""
    path = address.split("://", 1)[-1].partition("/")[2].strip("/")
    parts = path.split("/")
    if (len(parts) != 5 or parts[0].lower() != entity.lower() or parts[1].lower() != "consumergroups"
            or parts[3].lower() != "partitions"):
        return None
    return parts[2], parts[4]


def _ts(ms: int) -> dict[str, Any]:
    return {"TYPE": AMQPTypes.timestamp, "VALUE": ms}


def _long(value: int) -> dict[str, Any]:
    return {"TYPE": AMQPTypes.long, "VALUE": value}


def iso_ms(value: str | None, fallback_ms: int) -> int:
    if not value:
        return fallback_ms
    try:
        return int(dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return fallback_ms


def event_message(row: UpstreamRow) -> Message:
    """The AMQP message IoT Hub's built-in endpoint delivers for one upstream row."""
    system: dict[str, str] = row.props.get("system", {})
    application: dict[str, Any] = row.props.get("application", {})
    enqueued_ms = int(row.enqueued * 1000)
    source = _SOURCES.get(system.get("messageSchema", ""), "Telemetry")
    annotations: dict[str | bytes, Any] = {"iothub-connection-device-id": row.device_id}
    if row.module_id:
        annotations["iothub-connection-module-id"] = row.module_id
    if source == "Telemetry":
        annotations["iothub-connection-auth-method"] = _AUTH_METHOD
        annotations["iothub-connection-auth-generation-id"] = "0"
    annotations.update({
        "iothub-enqueuedtime": _ts(enqueued_ms),
        "iothub-message-source": source,
        "x-opt-sequence-number": _long(row.seq),
        "x-opt-offset": str(row.seq),
        "x-opt-enqueued-time": _ts(enqueued_ms),
    })
    if system.get("interfaceId"):
        annotations["dt-dataschema"] = system["interfaceId"]
    if system.get("componentName"):
        annotations["dt-subject"] = system["componentName"]
    user_id = system.get("userId")
    expiry = system.get("expiryTimeUtc")
    properties = Properties(
        message_id=system.get("messageId"),
        user_id=user_id.encode("utf-8") if user_id else None,
        correlation_id=system.get("correlationId"),
        content_type=system.get("contentType"),
        content_encoding=system.get("contentEncoding"),
        absolute_expiry_time=iso_ms(expiry, 0) or None if expiry else None,
    )
    has_properties = any(v is not None for v in properties)
    return Message(message_annotations=annotations, properties=properties if has_properties else None,
                   application_properties={str(k): v for k, v in application.items()} or None,
                   data=[row.body])


_KEYS = {name: fc.value(fc.Symbol(name)) for name in (
    "iothub-connection-device-id", "iothub-connection-module-id", "iothub-connection-auth-method",
    "iothub-connection-auth-generation-id", "iothub-enqueuedtime", "iothub-message-source",
    "x-opt-sequence-number", "x-opt-offset", "x-opt-enqueued-time", "dt-dataschema", "dt-subject")}
_TELEMETRY_AUTH = (_KEYS["iothub-connection-auth-method"] + fc.value(_AUTH_METHOD)
                   + _KEYS["iothub-connection-auth-generation-id"] + fc.value("0"))
_SOURCE_VALUES = {name: fc.value(name) for name in ("Telemetry", *_SOURCES.values())}


def event_bytes(row: UpstreamRow) -> bytes:
    """:func:`event_message`, encoded with the fast encoder (same sections, same AMQP types); the
    constant keys and values are encoded once."""
    system: dict[str, str] = row.props.get("system", {})
    application: dict[str, Any] = row.props.get("application", {})
    enqueued = fc.value(fc.Timestamp(int(row.enqueued * 1000)))
    source = _SOURCES.get(system.get("messageSchema", ""), "Telemetry")
    parts = [_KEYS["iothub-connection-device-id"], fc.value(row.device_id)]
    count = 1
    if row.module_id:
        parts += [_KEYS["iothub-connection-module-id"], fc.value(row.module_id)]
        count += 1
    if source == "Telemetry":
        parts.append(_TELEMETRY_AUTH)
        count += 2
    parts += [_KEYS["iothub-enqueuedtime"], enqueued, _KEYS["iothub-message-source"], _SOURCE_VALUES[source],
              _KEYS["x-opt-sequence-number"], fc.value(fc.Long(row.seq)), _KEYS["x-opt-offset"],
              fc.value(str(row.seq)), _KEYS["x-opt-enqueued-time"], enqueued]
    count += 5
    for name, key in (("interfaceId", "dt-dataschema"), ("componentName", "dt-subject")):
        if system.get(name):
            parts += [_KEYS[key], fc.value(system[name])]
            count += 1
    user_id = system.get("userId")
    expiry = system.get("expiryTimeUtc")
    expiry_ms = iso_ms(expiry, 0) if expiry else 0
    content_type, content_encoding = system.get("contentType"), system.get("contentEncoding")
    properties: list[Any] = [
        system.get("messageId"), user_id.encode("utf-8") if user_id else None, None, None, None,
        system.get("correlationId"), fc.Symbol(content_type) if content_type else None,
        fc.Symbol(content_encoding) if content_encoding else None,
        fc.Timestamp(expiry_ms) if expiry_ms else None, None, None, None, None]
    has_properties = any(p is not None for p in properties)
    app = {str(k): (None if v is None else str(v)) for k, v in application.items()}
    return fc.event_payload_raw(b"".join(parts), count, properties if has_properties else None, app or None,
                                row.body)
