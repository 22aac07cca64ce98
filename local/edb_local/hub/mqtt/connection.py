"""One MQTT client connection (asyncio protocol over TLS): framing, the CONNECT handshake,
keep-alive, and packet dispatch to the hub core. A protocol violation closes this connection
only; the refusal is recorded with its code."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from edb_local.hub import errors
from edb_local.hub.core import HubCore
from edb_local.hub.delivery import QueuedMessage
from edb_local.hub.errors import HubError
from edb_local.hub.mqtt.codec import (
    ConnAck,
    Connect,
    ConnectReturnCode,
    Disconnect,
    MqttCodecError,
    MqttDecoder,
    Packet,
    PingReq,
    PingResp,
    PubAck,
    Publish,
    SubAck,
    Subscribe,
    UnsubAck,
    Unsubscribe,
    encode,
    encode_publish,
)
from edb_local.hub.topics import Identity

log = logging.getLogger("edb_local.hub.mqtt")
MAX_WRITE_BUFFER = 16 * 1024 * 1024

_CONNACK_FOR = {
    errors.AUTH_BAD_CLIENT_ID: ConnectReturnCode.IDENTIFIER_REJECTED,
    errors.AUTH_BAD_USERNAME: ConnectReturnCode.BAD_USERNAME_OR_PASSWORD,
    errors.AUTH_BAD_TOKEN: ConnectReturnCode.BAD_USERNAME_OR_PASSWORD,
}


class MqttConnection(asyncio.Protocol):
    def __init__(self, core: HubCore, registry: set[MqttConnection]) -> None:
        self.core = core
        self._registry = registry
        self.decoder = MqttDecoder(core.config.max_packet_bytes)
        self.transport: asyncio.Transport | None = None
        self.identity: Identity = Identity("?")
        self.subscriptions: dict[str, int] = {}
        self.clean_session = True
        self.connected = False
        self.closed = False
        self.keep_alive = 0
        self._last_rx = 0.0
        self._next_packet_id = 0
        self._timer: asyncio.TimerHandle | None = None
        self._expiry_timer: asyncio.TimerHandle | None = None
        self._peer = "?"
        self._loop = asyncio.get_running_loop()
        self._out: list[bytes] = []

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self._registry.add(self)
        self._last_rx = self._loop.time()
        self._schedule(self.core.config.connect_timeout_secs, self._connect_deadline)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self._last_rx = self._loop.time()
        try:
            packets = self.decoder.feed(data)
        except MqttCodecError as exc:
            self._refuse(exc.code, exc.message)
            return
        for packet in packets:
            if self.closed:
                return
            try:
                self._handle(packet)
            except HubError as exc:
                self._refuse(exc.code, exc.message)
            except Exception:  # a bug must cost this connection only, never the hub
                log.exception("internal error handling %s from %s", type(packet).__name__, self.who)
                self._refuse(errors.INTERNAL, "internal error")

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._registry.discard(self)
        for timer in (self._timer, self._expiry_timer):
            if timer is not None:
                timer.cancel()
        if self.connected:
            self.core.detach(self)

    # -- dispatch ----------------------------------------------------------------------------

    @property
    def who(self) -> str:
        return self.identity.client_id if self.connected else f"peer {self._peer}"

    def _refuse(self, code: str, detail: str) -> None:
        self.core.refuse(code, self.who, detail)
        self.close()

    def _handle(self, packet: Packet) -> None:
        if not self.connected:
            if isinstance(packet, Connect):
                self._on_connect(packet)
            else:
                self._refuse(errors.MQTT_UNEXPECTED_PACKET, f"{type(packet).__name__} before CONNECT")
            return
        if isinstance(packet, Publish):
            if not self.core.on_publish(self, packet):
                self.close()
        elif isinstance(packet, PubAck):
            self.core.on_puback(self, packet.packet_id)
        elif isinstance(packet, Subscribe):
            codes = self.core.subscribe(self, packet.topics)
            self._write(encode(SubAck(packet.packet_id, tuple(codes))))
            self._loop.call_soon(self.core.pump, self.identity)
        elif isinstance(packet, Unsubscribe):
            self.core.unsubscribe(self, packet.topics)
            self._write(encode(UnsubAck(packet.packet_id)))
        elif isinstance(packet, PingReq):
            self._write(encode(PingResp()))
        elif isinstance(packet, Disconnect):
            self.close()
        else:
            self._refuse(errors.MQTT_UNEXPECTED_PACKET, f"unexpected {type(packet).__name__}")

    def _on_connect(self, connect: Connect) -> None:
        if connect.protocol_level != 4:
            self._write(encode(ConnAck(ConnectReturnCode.UNACCEPTABLE_PROTOCOL_VERSION)))
            self._refuse(errors.MQTT_PROTOCOL_VERSION, f"protocol level {connect.protocol_level}")
            return
        try:
            identity, expiry = self.core.authenticate_device(connect)
        except HubError as exc:
            code = _CONNACK_FOR.get(exc.code, ConnectReturnCode.NOT_AUTHORIZED)
            self._write(encode(ConnAck(code)))
            self.core.refuse(exc.code, f"{connect.client_id[:128]!r} from {self._peer}", exc.message)
            self.close()
            return
        self.identity = identity
        self.clean_session = connect.clean_session
        self.keep_alive = connect.keep_alive
        self.connected = True
        present = self.core.attach(self)
        self._write(encode(ConnAck(ConnectReturnCode.ACCEPTED, present)))
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.keep_alive:
            self._schedule(self.keep_alive * 0.75, self._check_keep_alive)
        # IoT Hub drops a connection when its token expires; the SDK renews before that by reconnecting
        self._expiry_timer = self._loop.call_later(max(0.0, expiry - time.time()), self._token_expired)

    def _token_expired(self) -> None:
        if not self.closed:
            self._refuse(errors.AUTH_TOKEN_EXPIRED, "SAS token expired during the connection")

    # -- timers ------------------------------------------------------------------------------

    def _schedule(self, delay: float, callback: Callable[[], None]) -> None:
        self._timer = self._loop.call_later(delay, callback)

    def _connect_deadline(self) -> None:
        if not self.connected and not self.closed:
            self._refuse(errors.MQTT_UNEXPECTED_PACKET, "no CONNECT in time")

    def _check_keep_alive(self) -> None:
        if self.closed:
            return
        if self._loop.time() - self._last_rx > self.keep_alive * 1.5:
            self._refuse(errors.MQTT_KEEPALIVE_TIMEOUT, f"silent for more than 1.5 x {self.keep_alive} s")
            return
        self._schedule(self.keep_alive * 0.75, self._check_keep_alive)

    # -- ClientSession (what the core calls) -------------------------------------------------

    def _write(self, data: bytes) -> None:
        # Packets written in one event-loop turn leave in one TLS write: a burst of PUBACKs and
        # deliveries costs one record and one send() instead of one each.
        if self.closed or self.transport is None:
            return
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(data)

    def _flush(self) -> None:
        if self._out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self._out))
            if self.transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
                # a client that asks (twin GETs, say) but never reads must not grow our memory
                self._out.clear()
                self._refuse(errors.MQTT_SLOW_CONSUMER, "stopped reading; write buffer over the limit")
                return
        self._out.clear()

    def _packet_id(self) -> int:
        inflight = self.core.inflight_packets(self.identity)
        while True:
            self._next_packet_id = self._next_packet_id % 0xFFFF + 1
            if self._next_packet_id not in inflight:
                return self._next_packet_id

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> int | None:
        packet_id = self._packet_id() if qos else None
        self._write(encode_publish(topic, payload, qos, packet_id))
        return packet_id

    def send_input(self, message: QueuedMessage, qos: int) -> int | None:
        packet_id = self._packet_id() if qos else None
        topic = self.core.input_topic(self.identity, message)
        self._write(encode_publish(topic, message.body, qos, packet_id, dup=message.dup and qos > 0))
        return packet_id

    def send_puback(self, packet_id: int) -> None:
        self._write(encode(PubAck(packet_id)))

    def close(self) -> None:
        if not self.closed:
            self._flush()   # a CONNACK refusal or SUBACK written just before must still go out
            self.closed = True
            if self.transport is not None:
                self.transport.close()
