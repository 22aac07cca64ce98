"""Upstream messages in the shape `az iot hub monitor-events --properties all` prints. Pure code.

``{"event": {"origin", "module", "interface", "component", "payload", "properties": {"system", "application"}}}``;
the payload is the parsed JSON when the body is UTF-8 JSON, else the text, else base64 (and then
system property ``edb-payload-encoding`` is ``base64``).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

from edb_local.hub.store import UpstreamRow

_SYSTEM_NAMES = {
    "messageId": "message_id",
    "correlationId": "correlation_id",
    "userId": "user_id",
    "contentType": "content_type",
    "contentEncoding": "content_encoding",
    "expiryTimeUtc": "absolute_expiry_time",
    "outputName": "output_name",
    "interfaceId": "dt-interface-id",
    "connectionDeviceId": "iothub-connection-device-id",
    "connectionModuleId": "iothub-connection-module-id",
    "enqueuedTime": "iothub-enqueuedtime",
    "messageSchema": "iothub-message-schema",
    "messageSource": "iothub-message-source",
}


def decode_payload(body: bytes) -> tuple[Any, bool]:
    """(payload, is_base64)"""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(body).decode(), True
    try:
        return json.loads(text), False
    except (ValueError, RecursionError):
        return text, False


def upstream_event(row: UpstreamRow) -> dict[str, Any]:
    props = row.props
    source_system: dict[str, str] = props.get("system", {})
    system: dict[str, Any] = {}
    for name, value in source_system.items():
        system[_SYSTEM_NAMES.get(name, name)] = value
    system.setdefault("iothub-enqueuedtime",
                      dt.datetime.fromtimestamp(row.enqueued, dt.UTC).isoformat().replace("+00:00", "Z"))
    system["iothub-message-source"] = source_system.get("messageSource") or (
        "twinChangeEvents" if source_system.get("messageSchema") == "twinChangeNotification" else "Telemetry")
    payload, is_b64 = decode_payload(row.body)
    if is_b64:
        system["edb-payload-encoding"] = "base64"
    event: dict[str, Any] = {"origin": row.device_id}
    if row.module_id:
        event["module"] = row.module_id
    event.update({"interface": "", "component": "", "payload": payload,
                  "properties": {"system": system, "application": dict(props.get("application", {}))}})
    return {"event": event}


def event_matches(event: dict[str, Any], *, device: str | None = None, module: str | None = None,
                  properties: dict[str, str] | None = None) -> bool:
    """The monitor's filters: device, module, and application properties (`key=value`)."""
    body = event["event"]
    if device is not None and body.get("origin") != device:
        return False
    if module is not None and body.get("module") != module:
        return False
    application = body.get("properties", {}).get("application", {})
    return all(application.get(key) == value for key, value in (properties or {}).items())


# -- events read from an Event Hub-compatible endpoint (Azure IoT Hub or the stand-in) -----------

_AMQP_SYSTEM_NAMES = {
    "message-id": "message_id",
    "correlation-id": "correlation_id",
    "user-id": "user_id",
    "content-type": "content_type",
    "content-encoding": "content_encoding",
    "absolute-expiry-time": "absolute_expiry_time",
    "iothub-interface-name": "dt-interface-id",
}
_TIMESTAMPS = {"iothub-enqueuedtime", "x-opt-enqueued-time", "absolute_expiry_time"}
_EDB_ONLY = {"x-opt-offset", "x-opt-sequence-number", "x-opt-enqueued-time", "x-opt-partition-key",
             "iothub-connection-auth-method", "iothub-connection-auth-generation-id"}


def _text(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(bytes(value)).decode()
    return value


def _iso_ms(value: Any) -> str:
    return dt.datetime.fromtimestamp(int(value) / 1000, dt.UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def eventhub_event(system_properties: dict[Any, Any], properties: dict[Any, Any] | None, body: bytes) -> dict[str, Any]:
    """An EventData (its `system_properties`, `properties` and body bytes) in the shape of
    :func:`upstream_event`, so `edb monitor` prints the same thing from either source."""
    system: dict[str, Any] = {}
    for raw_key, raw_value in system_properties.items():
        key = str(_text(raw_key))
        if key in _EDB_ONLY:
            continue
        name = _AMQP_SYSTEM_NAMES.get(key, key)
        value = _text(raw_value)
        if name in _TIMESTAMPS and isinstance(value, int | float):
            value = _iso_ms(value)
        system[name] = value
    application = {str(_text(k)): _text(v) for k, v in (properties or {}).items()}
    if "iothub-message-schema" in application and system.get("iothub-message-source") != "Telemetry":
        system["iothub-message-schema"] = application["iothub-message-schema"]
    payload, is_b64 = decode_payload(body)
    if is_b64:
        system["edb-payload-encoding"] = "base64"
    event: dict[str, Any] = {"origin": system.get("iothub-connection-device-id", "")}
    if system.get("iothub-connection-module-id"):
        event["module"] = system["iothub-connection-module-id"]
    event.update({"interface": system.get("dt-dataschema", ""), "component": system.get("dt-subject", ""),
                  "payload": payload, "properties": {"system": system, "application": application}})
    return {"event": event}
