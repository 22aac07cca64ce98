"""One AMQP 1.0 connection (TLS already done by asyncio on 5671, or a WebSocket on 443 through
amqp/websocket.py): SASL, open, sessions, links, and the dispatch to the nodes: `$cbs`,
`$management`, event partitions, `/messages/devicebound`, `/messages/serviceBound/feedback`.

Flow control is the client's: we send event messages only within the link credit it grants, and
stop reading the log while the socket's write buffer is above its high-water mark
(``pause_writing``), so a consumer that does not read costs at most that buffer, never the hub's
memory, and the log itself stays on disk for whoever reads it later.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from azure.eventhub._pyamqp.endpoints import Source, Target
from azure.eventhub._pyamqp.error import AMQPError
from azure.eventhub._pyamqp.outcomes import Accepted, Rejected, Released
from azure.eventhub._pyamqp.performatives import (
    AttachFrame,
    BeginFrame,
    CloseFrame,
    DetachFrame,
    DispositionFrame,
    EndFrame,
    FlowFrame,
    OpenFrame,
    SASLMechanism,
    SASLOutcome,
)

from edb_local.hub import errors
from edb_local.hub.amqp import codec, fastcodec, servicebound
from edb_local.hub.amqp import errors as amqp_errors
from edb_local.hub.amqp.auth import Grant, normalise
from edb_local.hub.amqp.links import CREDIT_GRANTED, Link, Session, field_at, flow_credit
from edb_local.hub.amqp.nodes import reply, request_properties
from edb_local.hub.errors import HubError

if TYPE_CHECKING:
    from azure.eventhub._pyamqp.message import Message

    from edb_local.hub.amqp.endpoint import AmqpEndpoint

log = logging.getLogger("edb_local.hub.amqp")

MAX_FRAME = 256 * 1024           # what we announce and accept
MAX_NODE_MESSAGE = 64 * 1024     # a CBS or management request
MAX_SESSIONS = 16
MAX_LINKS = 64                   # per session
OPEN_TIMEOUT = 10.0              # TLS done -> open received
AUTH_TIMEOUT = 60.0              # open -> at least one accepted token
WRITE_HIGH = 4 * 1024 * 1024     # per-connection write buffer before we stop reading the log
_HEARTBEAT = b"\x00\x00\x00\x08\x02\x00\x00\x00"
_SERVICEBOUND_NODES = frozenset(servicebound.NODES.values())
_SASL_MECHANISMS = [b"MSSBCBS", b"PLAIN", b"ANONYMOUS"]   # uamqp-c needs MSSBCBS in the array


class AmqpConnection(asyncio.Protocol):
    def __init__(self, endpoint: AmqpEndpoint) -> None:
        self.endpoint = endpoint
        self.transport: asyncio.Transport | None = None
        self.peer = "amqp:?"
        self.phase = "sasl-header"
        self.buffer = bytearray()
        self.sessions: dict[int, Session] = {}
        self.grants: list[Grant] = []
        self.paused = False
        self.closed = False
        self.peer_max_frame = MAX_FRAME
        self._timers: list[asyncio.TimerHandle] = []

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH)
        peer = transport.get_extra_info("peername")
        scheme = "amqp-ws" if transport.get_extra_info("subprotocol") else "amqp"   # 443 or 5671
        self.peer = f"{scheme}:{peer[0]}:{peer[1]}" if peer else f"{scheme}:?"
        self.endpoint.connections.add(self)
        loop = asyncio.get_running_loop()
        self._timers.append(loop.call_later(OPEN_TIMEOUT, self._check_opened))

    @property
    def who(self) -> str:
        return self.peer

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for timer in self._timers:
            timer.cancel()
        self.endpoint.connections.discard(self)
        for session in self.sessions.values():
            for link in session.links.values():
                self._drop_link(link)
        self.sessions.clear()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.pump_all()
        self.pump_all(servicebound=True)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.buffer += data
        try:
            self._process()
        except HubError as exc:
            self._fail(exc.code, exc.message)
        except Exception as exc:  # a bug: costs this connection only
            log.exception("AMQP connection %s failed", self.peer)
            self._fail(errors.INTERNAL, type(exc).__name__)

    # -- framing -----------------------------------------------------------------------------

    def _process(self) -> None:
        while not self.closed:
            if self.phase in ("sasl-header", "amqp-header"):
                if len(self.buffer) < 8:
                    return
                header, self.buffer = bytes(self.buffer[:8]), self.buffer[8:]
                self._on_header(header)
                continue
            split = codec.split_frame(self.buffer, MAX_FRAME)
            if split is None:
                if len(self.buffer) > MAX_FRAME + 8:
                    raise HubError("frame too large", code=amqp_errors.AMQP_FRAME_TOO_LARGE)
                return
            frame, size = split
            del self.buffer[:size]
            if frame.code is None:
                continue   # heartbeat
            if self.phase == "sasl":
                self._on_sasl(frame)
            else:
                self._on_frame(frame)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def _send(self, channel: int, performative: Any, kind: bytes = codec.AMQP_FRAME) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s -> [%d] %r", self.peer, channel, performative)
        self._write(codec.frame_bytes(channel, performative, kind))

    def _fail(self, code: str, detail: str) -> None:
        """Close the connection with an AMQP error naming the code (after the AMQP header only;
        during SASL the socket is just closed)."""
        self.endpoint.core.refuse(code, self.peer, detail)
        if self.phase in ("open", "opened"):
            self._send(0, CloseFrame(error=AMQPError(condition=amqp_errors.condition_of(code).encode(),
                                                     description=f"{code}: {detail}"[:256])))
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def _check_opened(self) -> None:
        if self.phase != "opened" and not self.closed:
            self._fail(amqp_errors.AMQP_IDLE, "no open in time")

    def _check_authorised(self) -> None:
        if not self.grants and not self.closed:
            self._fail(amqp_errors.AMQP_IDLE, "no accepted token in time")

    # -- SASL and open -----------------------------------------------------------------------

    def _on_header(self, header: bytes) -> None:
        if self.phase == "sasl-header":
            if header != codec.SASL_HEADER:
                # no SASL layer means no identity: answer with the header we speak, then close
                self._write(codec.SASL_HEADER)
                self.endpoint.core.refuse(amqp_errors.AMQP_SASL_REFUSED, self.peer, "no SASL layer")
                self.close()
                return
            self._write(codec.SASL_HEADER)
            self._send(0, SASLMechanism(sasl_server_mechanisms=_SASL_MECHANISMS), codec.SASL_FRAME)
            self.phase = "sasl"
        else:
            if header != codec.AMQP_HEADER:
                self._write(codec.AMQP_HEADER)
                self.close()
                return
            self._write(codec.AMQP_HEADER)
            self.phase = "open"

    def _on_sasl(self, frame: codec.Frame) -> None:
        if frame.code != codec.SASL_INIT:
            raise HubError("expected sasl-init", code=amqp_errors.AMQP_SASL_REFUSED)
        mechanism = codec.text(field_at(frame.fields, 0)) or ""
        ok = mechanism in ("MSSBCBS", "ANONYMOUS")
        if mechanism == "PLAIN":
            # uamqp's probe and the azure-iot CLI: user `<policy>@sas.root.<hub>`, password a SAS token
            response = bytes(field_at(frame.fields, 1) or b"")
            parts = response.split(b"\x00")
            try:
                self._grant(parts[2].decode("utf-8") if len(parts) == 3 else "")
                ok = True
            except HubError as exc:
                self.endpoint.core.refuse(exc.code, self.peer, f"SASL PLAIN: {exc.message}")
        if not ok:
            self.endpoint.core.refuse(amqp_errors.AMQP_SASL_REFUSED, self.peer, f"mechanism {mechanism[:32]!r}")
        self._send(0, SASLOutcome(code=0 if ok else 1, additional_data=None), codec.SASL_FRAME)
        if ok:
            self.phase = "amqp-header"
        else:
            self.close()

    def _grant(self, token: str) -> Grant:
        grant = self.endpoint.verify_token(token)
        self.grants.append(grant)
        if len(self.grants) > 32:
            del self.grants[0]
        return grant

    def authorised(self, resource: str, *, event_hub: bool) -> bool:
        now = time.time()
        return any(g.covers(resource, event_hub=event_hub, now=now) for g in self.grants)

    # -- performatives -----------------------------------------------------------------------

    def _on_frame(self, frame: codec.Frame) -> None:
        code, fields, channel = frame.code, frame.fields, frame.channel
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s <- [%d] 0x%x %r", self.peer, channel, code or 0, fields)
        if self.phase == "open":
            if code != codec.OPEN:
                raise HubError("expected open", code=amqp_errors.AMQP_MALFORMED)
            self._on_open(fields)
            return
        if code == codec.CLOSE:
            self._send(0, CloseFrame(error=None))
            self.close()
            return
        if code == codec.BEGIN:
            self._on_begin(channel, fields)
            return
        session = self.sessions.get(channel)
        if session is None:
            # pyamqp may detach its links after it ended their session: nothing left to answer
            if code in (codec.DETACH, codec.END, codec.FLOW, codec.DISPOSITION):
                return
            raise HubError(f"frame 0x{code:x} on unknown channel {channel}", code=amqp_errors.AMQP_MALFORMED)
        if code == codec.ATTACH:
            self._on_attach(session, fields)
        elif code == codec.FLOW:
            self._on_flow(session, fields)
        elif code == codec.TRANSFER:
            self._on_transfer(session, fields)
        elif code == codec.DETACH:
            self._on_detach(session, fields)
        elif code == codec.END:
            for link in session.links.values():
                self._drop_link(link)
            del self.sessions[channel]
            self._send(channel, EndFrame(error=None))
        elif code == codec.DISPOSITION:
            self._on_disposition(session, fields)
        else:
            raise HubError(f"unexpected performative 0x{code:x}", code=amqp_errors.AMQP_MALFORMED)

    def _on_open(self, fields: list[Any]) -> None:
        self.peer_max_frame = max(codec.MIN_FRAME, min(int(field_at(fields, 2) or MAX_FRAME), MAX_FRAME))
        idle_ms = field_at(fields, 4)
        self._send(0, OpenFrame(container_id=self.endpoint.container_id, hostname=None, max_frame_size=MAX_FRAME,
                                channel_max=MAX_SESSIONS - 1, idle_timeout=None, outgoing_locales=None,
                                incoming_locales=None, offered_capabilities=None, desired_capabilities=None,
                                properties=None))
        self.phase = "opened"
        loop = asyncio.get_running_loop()
        if not self.grants:
            self._timers.append(loop.call_later(AUTH_TIMEOUT, self._check_authorised))
        if idle_ms:
            self._heartbeat(max(0.5, int(idle_ms) / 2000))

    def _heartbeat(self, every: float) -> None:
        if not self.closed:
            self._write(_HEARTBEAT)
            self._timers.append(asyncio.get_running_loop().call_later(every, self._heartbeat, every))
            if len(self._timers) > 8:
                self._timers = [t for t in self._timers if not t.cancelled()][-4:]

    def _on_begin(self, channel: int, fields: list[Any]) -> None:
        if channel in self.sessions or len(self.sessions) >= MAX_SESSIONS:
            raise HubError("too many sessions", code=amqp_errors.AMQP_TOO_MANY_LINKS)
        self.sessions[channel] = Session(channel)
        self._send(channel, BeginFrame(remote_channel=channel, next_outgoing_id=0, incoming_window=65536,
                                       outgoing_window=65536, handle_max=MAX_LINKS - 1, offered_capabilities=None,
                                       desired_capabilities=None, properties=None))

    def _on_attach(self, session: Session, fields: list[Any]) -> None:
        name = codec.text(field_at(fields, 0)) or ""
        handle = int(field_at(fields, 1))
        client_receives = bool(field_at(fields, 2))
        source = field_at(fields, 5) or []
        target = field_at(fields, 6) or []
        source_address = codec.text(field_at(source, 0))
        target_address = codec.text(field_at(target, 0))
        address = (source_address if client_receives else target_address) or ""
        link = Link(name=name, handle=handle, we_send=client_receives, address=address, node="",
                    max_message=MAX_NODE_MESSAGE)
        refusal: HubError | None = None
        if handle in session.links or len(session.links) >= MAX_LINKS:
            refusal = HubError("too many links", code=amqp_errors.AMQP_TOO_MANY_LINKS)
        else:
            try:
                self.endpoint.classify_link(self, link, field_at(source, 7), field_at(fields, 13))
            except HubError as exc:
                refusal = exc
        self._send(session.channel, AttachFrame(
            name=name, handle=handle, role=not client_receives, send_settle_mode=field_at(fields, 3),
            rcv_settle_mode=field_at(fields, 4),
            source=Source(address=source_address),  # type: ignore[call-arg]
            target=Target(address=target_address),  # type: ignore[call-arg]
            unsettled=None, incomplete_unsettled=False,
            initial_delivery_count=0 if client_receives else None, max_message_size=link.max_message,
            offered_capabilities=None, desired_capabilities=None, properties=None))
        if refusal is not None:
            info = refusal.info if isinstance(refusal, amqp_errors.LinkRedirect) else None
            if info is None:
                self.endpoint.core.refuse(refusal.code, self.peer,
                                          f"attach {normalise(address)[:120]!r}: {refusal.message}")
            self._send(session.channel, DetachFrame(handle=handle, closed=True, error=AMQPError(
                condition=amqp_errors.condition_of(refusal.code).encode(),
                description=f"{refusal.code}: {refusal.message}"[:256], info=info)))
            return
        session.links[handle] = link
        link.send_settled = field_at(fields, 3) == 1      # snd-settle-mode settled: at most once
        if link.node == "events":
            self.endpoint.add_receiver(self, session, link)
        if not link.we_send:
            link.granted = CREDIT_GRANTED
            self._send_flow(session, link)

    def _send_flow(self, session: Session, link: Link, *, drain: bool = False) -> None:
        self._send(session.channel, FlowFrame(
            next_incoming_id=0, incoming_window=65536, next_outgoing_id=session.next_outgoing_id,
            outgoing_window=65536, handle=link.handle, delivery_count=link.delivery_count,
            link_credit=link.credit if link.we_send else link.granted, available=0 if link.we_send else None,
            drain=drain, echo=False, properties=None))

    def _on_flow(self, session: Session, fields: list[Any]) -> None:
        handle = field_at(fields, 4)
        link = session.links.get(handle) if handle is not None else None
        if link is None or not link.we_send:
            return
        link.credit = flow_credit(link, field_at(fields, 5), int(field_at(fields, 6) or 0))
        if link.node == "events":
            self.pump(session, link)
        elif link.node in _SERVICEBOUND_NODES:
            self.pump_servicebound(session, link)
        if field_at(fields, 8) and link.credit > 0:    # drain: use up the credit we could not fill
            link.delivery_count += link.credit
            link.credit = 0
            self._send_flow(session, link, drain=True)
        elif field_at(fields, 9):
            self._send_flow(session, link)

    def _on_transfer(self, session: Session, fields: list[Any]) -> None:
        handle = field_at(fields, 0)
        link = session.links.get(handle) if handle is not None else None
        if link is None or link.we_send:
            raise HubError("transfer on a link we did not attach as receiver", code=amqp_errors.AMQP_MALFORMED)
        payload = bytes(fields[-1]) if fields else b""
        if link.partial is None:
            link.partial = bytearray()
            link.partial_id = field_at(fields, 1)
            link.partial_settled = bool(field_at(fields, 4))
            link.granted -= 1
            link.delivery_count += 1
            if link.granted < CREDIT_GRANTED // 2:
                link.granted = CREDIT_GRANTED
                self._send_flow(session, link)
        link.partial += payload
        if len(link.partial) > link.max_message:
            link.partial = None
            self._detach(session, link, amqp_errors.AMQP_MESSAGE_TOO_LARGE,
                         f"delivery above the link's {link.max_message}-byte limit")
            return
        if field_at(fields, 5):           # more frames follow
            return
        body, delivery_id, settled = bytes(link.partial), link.partial_id, link.partial_settled
        link.partial = None
        if field_at(fields, 9):           # aborted
            return
        state: Any = Accepted()
        answer: Message | None = None
        try:
            message = codec.decode_message(body)
            answer = self._on_message(link, message)
        except HubError as exc:
            self.endpoint.core.refuse(exc.code, self.peer, f"{link.node}: {exc.message}")
            state = Rejected(error=AMQPError(condition=amqp_errors.condition_of(exc.code).encode(),
                                             description=f"{exc.code}: {exc.message}"[:256]))
        if not settled and delivery_id is not None:
            self._send(session.channel, DispositionFrame(role=True, first=delivery_id, last=delivery_id,
                                                         settled=True, state=state, batchable=None))
        # the reply goes after the disposition, as the service orders them: uamqp-c frees the
        # pending request when the reply arrives and reads it again when the request settles
        sender = session.node_sender(link.node) if answer is not None else None
        if answer is not None and sender is not None:
            self.send_message(session, sender, codec.message_bytes(answer))

    def _on_detach(self, session: Session, fields: list[Any]) -> None:
        link = session.links.pop(field_at(fields, 0), None)
        if link is not None:
            self._drop_link(link)
            self._send(session.channel, DetachFrame(handle=link.handle, closed=True, error=None))

    def _detach(self, session: Session, link: Link, code: str, detail: str) -> None:
        self.endpoint.core.refuse(code, self.peer, f"{link.node}: {detail}")
        session.links.pop(link.handle, None)
        self._drop_link(link)
        self._send(session.channel, DetachFrame(handle=link.handle, closed=True, error=AMQPError(
            condition=amqp_errors.condition_of(code).encode(), description=f"{code}: {detail}"[:256])))

    def steal(self, session: Session, link: Link) -> None:
        """A receiver with a higher epoch took this one's partition (Event Hubs: amqp:link:stolen)."""
        session.links.pop(link.handle, None)
        self._drop_link(link)
        self._send(session.channel, DetachFrame(handle=link.handle, closed=True, error=AMQPError(
            condition=b"amqp:link:stolen", description="a receiver with a higher epoch took this partition")))

    def _drop_link(self, link: Link) -> None:
        link.closed = True
        if link.node == "events":
            self.endpoint.remove_receiver(link)
        unsettled, link.unsettled = link.unsettled, {}
        for token in unsettled.values():    # never settled: received again later
            self.endpoint.settle_servicebound(self, link, token, complete=False)

    def _on_disposition(self, session: Session, fields: list[Any]) -> None:
        """The receiver's outcome for deliveries of a service-bound source (the deliveries of other
        links are pre-settled: nothing to do)."""
        if not field_at(fields, 0):
            return          # from a sender: we settle every delivery we receive at once
        first = int(field_at(fields, 1) or 0)
        last = field_at(fields, 2)
        last = first if last is None else int(last)
        settled, state = bool(field_at(fields, 3)), field_at(fields, 4)
        if last < first or last - first > 0xFFFF:
            return
        for delivery_id in range(first, last + 1):
            for link in session.links.values():
                token = link.unsettled.pop(delivery_id, None)
                if token is None:
                    continue
                complete = servicebound.settle_as(state)
                self.endpoint.settle_servicebound(self, link, token, complete=complete)
                if not settled:      # rcv-settle-mode second: we settle, the receiver forgets
                    self._send(session.channel, DispositionFrame(
                        role=False, first=delivery_id, last=delivery_id, settled=True,
                        state=Accepted() if complete else Released(), batchable=None))
                if not link.closed:
                    self.pump_servicebound(session, link)
                break

    # -- messages to nodes -------------------------------------------------------------------

    def _on_message(self, link: Link, message: Message) -> Message | None:
        """Act on a complete message from the client; returns the reply for request nodes."""
        if link.node == "devicebound":
            self.endpoint.send_c2d(message)
            return None
        props = request_properties(message)
        if link.node == "$cbs":
            return self._put_token(message, props)
        return self.endpoint.management(self, message, props)

    def _put_token(self, message: Message, props: dict[str, Any]) -> Message:
        if props.get("operation") != "put-token":
            return reply(message, 400, "unsupported operation")
        token = codec.text(message.value) or ""
        try:
            self._grant(token)
        except HubError as exc:
            self.endpoint.core.refuse(amqp_errors.AMQP_CBS_REFUSED, self.peer, f"{exc.code}: {exc.message}")
            return reply(message, 401, f"{exc.code}: {exc.message}")
        return reply(message, 200, "OK")

    # -- sending -----------------------------------------------------------------------------

    def send_message(self, session: Session, link: Link, payload: bytes, *, settled: bool = True,
                     tag: bytes | None = None) -> int:
        """One delivery (pre-settled unless ``settled`` is False), split into frames that fit the
        client's max-frame-size; returns its delivery id."""
        delivery_id = session.next_delivery_id()
        room = self.peer_max_frame - 64       # transfer performative with all its fields < 64 bytes
        offset, first = 0, True
        frames: list[bytes] = []
        while first or offset < len(payload):
            chunk = payload[offset:offset + room]
            offset += len(chunk)
            frames.append(fastcodec.transfer_frame(session.channel, link.handle, delivery_id if first else None,
                                                   chunk, more=offset < len(payload), settled=settled, tag=tag))
            first = False
        self._write(b"".join(frames))
        link.delivery_count += 1
        link.credit = max(0, link.credit - 1)
        return delivery_id

    def pump(self, session: Session, link: Link) -> None:
        """Send stored events to one partition receiver, within its credit."""
        if self.closed or self.paused or link.closed or link.credit <= 0:
            return
        self.endpoint.fill(self, session, link)

    def pump_servicebound(self, session: Session, link: Link) -> None:
        """Send receivable messages of a service-bound source, within its credit; each stays
        locked until the receiver's disposition (or the link's end) settles it."""
        while not (self.closed or self.paused or link.closed) and link.credit > 0:
            item = self.endpoint.next_servicebound(link)
            if item is None:
                return
            payload, token = item
            delivery_id = self.send_message(session, link, payload, settled=link.send_settled,
                                            tag=servicebound.lock_tag(token))
            if link.send_settled:
                self.endpoint.settle_servicebound(self, link, token, complete=True)
            else:
                link.unsettled[delivery_id] = token

    def pump_all(self, *, servicebound: bool = False) -> None:
        """Fill the event receivers (or, with ``servicebound``, the service-bound ones)."""
        for session in list(self.sessions.values()):
            for link in list(session.links.values()):
                if link.closed:
                    continue
                if not servicebound and link.node == "events":
                    self.pump(session, link)
                elif servicebound and link.node in _SERVICEBOUND_NODES:
                    self.pump_servicebound(session, link)
