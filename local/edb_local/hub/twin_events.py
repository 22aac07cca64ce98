"""Twin change notifications as IoT Hub emits them (message source ``twinChangeEvents``). Pure code.

https://learn.microsoft.com/azure/iot-hub/iot-hub-devguide-messages-d2c#non-telemetry-events:
application properties ``hubName``, ``deviceId`` (``moduleId``), ``operationTimestamp``,
``iothub-message-schema: twinChangeNotification``, ``opType: updateTwin | replaceTwin``; system
properties content type ``application/json``, encoding ``utf-8``, ``iothub-message-source:
twinChangeEvents``; the body is the part of the twin that changed, with the twin ``version`` and the
section's ``$version``.
"""

from __future__ import annotations

import json
from typing import Any

from edb_local.hub.message import HubMessage
from edb_local.hub.topics import Identity
from edb_local.hub.twin import Twin

MESSAGE_SOURCE = "twinChangeEvents"
MESSAGE_SCHEMA = "twinChangeNotification"
UPDATE = "updateTwin"
REPLACE = "replaceTwin"


def change_body(twin: Twin, *, tags: dict[str, Any] | None = None, desired: dict[str, Any] | None = None,
                reported: dict[str, Any] | None = None) -> dict[str, Any]:
    """The notification body: what changed (merge-patch form, ``null`` = removed), each section with
    its new ``$version``, and the twin ``version``."""
    body: dict[str, Any] = {"version": twin.version}
    if tags is not None:
        body["tags"] = tags
    properties: dict[str, Any] = {}
    if desired is not None:
        properties["desired"] = {**desired, "$version": twin.desired_version}
    if reported is not None:
        properties["reported"] = {**reported, "$version": twin.reported_version}
    if properties:
        body["properties"] = properties
    return body


def twin_change_message(hub_name: str, identity: Identity, body: dict[str, Any], op_type: str,
                        timestamp: str) -> HubMessage:
    system = {"contentType": "application/json", "contentEncoding": "utf-8",
              "connectionDeviceId": identity.device_id, "enqueuedTime": timestamp,
              "messageSchema": MESSAGE_SCHEMA, "messageSource": MESSAGE_SOURCE}
    application: dict[str, str | None] = {"hubName": hub_name, "deviceId": identity.device_id}
    if identity.module_id is not None:
        system["connectionModuleId"] = identity.module_id
        application["moduleId"] = identity.module_id
    application.update({"opType": op_type, "iothub-message-schema": MESSAGE_SCHEMA,
                        "operationTimestamp": timestamp})
    return HubMessage(json.dumps(body, separators=(",", ":")).encode(), system, application)
