"""WebSockets on the HTTPS port, for clients that may only reach 443: one upgrade handler, one
transport adapter, and per protocol a :class:`WebSocketService` naming its paths, subprotocol and
message bound.

As IoT Hub has them:

- MQTT: ``GET /$iothub/websocket``, subprotocol ``mqtt`` (azure-iot-device ``websockets=True``, the
  Azure CLI's device commands): mqtt/websocket.py.
- AMQP (the Event Hub-compatible endpoint and the service's CBS and C2D): ``/$servicebus/websocket``
  (azure-eventhub's pyamqp) and ``/$servicebus/websocket/`` (uamqp-c, under azure-iot-hub),
  subprotocol ``AMQPWSB10``: amqp/websocket.py.

The protocol code is not repeated here: every binary WebSocket message is fed, as bytes of a
stream, to the same ``asyncio.Protocol`` the TLS listener uses, through :class:`WebSocketTransport`,
an ``asyncio.Transport`` whose writes leave as binary WebSocket messages, with the write-buffer
limits and ``pause_writing``/``resume_writing`` of asyncio's own transports. So authentication,
limits, deadlines, flow control and the write bounds are those of 8883 and 5671.

Refused before anything runs (``HUB_WS_UPGRADE_REFUSED``, HTTP 400, in the refusal log): a request
to a WebSocket path without a usable upgrade, a subprotocol that path does not serve, and an
upgrade to any other path. After the upgrade: a text message (both protocols are binary) closes
the connection with the service's malformed code, a message above the service's bound with its
oversized code (aiohttp stops reading it at the bound and closes with 1009).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import WebSocketError, WSCloseCode, WSMsgType, web

from edb_local.hub import errors
from edb_local.hub.core import HubCore
from edb_local.hub.errors import HubError

log = logging.getLogger("edb_local.hub.websocket")

_CLOSE_WAIT_SECS = 2.0
_DEFAULT_HIGH = 64 * 1024   # asyncio's default write-buffer high-water mark


class StreamProtocol(Protocol):
    """What a WebSocket service feeds: an asyncio protocol of a byte stream (MqttConnection,
    AmqpConnection) that can be closed and names its peer."""

    closed: bool

    @property
    def who(self) -> str: ...

    def connection_made(self, transport: asyncio.BaseTransport) -> None: ...

    def data_received(self, data: bytes) -> None: ...

    def connection_lost(self, exc: Exception | None) -> None: ...

    def pause_writing(self) -> None: ...

    def resume_writing(self) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class WebSocketService:
    """One protocol served over WebSockets."""

    subprotocol: str
    paths: tuple[str, ...]
    max_message: int                       # bytes per WebSocket message; above: oversized_code
    make: Callable[[], StreamProtocol]     # a fresh connection of the protocol
    malformed_code: str                    # a text message
    oversized_code: str                    # a message above max_message


class WebSocketTransport(asyncio.Transport):
    """What the protocol writes to: buffered, sent in order as binary messages by one task.

    The buffer counts bytes written and not yet handed to the socket; above the high-water mark
    the protocol's ``pause_writing`` is called, at or below the low-water mark ``resume_writing``,
    as asyncio's socket transports do."""

    def __init__(self, ws: web.WebSocketResponse, protocol: StreamProtocol, peername: Any,
                 subprotocol: str) -> None:
        super().__init__()
        self._ws = ws
        self._protocol = protocol
        self._extra = {"peername": peername, "subprotocol": subprotocol}
        self._queue: deque[bytes] = deque()
        self._pending = 0
        self._high = _DEFAULT_HIGH
        self._low = _DEFAULT_HIGH // 4
        self._paused = False
        self._closing = False
        self._wake = asyncio.Event()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = _DEFAULT_HIGH if high is None else high
        self._low = self._high // 4 if low is None else low
        if not 0 <= self._low <= self._high:
            raise ValueError(f"high ({self._high}) must be >= low ({self._low}) >= 0")
        self._check_pause()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing:
            return
        self._queue.append(bytes(data))
        self._pending += len(data)
        self._wake.set()
        self._check_pause()

    def _check_pause(self) -> None:
        if not self._paused and self._pending > self._high:
            self._paused = True
            self._protocol.pause_writing()

    def _check_resume(self) -> None:
        if self._paused and self._pending <= self._low:
            self._paused = False
            if not self._closing:
                self._protocol.resume_writing()

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
                    await self._ws.send_bytes(data)   # returns once the socket took it (drained)
                    self._pending -= len(data)
                    self._check_resume()
                if self._closing:
                    return
        except (ConnectionError, RuntimeError):
            self._closing = True   # the peer went away; the reader sees it too
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), _CLOSE_WAIT_SECS)


