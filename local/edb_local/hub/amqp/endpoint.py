"""What the AMQP connections share: the nodes this hub serves, who may attach to them, the
partition receivers (woken when the upstream log grows), management reads, and C2D intake."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from edb_local.hub import c2d
from edb_local.hub.amqp import codec, eventlog, servicebound
from edb_local.hub.amqp import errors as amqp_errors
from edb_local.hub.amqp.auth import Grant, normalise, verify_service_token
from edb_local.hub.amqp.eventlog import Position, partition_of
from edb_local.hub.amqp.links import Link, Session
from edb_local.hub.amqp.nodes import PartitionInfo, eventhub_properties, partition_properties, reply
from edb_local.hub.errors import HubError

if TYPE_CHECKING:
    from azure.eventhub._pyamqp.message import Message

    from edb_local.hub.amqp.connection import AmqpConnection
    from edb_local.hub.core import HubCore

_PAGE = 256
_PAGES_PER_TURN = 8
MAX_EVENT_MESSAGE = 300 * 1024   # a 256 KB telemetry body plus its properties


class AmqpEndpoint:
    def __init__(self, core: HubCore) -> None:
        self.core = core
        config = core.config
        self.entity = config.eventhub_name
        self.partitions = config.eventhub_partitions
        self.consumer_groups = {g.lower(): g for g in config.consumer_groups}
        self.container_id = f"edb-hub-{config.hub_name}"
        self.created_ms = int(time.time() * 1000)
        self.connections: set[AmqpConnection] = set()
        self._receivers: dict[tuple[str, int], list[tuple[AmqpConnection, Session, Link]]] = {}
        core.upstream_listeners.append(self.wake)
        core.c2d.feedback_listeners.append(self.wake_servicebound)
        self._servicebound_wake: asyncio.Handle | None = None

    # -- authorisation -----------------------------------------------------------------------

    def verify_token(self, token: str) -> Grant:
        config = self.core.config
        return verify_service_token(token, address=config.address, hub_names=config.device_host_names,
                                    entity=self.entity, owner_key=config.owner_key, now=time.time())

    def _entity_resource(self) -> str:
        return f"sb://{self.core.config.address}/{self.entity}"

    def classify_link(self, conn: AmqpConnection, link: Link, filters: Any, properties: Any) -> None:
        """Set ``link.node`` (and a receiver's partition and start) or raise HubError."""
        path = normalise(link.address)
        if "://" in link.address:
            path = path.partition("/")[2]
        if path == "$cbs":
            link.node = "$cbs"
            return
        if path.startswith("messages/events"):
            if not conn.authorised(f"{self.core.config.address}/messages/events", event_hub=False):
                raise HubError("no accepted IoT Hub service token for messages/events",
                               code=amqp_errors.AMQP_UNAUTHORIZED)
            tail = path[len("messages/events"):].strip("/")
            address = self.core.config.address
            raise amqp_errors.LinkRedirect({
                "hostname": address, "network-host": address, "port": self.core.config.amqp_port,
                "address": f"amqps://{address}:{self.core.config.amqp_port}/{self.entity}/{tail}".rstrip("/")})
        if path == "$management" or path.endswith("/$management"):
            link.node = "$management"
            return
        partition = eventlog.parse_partition_address(link.address, self.entity)
        if partition is not None:
            if not link.we_send:
                raise HubError("event partitions are read-only here", code=amqp_errors.AMQP_NOT_FOUND)
            self._classify_receiver(conn, link, partition, filters, properties)
            return
        if path == "messages/devicebound" and not link.we_send:
            if not conn.authorised(f"{self.core.config.address}/messages/devicebound", event_hub=False):
                raise HubError("no accepted IoT Hub service token for /messages/devicebound",
                               code=amqp_errors.AMQP_UNAUTHORIZED)
            link.node = "devicebound"
            link.max_message = self.core.config.c2d_max_message_bytes + 8 * 1024
            return
        if path in servicebound.NODES and link.we_send:
            # ServiceConnect, as the HTTPS feedback routes: only `iothubowner` and `service` grant
            if not conn.authorised(f"{self.core.config.address}/{path}", event_hub=False):
                raise HubError(f"no accepted IoT Hub service token for /{path}", code=amqp_errors.AMQP_UNAUTHORIZED)
            link.node = servicebound.NODES[path]
            return
        raise HubError("no such node", code=amqp_errors.AMQP_NOT_FOUND)

    def _classify_receiver(self, conn: AmqpConnection, link: Link, partition: tuple[str, str],
                           filters: Any, properties: Any) -> None:
        group, partition_id = partition
        if not conn.authorised(link.address, event_hub=True):
            raise HubError("no accepted token covers this consumer group", code=amqp_errors.AMQP_UNAUTHORIZED)
        if group.lower() not in self.consumer_groups:
            raise HubError(f"consumer group {group[:64]!r} does not exist", code=amqp_errors.AMQP_NOT_FOUND)
        if not partition_id.isdigit() or int(partition_id) >= self.partitions:
            raise HubError(f"partition {partition_id[:16]!r} does not exist", code=amqp_errors.AMQP_NOT_FOUND)
        selector = None
        if isinstance(filters, dict):
            for key, value in filters.items():
                if codec.text(key) == eventlog.SELECTOR_FILTER.decode():
                    selector = codec.text(value)
        link.node = "events"
        link.max_message = MAX_EVENT_MESSAGE
        link.consumer_group = group.lower()
        link.partition = int(partition_id)
        link.cursor = self.resolve(eventlog.parse_selector(selector))
        if isinstance(properties, dict):
            for key, value in properties.items():
                if codec.text(key) == "com.microsoft:epoch" and isinstance(value, int):
                    link.epoch = value

    def resolve(self, position: Position) -> int:
        """The store sequence number a receiver starts after."""
        store = self.core.store
        if position.kind == "start":
            return 0
        if position.kind == "latest":
            return store.upstream_last_seq()
        if position.kind == "sequence":
            return position.value - 1 if position.inclusive else position.value
        return store.upstream_seq_before(position.value / 1000, inclusive=position.inclusive)

    # -- receivers ---------------------------------------------------------------------------

    def add_receiver(self, conn: AmqpConnection, session: Session, link: Link) -> None:
        """Epochs as Event Hubs has them: a receiver with an epoch at least as high as the current
        ones takes the partition of this consumer group (the others are detached, link stolen)."""
        key = (link.consumer_group, link.partition)
        current = self._receivers.setdefault(key, [])
        if link.epoch is not None:
            for other_conn, other_session, other in list(current):
                if other.epoch is None or other.epoch <= link.epoch:
                    current.remove((other_conn, other_session, other))
                    other_conn.steal(other_session, other)
        current.append((conn, session, link))

    def remove_receiver(self, link: Link) -> None:
        current = self._receivers.get((link.consumer_group, link.partition), [])
        self._receivers[(link.consumer_group, link.partition)] = [r for r in current if r[2] is not link]

    def wake(self) -> None:
        for conn in list(self.connections):
            conn.pump_all()

    def fill(self, conn: AmqpConnection, session: Session, link: Link) -> None:
        """Send what the credit allows. At most `_PAGES_PER_TURN` pages per event-loop turn: a receiver
        far behind (the log is shared by all partitions) continues on the next turn instead of
        holding the loop while it skips other partitions' rows."""
        store = self.core.store
        for _ in range(_PAGES_PER_TURN):
            if link.credit <= 0 or conn.paused or conn.closed:
                return
            rows = store.upstream_since(link.cursor, _PAGE)
            if not rows:
                return
            for row in rows:
                link.cursor = row.seq
                if partition_of(row.device_id, self.partitions) != link.partition:
                    continue
                conn.send_message(session, link, eventlog.event_bytes(row))
                if link.credit <= 0 or conn.paused:
                    return
        asyncio.get_running_loop().call_soon(conn.pump, session, link)

    # -- service-bound sources (feedback) ----------------------------------------------------

    def wake_servicebound(self) -> None:
        """Feedback became receivable: fill the service-bound receivers on the next loop turn (the
        caller may be in the middle of a device's PUBACK)."""
        if self._servicebound_wake is None and self.connections:
            self._servicebound_wake = asyncio.get_running_loop().call_soon(self._pump_servicebound)

    def _pump_servicebound(self) -> None:
        self._servicebound_wake = None
        for conn in list(self.connections):
            conn.pump_all(servicebound=True)

    def next_servicebound(self, link: Link) -> tuple[bytes, str] | None:
        """The next message for a service-bound receiver, locked: its payload and lock token."""
        message = self.core.c2d.receive_feedback()
        if message is None or message.lock_token is None:
            return None
        payload = servicebound.message_payload(message.message_id, message.body(), c2d.FEEDBACK_CONTENT_TYPE,
                                               self.core.config.hub_name, message.delivery_count)
        return payload, message.lock_token

    def settle_servicebound(self, conn: AmqpConnection, link: Link, lock_token: str, *, complete: bool) -> None:
        try:
            self.core.c2d.settle_feedback(lock_token, complete=complete)
        except HubError as exc:   # the lock lapsed (and the message was received again): nothing to settle
            self.core.refuse(exc.code, conn.peer, f"{link.node} disposition: {exc.message}")

    # -- $management -------------------------------------------------------------------------

    def management(self, conn: AmqpConnection, message: Message, props: dict[str, Any]) -> Message:
        token = props.get("security_token")
        if isinstance(token, str) and token:
            try:
                conn.grants.append(self.verify_token(token))
            except HubError as exc:
                self.core.refuse(amqp_errors.AMQP_CBS_REFUSED, conn.peer, f"{exc.code}: {exc.message}")
                return reply(message, 401, f"{exc.code}: {exc.message}")
        if not conn.authorised(self._entity_resource(), event_hub=True):
            self.core.refuse(amqp_errors.AMQP_UNAUTHORIZED, conn.peer, "$management without a token")
            return reply(message, 401, f"{amqp_errors.AMQP_UNAUTHORIZED}: no accepted token for this event hub")
        if props.get("operation") != "READ":
            return reply(message, 400, "unsupported operation")
        name = str(props.get("name") or "")
        if name.lower() != self.entity.lower():
            return reply(message, 404, f"{amqp_errors.AMQP_NOT_FOUND}: no event hub {name[:64]!r}")
        kind = props.get("type")
        if kind == "com.microsoft:eventhub":
            return reply(message, 200, "OK", eventhub_properties(self.entity, self.created_ms, self.partitions))
        if kind == "com.microsoft:partition":
            partition_id = str(props.get("partition") or "")
            if not partition_id.isdigit() or int(partition_id) >= self.partitions:
                return reply(message, 404, f"{amqp_errors.AMQP_NOT_FOUND}: no partition {partition_id[:16]!r}")
            return reply(message, 200, "OK", partition_properties(self.entity, self.partition_info(int(partition_id))))
        return reply(message, 400, "unsupported type")

    def partition_info(self, partition: int) -> PartitionInfo:
        first = last = 0
        last_ms = 0
        for device_id, low, high, enqueued in self.core.store.upstream_by_device():
            if partition_of(device_id, self.partitions) != partition:
                continue
            first = low if first == 0 else min(first, low)
            if high > last:
                last, last_ms = high, int(enqueued * 1000)
        return PartitionInfo(str(partition), first, last if last else -1, last_ms, last == 0)

    # -- cloud-to-device ---------------------------------------------------------------------

    def send_c2d(self, message: Message) -> None:
        props = message.properties
        to = codec.text(props.to) if props is not None else None
        parts = (to or "").strip("/").split("/")
        if len(parts) != 4 or parts[0] != "devices" or parts[2:] != ["messages", "devicebound"]:
            raise HubError("`to` must be /devices/<id>/messages/devicebound", code=amqp_errors.C2D_BAD_MESSAGE)
        system: dict[str, str] = {}
        if props is not None:
            for name, value in (("messageId", props.message_id), ("correlationId", props.correlation_id),
                                ("contentType", props.content_type), ("contentEncoding", props.content_encoding),
                                ("userId", props.user_id)):
                if value is not None:
                    system[name] = codec.text(value) or ""
            system["to"] = to or ""
        application = {codec.text(k) or "": (None if v is None else codec.text(v) if isinstance(v, bytes) else str(v))
                       for k, v in (message.application_properties or {}).items()}
        if message.data:
            body = b"".join(bytes(d) for d in message.data)
        elif message.value is not None:
            body = (codec.text(message.value) or "").encode()
        else:
            body = b""
        expiry_ms = props.absolute_expiry_time if props is not None else None
        self.core.c2d.enqueue(parts[1], body, system, application,
                              expires=None if not expiry_ms else float(expiry_ms) / 1000)
