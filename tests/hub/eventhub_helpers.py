"""Helpers for the Event Hub-compatible endpoint tests (a plain module: tests/ has no packages):
receiving with the real azure-eventhub consumer, and a raw AMQP client for hostile-input tests
(the SDKs cannot send malformed or unauthenticated traffic)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import threading
import time
import uuid
from typing import Any

from azure.eventhub import EventData, EventHubConsumerClient
from azure.eventhub._pyamqp.endpoints import Source, Target
from azure.eventhub._pyamqp.message import Message, Properties
from azure.eventhub._pyamqp.performatives import (
    AttachFrame,
    BeginFrame,
    FlowFrame,
    OpenFrame,
    SASLInit,
    TransferFrame,
)

from edb_local.hub import HubThread
from edb_local.hub.amqp import codec


def consumer(hub: HubThread, ca_path: str, group: str = "$Default", **kwargs: Any) -> EventHubConsumerClient:
    return EventHubConsumerClient.from_connection_string(hub.config.eventhub_connection_string, group,
                                                         connection_verify=ca_path, **kwargs)


def receive(client: EventHubConsumerClient, count: int, *, start: Any = "-1", inclusive: bool = False,
            partition_id: str | None = None, timeout: float = 30.0,
            errors: list[BaseException] | None = None) -> list[EventData]:
    """Receive until ``count`` events arrived (or ``timeout``), then close the client."""
    got: list[EventData] = []
    done = threading.Event()

    def on_event(_context: Any, event: EventData | None) -> None:
        if event is not None:
            got.append(event)
            if len(got) >= count:
                done.set()

    def on_error(_context: Any, error: BaseException) -> None:
        if errors is not None:
            errors.append(error)
            done.set()

    kwargs: dict[str, Any] = {"on_event": on_event, "on_error": on_error, "starting_position": start,
                              "starting_position_inclusive": inclusive, "max_wait_time": 0.5}
    if partition_id is not None:
        kwargs["partition_id"] = partition_id
    worker = threading.Thread(target=client.receive, kwargs=kwargs, daemon=True)
    worker.start()
    done.wait(timeout)
    client.close()
    worker.join(5)
    return got


class RawAmqp:
    """A TLS socket speaking AMQP frames built with the same codec the server uses."""

    def __init__(self, hub: HubThread, ca_path: str) -> None:
        context = ssl.create_default_context(cafile=ca_path)
        raw = socket.create_connection((hub.config.address, hub.config.amqp_port), timeout=10)
        self.sock: Any = context.wrap_socket(raw, server_hostname=hub.config.address)
        self.buffer = bytearray()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self) -> bytes:
        return bytes(self.sock.recv(65536))

    def frame(self, performative: Any, channel: int = 0, kind: bytes = codec.AMQP_FRAME) -> None:
        self.send(codec.frame_bytes(channel, performative, kind))

    def read_exact(self, size: int) -> bytes:
        while len(self.buffer) < size:
            chunk = self.recv()
            if not chunk:
                raise ConnectionError("closed")
            self.buffer += chunk
        data, self.buffer = bytes(self.buffer[:size]), self.buffer[size:]
        return data

    def read_frame(self) -> codec.Frame:
        while True:
            split = codec.split_frame(self.buffer, 1 << 24)
            if split is not None:
                frame, size = split
                del self.buffer[:size]
                if frame.code is not None:
                    return frame
                continue
            chunk = self.recv()
            if not chunk:
                raise ConnectionError("closed")
            self.buffer += chunk

    def until(self, code: int) -> codec.Frame:
        while True:
            frame = self.read_frame()
            if frame.code == code:
                return frame

    def closed(self) -> bool:
        """True once the server closed the socket (after reading what is left)."""
        try:
            while True:
                if not self.recv():
                    return True
        except (ConnectionError, ssl.SSLError, OSError):
            return True

    def sasl(self, mechanism: bytes, response: bytes | None = None) -> int:
        self.send(codec.SASL_HEADER)
        assert self.read_exact(8) == codec.SASL_HEADER
        self.until(codec.SASL_MECHANISMS)
        self.frame(SASLInit(mechanism=mechanism, initial_response=response, hostname=None), kind=codec.SASL_FRAME)
        outcome = self.until(codec.SASL_OUTCOME)
        return int(outcome.fields[0])

    def open_session(self) -> None:
        assert self.sasl(b"ANONYMOUS") == 0
        self.send(codec.AMQP_HEADER)
        assert self.read_exact(8) == codec.AMQP_HEADER
        self.frame(OpenFrame(container_id="raw", hostname=None, max_frame_size=1 << 20, channel_max=4,
                             idle_timeout=None, outgoing_locales=None, incoming_locales=None,
                             offered_capabilities=None, desired_capabilities=None, properties=None))
        self.until(codec.OPEN)
        self.frame(BeginFrame(remote_channel=None, next_outgoing_id=0, incoming_window=65536,
                              outgoing_window=65536, handle_max=16, offered_capabilities=None,
                              desired_capabilities=None, properties=None))
        self.until(codec.BEGIN)

    def attach(self, handle: int, address: str, *, receiver: bool) -> None:
        self.frame(AttachFrame(name=f"link-{handle}", handle=handle, role=receiver, send_settle_mode=1,
                               rcv_settle_mode=0, source=Source(address=address), target=Target(address=address),
                               unsettled=None, incomplete_unsettled=False,
                               initial_delivery_count=None if receiver else 0, max_message_size=None,
                               offered_capabilities=None, desired_capabilities=None, properties=None))

    def flow(self, handle: int, credit: int) -> None:
        self.frame(FlowFrame(next_incoming_id=0, incoming_window=1 << 20, next_outgoing_id=0, outgoing_window=65536,
                             handle=handle, delivery_count=0, link_credit=credit, available=None, drain=False,
                             echo=False, properties=None))

    def put_token(self, token: str, audience: str) -> int:
        """CBS put-token on handles 0 (sender) and 1 (receiver); returns the status code."""
        self.attach(0, "$cbs", receiver=False)
        self.attach(1, "$cbs", receiver=True)
        self.flow(1, 10)
        request = Message(properties=Properties(message_id=str(uuid.uuid4())), value=token,
                          application_properties={"operation": "put-token", "type": "servicebus.windows.net:sastoken",
                                                  "name": audience})
        self.frame(TransferFrame(handle=0, delivery_id=0, delivery_tag=b"\x00", message_format=0, settled=True,
                                 more=False, rcv_settle_mode=None, state=None, resume=False, aborted=False,
                                 batchable=False, payload=codec.message_bytes(request)))
        while True:
            frame = self.until(codec.TRANSFER)
            if frame.fields[0] == 1:
                reply = codec.decode_message(bytes(frame.fields[-1]))
                props = reply.application_properties or {}
                return int(props.get(b"status-code", props.get("status-code", 0)))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class RawAmqpWs(RawAmqp):
    """The same over ``wss://ADDRESS:443/$servicebus/websocket`` (subprotocol AMQPWSB10), with
    websocket-client (the library azure-eventhub's sync WebSocket transport uses): each ``send`` is
    one binary message, received messages are concatenated into one byte stream."""

    def __init__(self, hub: HubThread, ca_path: str, path: str = "/$servicebus/websocket") -> None:
        import websocket

        self.sock = websocket.create_connection(f"wss://{hub.config.address}:{hub.config.https_port}{path}",
                                                subprotocols=["AMQPWSB10"], timeout=10,
                                                sslopt={"ca_certs": ca_path})
        self.buffer = bytearray()

    def send(self, data: bytes) -> None:
        self.sock.send_binary(data)

    def recv(self) -> bytes:
        import websocket

        try:
            data = self.sock.recv()
        except websocket.WebSocketConnectionClosedException:
            return b""
        return data.encode() if isinstance(data, str) else bytes(data)


async def read_numbered(client: Any, partition: str, count: int, start: Any, seen: list[int],
                        checkpoint: dict[str, Any]) -> None:
    """Receive with the async consumer ``client`` until ``seen`` holds ``count`` bodies' ``n``; the
    last event's offset goes to ``checkpoint["offset"]``; the client is closed afterwards."""
    done = asyncio.Event()

    async def on_event(_context: Any, event: Any) -> None:
        if event is None or done.is_set():
            return
        seen.append(json.loads(event.body_as_str())["n"])
        checkpoint["offset"] = event.offset
        if len(seen) >= count:
            done.set()

    task = asyncio.create_task(client.receive(on_event=on_event, partition_id=partition,
                                              starting_position=start, max_wait_time=0.5))
    try:
        await asyncio.wait_for(done.wait(), 30)
    finally:
        await client.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def wait_for(probe: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    value = probe()
    while not value and time.monotonic() < deadline:
        time.sleep(0.05)
        value = probe()
    return value
