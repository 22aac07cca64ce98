"""AMQP over WebSockets on the HTTPS port (subprotocol ``AMQPWSB10``), for operators whose
firewall blocks 5671: the Event Hub-compatible endpoint and the service's CBS and C2D, as on 5671.

Paths, as the real clients ask for them:

- ``/$servicebus/websocket``: azure-eventhub 5.15 (pyamqp, ``TransportType.AmqpOverWebsocket``)
  appends it to the host name (``azure/eventhub/_configuration.py``) and connects to
  ``wss://<host>:443/$servicebus/websocket`` (websocket-client for the sync client, aiohttp for
  the aio one).
- ``/$servicebus/websocket/``: uamqp-c's default relative path, with the slash (azure-iot-hub's
  ``IoTHubRegistryManager(transport_type=AmqpOverWebsocket)``).

The client sends the SASL header, SASL frames, the AMQP header and every frame through the same
WebSocket, as binary messages cut wherever it likes; the bytes of all messages are one stream fed
to the same :class:`AmqpConnection` the 5671 listener runs (same SASL, CBS, limits, flow control
and write bound). One message may not exceed a frame at the size we announce plus a protocol
header (``HUB_AMQP_FRAME_TOO_LARGE``).
"""

from __future__ import annotations

from edb_local.hub.amqp import errors as amqp_errors
from edb_local.hub.amqp.connection import MAX_FRAME, AmqpConnection
from edb_local.hub.amqp.endpoint import AmqpEndpoint
from edb_local.hub.websocket import WebSocketService

AMQP_SUBPROTOCOL = "AMQPWSB10"
AMQP_WEBSOCKET_PATHS = ("/$servicebus/websocket", "/$servicebus/websocket/")
MAX_WS_MESSAGE = MAX_FRAME + 8


def amqp_websocket(endpoint: AmqpEndpoint) -> WebSocketService:
    return WebSocketService(subprotocol=AMQP_SUBPROTOCOL, paths=AMQP_WEBSOCKET_PATHS, max_message=MAX_WS_MESSAGE,
                            make=lambda: AmqpConnection(endpoint), malformed_code=amqp_errors.AMQP_MALFORMED,
                            oversized_code=amqp_errors.AMQP_FRAME_TOO_LARGE)
