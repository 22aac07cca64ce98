"""MQTT over WebSockets on the HTTPS port: ``GET /$iothub/websocket`` with subprotocol ``mqtt``, as
IoT Hub offers it for clients that may only reach 443 (azure-iot-device ``websockets=True``, the
Azure CLI's device commands).

The MQTT protocol code is not repeated here: every binary WebSocket message is fed to the same
:class:`MqttConnection` the 8883 listener uses, through :class:`WebSocketTransport`, a small
``asyncio.Transport`` whose writes leave as binary WebSocket messages. So authentication, topic
rules, packet and message limits, keep-alive, the CONNECT deadline and the slow-consumer cut are
those of 8883.

IoT Hub serves AMQP over WebSockets on the same path (subprotocol ``AMQPWSB10``): the endpoint
dispatches by subprotocol, and another transport registers its handler with
:meth:`WebSocketEndpoint.register`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WebSocketError, WSCloseCode, WSMsgType, web

from edb_local.hub import errors
from edb_local.hub.core import HubCore
from edb_local.hub.errors import HubError
from edb_local.hub.mqtt.connection import MqttConnection

log = logging.getLogger("edb_local.hub.websocket")

WEBSOCKET_PATH = "/$iothub/websocket"
MQTT_SUBPROTOCOL = "mqtt"
_CLOSE_WAIT_SECS = 2.0
#: a subprotocol's handler: the request (upgrade not yet done) -> the prepared WebSocketResponse
SubprotocolHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class WebSocketTransport(asyncio.Transport):
    """What :class:`MqttConnection` writes to: buffered, sent in order as binary messages by one task."""

    def __init__(self, ws: web.WebSocketResponse, peername: Any) -> None:
        super().__init__()
        self._ws = ws
        self._extra = {"peername": peername}
        self._queue: deque[bytes] = deque()
        self._pending = 0
        self._closing = False
        self._wake = asyncio.Event()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing:
            return
        self._queue.append(bytes(data))
        self._pending += len(data)
        self._wake.set()

    def get_write_buffer_size(self) -> int:
        return self._pending

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True
        self._wake.set()

    def abort(self) -> None:
        self.close()

    async def run_writer(self) -> None:
        """Send what was written; after close(), flush and close the WebSocket."""
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._queue:
                    data = self._queue.popleft()
                    self._pending -= len(data)
                    await self._ws.send_bytes(data)
                if self._closing:
                    return
        except (ConnectionError, RuntimeError):
            self._closing = True   # the peer went away; the reader sees it too
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), _CLOSE_WAIT_SECS)


class WebSocketEndpoint:
    """``GET /$iothub/websocket``: checks the upgrade and dispatches by the offered subprotocol."""

    def __init__(self, core: HubCore, connections: set[MqttConnection]) -> None:
        self.core = core
        self._connections = connections
        self._handlers: dict[str, SubprotocolHandler] = {MQTT_SUBPROTOCOL: self._mqtt}

    def register(self, subprotocol: str, handler: SubprotocolHandler) -> None:
        self._handlers[subprotocol] = handler

    def add_route(self, app: web.Application) -> None:
        app.router.add_get(WEBSOCKET_PATH, self.handle)

    def _refuse(self, request: web.Request, detail: str) -> HubError:
        self.core.refuse(errors.WS_UPGRADE_REFUSED, f"websocket {request.remote}", detail)
        return HubError(f"not a usable WebSocket upgrade: {detail}", code=errors.WS_UPGRADE_REFUSED)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        probe = web.WebSocketResponse(protocols=tuple(self._handlers))
        ready = probe.can_prepare(request)
        if not ready.ok:
            raise self._refuse(request, "no WebSocket upgrade headers")
        if ready.protocol is None:
            offered = request.headers.get("Sec-WebSocket-Protocol", "")[:80]
            raise self._refuse(request, f"subprotocol {offered!r} (supported: {', '.join(self._handlers)})")
        return await self._handlers[ready.protocol](request)

    async def _mqtt(self, request: web.Request) -> web.StreamResponse:
        # a WebSocket message carries at least one MQTT packet; allow a whole packet plus framing
        ws = web.WebSocketResponse(protocols=(MQTT_SUBPROTOCOL,), max_msg_size=self.core.config.max_packet_bytes + 16,
                                   autoping=True)
        await ws.prepare(request)
        peer = request.transport.get_extra_info("peername") if request.transport is not None else None
        transport = WebSocketTransport(ws, peer)
        connection = MqttConnection(self.core, self._connections)
        connection.connection_made(transport)
        writer = asyncio.create_task(transport.run_writer())
        try:
            async for message in ws:
                if message.type == WSMsgType.BINARY:
                    connection.data_received(message.data)
                elif message.type == WSMsgType.TEXT:
                    self._drop(connection, errors.MQTT_MALFORMED, "text WebSocket message (MQTT needs binary)")
                elif message.type == WSMsgType.ERROR:
                    exc = ws.exception()
                    too_big = isinstance(exc, WebSocketError) and exc.code == WSCloseCode.MESSAGE_TOO_BIG
                    self._drop(connection, errors.MQTT_OVERSIZED if too_big else errors.MQTT_MALFORMED,
                               f"WebSocket error: {type(exc).__name__}")
                if connection.closed:
                    break
        finally:
            connection.close()
            connection.connection_lost(None)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer, _CLOSE_WAIT_SECS + 1)
            if not writer.done():
                writer.cancel()
        return ws

    def _drop(self, connection: MqttConnection, code: str, detail: str) -> None:
        self.core.refuse(code, connection.who, detail)
        connection.close()
