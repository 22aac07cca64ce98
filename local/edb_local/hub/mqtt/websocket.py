"""MQTT over WebSockets on the HTTPS port: ``GET /$iothub/websocket`` with subprotocol ``mqtt``, as
IoT Hub offers it for clients that may only reach 443 (azure-iot-device ``websockets=True``, the
Azure CLI's device commands).

Served by the shared WebSocket endpoint (edb_local/hub/websocket.py): every binary message is fed
to the same :class:`MqttConnection` the 8883 listener uses, so authentication, topic rules, packet
and message limits, keep-alive, the CONNECT deadline and the slow-consumer cut are those of 8883.
"""

from __future__ import annotations

from edb_local.hub import errors
from edb_local.hub.core import HubCore
from edb_local.hub.mqtt.connection import MqttConnection
from edb_local.hub.websocket import WebSocketService

WEBSOCKET_PATH = "/$iothub/websocket"
MQTT_SUBPROTOCOL = "mqtt"


def mqtt_websocket(core: HubCore, connections: set[MqttConnection]) -> WebSocketService:
    # a WebSocket message carries at least one MQTT packet; allow a whole packet plus framing
    return WebSocketService(subprotocol=MQTT_SUBPROTOCOL, paths=(WEBSOCKET_PATH,),
                            max_message=core.config.max_packet_bytes + 16,
                            make=lambda: MqttConnection(core, connections),
                            malformed_code=errors.MQTT_MALFORMED, oversized_code=errors.MQTT_OVERSIZED)