def _is_upgrade(request: web.Request) -> bool:
    return "websocket" in request.headers.get("Upgrade", "").lower()


class WebSocketEndpoint:
    """The WebSocket paths of the HTTPS listener: checks each upgrade and hands the socket to the
    service its path and subprotocol name. Installed as a middleware in front of the REST API's
    authentication (WebSocket clients authenticate inside their own protocol)."""

    def __init__(self, core: HubCore) -> None:
        self.core = core
        self._paths: dict[str, dict[str, WebSocketService]] = {}

    def register(self, service: WebSocketService) -> None:
        for path in service.paths:
            self._paths.setdefault(path, {})[service.subprotocol] = service

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(self._paths)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        services = self._paths.get(request.path)
        if services is not None:
            return await self.handle(request, services)
        if _is_upgrade(request):
            known = ", ".join(f"{p} ({', '.join(s)})" for p, s in self._paths.items())
            raise self._refuse(request, f"no WebSocket endpoint at {request.path[:80]!r} (served: {known})")
        response: web.StreamResponse = await handler(request)
        return response

    def _refuse(self, request: web.Request, detail: str) -> HubError:
        self.core.refuse(errors.WS_UPGRADE_REFUSED, f"websocket {request.remote}", detail)
        return HubError(f"not a usable WebSocket upgrade: {detail}", code=errors.WS_UPGRADE_REFUSED)

    async def handle(self, request: web.Request, services: dict[str, WebSocketService]) -> web.StreamResponse:
        probe = web.WebSocketResponse(protocols=tuple(services))
        ready = probe.can_prepare(request)
        if not ready.ok:
            raise self._refuse(request, "no WebSocket upgrade headers")
        if ready.protocol is None:
            offered = request.headers.get("Sec-WebSocket-Protocol", "")[:80]
            raise self._refuse(request, f"subprotocol {offered!r} on {request.path[:80]!r} "
                                        f"(supported there: {', '.join(services)})")
        return await self._serve(request, services[ready.protocol])

    async def _serve(self, request: web.Request, service: WebSocketService) -> web.StreamResponse:
        ws = web.WebSocketResponse(protocols=(service.subprotocol,), max_msg_size=service.max_message,
                                   autoping=True)
        await ws.prepare(request)
        peer = request.transport.get_extra_info("peername") if request.transport is not None else None
        connection = service.make()
        transport = WebSocketTransport(ws, connection, peer, service.subprotocol)
        connection.connection_made(transport)
        writer = asyncio.create_task(transport.run_writer())
        try:
            async for message in ws:
                if message.type == WSMsgType.BINARY:
                    connection.data_received(message.data)
                elif message.type == WSMsgType.TEXT:
                    self._drop(connection, service.malformed_code,
                               f"text WebSocket message ({service.subprotocol} needs binary)")
                elif message.type == WSMsgType.ERROR:
                    exc = ws.exception()
                    too_big = isinstance(exc, WebSocketError) and exc.code == WSCloseCode.MESSAGE_TOO_BIG
                    if too_big:
                        self._drop(connection, service.oversized_code,
                                   f"WebSocket message above {service.max_message} bytes")
                    else:
                        self._drop(connection, service.malformed_code, f"WebSocket error: {type(exc).__name__}")
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

    def _drop(self, connection: StreamProtocol, code: str, detail: str) -> None:
        self.core.refuse(code, connection.who, detail)
        connection.close()
