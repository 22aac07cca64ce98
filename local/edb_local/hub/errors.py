"""Error codes of the IoT Hub + edgeHub stand-in (HUB_*).

Codes are stable: they appear in the hub's refusal log, HTTP error bodies and test assertions.
"""

from __future__ import annotations

from edb.errors import LocalStackError


class HubError(LocalStackError):
    """Base of every refusal or failure of the hub stand-in."""

    code = "HUB_ERROR"


# MQTT transport
MQTT_MALFORMED = "HUB_MQTT_MALFORMED"            # a packet that violates MQTT 3.1.1
MQTT_OVERSIZED = "HUB_MQTT_OVERSIZED"            # declared remaining length above the limit
MQTT_QOS2_REFUSED = "HUB_MQTT_QOS2_REFUSED"      # IoT Hub supports QoS 0 and 1 only
MQTT_PROTOCOL_VERSION = "HUB_MQTT_PROTOCOL_VERSION"
MQTT_UNEXPECTED_PACKET = "HUB_MQTT_UNEXPECTED_PACKET"
MQTT_KEEPALIVE_TIMEOUT = "HUB_MQTT_KEEPALIVE_TIMEOUT"
MQTT_SESSION_TAKEN_OVER = "HUB_MQTT_SESSION_TAKEN_OVER"  # a newer connection of the same identity
MQTT_SLOW_CONSUMER = "HUB_MQTT_SLOW_CONSUMER"    # a client that does not read what it asked for
WS_UPGRADE_REFUSED = "HUB_WS_UPGRADE_REFUSED"    # a WebSocket upgrade with a wrong path or subprotocol, or none (400)
INTERNAL = "HUB_INTERNAL"                        # a bug; costs the one connection

# Authentication and authorization
AUTH_BAD_CLIENT_ID = "HUB_AUTH_BAD_CLIENT_ID"
AUTH_BAD_USERNAME = "HUB_AUTH_BAD_USERNAME"
AUTH_BAD_TOKEN = "HUB_AUTH_BAD_TOKEN"  # noqa: S105 (a code, not a secret); unparseable SAS
AUTH_WRONG_RESOURCE = "HUB_AUTH_WRONG_RESOURCE"  # sr names another identity or hub
AUTH_BAD_SIGNATURE = "HUB_AUTH_BAD_SIGNATURE"    # HMAC does not match any key
AUTH_TOKEN_EXPIRED = "HUB_AUTH_TOKEN_EXPIRED"  # noqa: S105 (a code, not a secret)
AUTH_UNKNOWN_IDENTITY = "HUB_AUTH_UNKNOWN_IDENTITY"
AUTH_DISABLED_IDENTITY = "HUB_AUTH_DISABLED_IDENTITY"
AUTH_MISSING = "HUB_AUTH_MISSING"
AUTH_UNKNOWN_POLICY = "HUB_AUTH_UNKNOWN_POLICY"
TOPIC_FORBIDDEN = "HUB_TOPIC_FORBIDDEN"          # a topic of another identity, or not an IoT Hub topic
AUTH_METHOD_TARGET = "HUB_AUTH_METHOD_TARGET"    # a module invoking a method outside its own device's modules

# Twins, routes, queries, deployments
TWIN_INVALID = "HUB_TWIN_INVALID"
TWIN_TOO_LARGE = "HUB_TWIN_TOO_LARGE"
ROUTE_INVALID = "HUB_ROUTE_INVALID"
QUERY_INVALID = "HUB_QUERY_INVALID"
CONFIGURATION_INVALID = "HUB_CONFIGURATION_INVALID"

# Service API
BAD_REQUEST = "HUB_BAD_REQUEST"
NOT_FOUND = "HUB_NOT_FOUND"
CONFLICT = "HUB_CONFLICT"
PRECONDITION_FAILED = "HUB_PRECONDITION_FAILED"
DEVICE_NOT_ONLINE = "HUB_DEVICE_NOT_ONLINE"
METHOD_TIMEOUT = "HUB_METHOD_TIMEOUT"
MESSAGE_TOO_LARGE = "HUB_MESSAGE_TOO_LARGE"
QUEUE_FULL = "HUB_QUEUE_FULL"
C2D_QUEUE_FULL = "HUB_C2D_QUEUE_FULL"            # the device already has `c2d_queue_limit` messages queued
C2D_UNKNOWN_DEVICE = "HUB_C2D_UNKNOWN_DEVICE"    # a C2D message for no registered device
C2D_BAD_MESSAGE = "HUB_C2D_BAD_MESSAGE"          # no `to`, already expired, too large, bad iothub-ack
C2D_LOCK_LOST = "HUB_C2D_LOCK_LOST"              # complete/abandon with a lock token that is unknown or lapsed (412)
C2D_FEEDBACK_DROPPED = "HUB_C2D_FEEDBACK_DROPPED"  # a feedback record over the feedback queue's bound
FILE_UPLOAD_THROTTLED = "HUB_FILE_UPLOAD_THROTTLED"  # more than 10 outstanding uploads of one device (429)
NOT_IMPLEMENTED = "HUB_NOT_IMPLEMENTED"          # an IoT Hub API the stand-in does not offer (501)

# Configuration of the hub process itself (and of its service-side clients)
CONFIG_INVALID = "HUB_CONFIG_INVALID"
UNREACHABLE = "HUB_UNREACHABLE"                  # client side: no answer from the hub (down, wrong address)
TLS_UNTRUSTED = "HUB_TLS_UNTRUSTED"              # client side: the hub's certificate is not trusted
