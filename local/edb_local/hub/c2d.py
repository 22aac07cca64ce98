"""Cloud-to-device messages as IoT Hub keeps them: the per-device queue and the feedback queue.

Pure logic: no sockets, no SQLite, the clock is a parameter. :class:`~edb_local.hub.core.HubCore`
persists messages (the ``pending`` table), sends them over MQTT and turns the :class:`Outcome`\\ s
returned here into deleted rows and feedback records.

Life cycle of a C2D message (Microsoft's "Understand cloud-to-device messaging", azure-docs
``articles/iot-hub/iot-hub-devguide-messages-c2d.md``): *Enqueued* in the device's queue (at most 50);
*Invisible* while delivered and not yet completed (here: a QoS 1 PUBLISH waiting for its PUBACK);
*Completed* (PUBACK), or *Dead lettered*: rejected, expired, or abandoned ``max delivery count`` times.
A purge removes every message of the device.

Feedback: a message whose ``iothub-ack`` application property is ``positive`` gets a ``Success``
record when it is completed, ``negative`` one for every other end (``Expired``,
``DeliveryCountExceeded``, ``Rejected``, ``Purged``), ``full`` both, ``none`` (the default) neither.
Records are batched (up to 64) into feedback messages the service receives, completes or abandons
with a lock token, as it does device-bound messages: lock 60 s, time to live 1 h, at most 10
deliveries (IoT Hub's defaults for ``feedback.*``).
"""

from __future__ import annotations

import datetime as dt
import enum
import heapq
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edb_local.hub.delivery import QueuedMessage

ACK_PROPERTY = "iothub-ack"
ACK_MODES = ("none", "positive", "negative", "full")
FEEDBACK_CONTENT_TYPE = "application/vnd.microsoft.iothub.feedback.json"
C2D_INPUT = "$c2d"   # the `input` column of a C2D row in the pending table


class Status(enum.StrEnum):
    """`statusCode` of a feedback record (azure-docs; the .NET SDK's FeedbackStatusCode names)."""

    SUCCESS = "Success"
    EXPIRED = "Expired"
    DELIVERY_COUNT_EXCEEDED = "DeliveryCountExceeded"
    REJECTED = "Rejected"
    PURGED = "Purged"


def ack_mode(application: Mapping[str, str | None]) -> str | None:
    """The message's ``iothub-ack`` (lower-cased; ``none`` when absent), or None when the value is
    not one of none/positive/negative/full."""
    value = application.get(ACK_PROPERTY)
    if value is None:
        return "none"
    mode = value.strip().lower()
    return mode if mode in ACK_MODES else None


def wants_feedback(mode: str | None, status: Status) -> bool:
    if mode == "full":
        return True
    if mode == "positive":
        return status is Status.SUCCESS
    if mode == "negative":
        return status is not Status.SUCCESS
    return False


def iso_utc(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class FeedbackRecord:
    original_message_id: str
    device_id: str
    device_generation_id: str
    status: Status
    at: float               # when the outcome happened (completion, expiry, purge)

    def to_json(self) -> dict[str, str]:
        return {"originalMessageId": self.original_message_id, "description": str(self.status),
                "deviceGenerationId": self.device_generation_id, "deviceId": self.device_id,
                "enqueuedTimeUtc": iso_utc(self.at), "statusCode": str(self.status)}


@dataclass(frozen=True, slots=True)
class Outcome:
    """A message that left the device's queue, and why."""

    message: QueuedMessage
    status: Status
    at: float

    @property
    def message_id(self) -> str:
        system: dict[str, Any] = self.message.props.get("system", {})
        return str(system.get("messageId") or "")

    @property
    def ack(self) -> str | None:
        return ack_mode(self.message.props.get("application", {}))


class C2DQueue:
    """One device's queue: enqueued messages in arrival order, and the ones in flight (sent as
    QoS 1, keyed by MQTT packet id, waiting for the PUBACK that completes them)."""

    def __init__(self, *, max_delivery_count: int = 10) -> None:
        self.max_delivery_count = max_delivery_count
        self.heap: list[QueuedMessage] = []
        self.inflight: dict[int, QueuedMessage] = {}
        self.abandoned: dict[int, int] = {}     # seq -> explicit abandons (IoT Hub's delivery count)

    def __len__(self) -> int:
        return len(self.heap) + len(self.inflight)

    def push(self, message: QueuedMessage) -> None:
        heapq.heappush(self.heap, message)

    def take(self, window: int, now: float) -> tuple[list[QueuedMessage], list[Outcome]]:
        """Messages to send now (up to ``window`` in flight at once), and those found expired on
        the way (dropped, not sent)."""
        send: list[QueuedMessage] = []
        expired: list[Outcome] = []
        while self.heap and len(self.inflight) + len(send) < window:
            message = heapq.heappop(self.heap)
            if message.expires <= now:
                expired.append(self._end(message, Status.EXPIRED, message.expires))
            else:
                send.append(message)
        return send, expired

    def sent(self, message: QueuedMessage, packet_id: int | None, now: float) -> Outcome | None:
        """Record a message handed to the device: in flight until its PUBACK, or (a QoS 0
        subscription, at most once) completed at once."""
        if packet_id is None:
            return self._end(message, Status.SUCCESS, now)
        self.inflight[packet_id] = message
        return None

    def complete(self, packet_id: int, now: float) -> Outcome | None:
        message = self.inflight.pop(packet_id, None)
        return None if message is None else self._end(message, Status.SUCCESS, now)

    def reject(self, packet_id: int, now: float) -> Outcome | None:
        """Dead-letter a delivered message (a device over AMQP or HTTPS can; over MQTT it cannot)."""
        message = self.inflight.pop(packet_id, None)
        return None if message is None else self._end(message, Status.REJECTED, now)

    def abandon(self, packet_id: int, now: float) -> Outcome | None:
        """Put a delivered message back; the ``max_delivery_count``-th abandon dead-letters it
        (IoT Hub counts explicit abandons only, not lost locks; MQTT devices cannot abandon)."""
        message = self.inflight.pop(packet_id, None)
        if message is None:
            return None
        count = self.abandoned.get(message.seq, 0) + 1
        if count >= self.max_delivery_count:
            return self._end(message, Status.DELIVERY_COUNT_EXCEEDED, now)
        self.abandoned[message.seq] = count
        message.dup = True
        heapq.heappush(self.heap, message)
        return None

    def requeue_inflight(self) -> None:
        """The device went away before completing: its messages are enqueued again (redelivered,
        with DUP, when it is back); the delivery count does not change, as for a lost lock."""
        for message in self.inflight.values():
            message.dup = True
            heapq.heappush(self.heap, message)
        self.inflight.clear()

    def expire(self, now: float) -> list[Outcome]:
        """Drop enqueued messages past their time to live."""
        keep = [m for m in self.heap if m.expires > now]
        if len(keep) == len(self.heap):
            return []
        gone = sorted(m for m in self.heap if m.expires <= now)
        heapq.heapify(keep)
        self.heap = keep
        return [self._end(m, Status.EXPIRED, m.expires) for m in gone]

    def purge(self, now: float) -> list[Outcome]:
        """Remove every message, enqueued or in flight (a late PUBACK then completes nothing)."""
        gone = sorted([*self.heap, *self.inflight.values()])
        self.heap = []
        self.inflight.clear()
        return [self._end(m, Status.PURGED, now) for m in gone]

    def _end(self, message: QueuedMessage, status: Status, at: float) -> Outcome:
        self.abandoned.pop(message.seq, None)
        return Outcome(message, status, at)


@dataclass(slots=True)
class FeedbackMessage:
    message_id: str
    sequence_number: int
    records: tuple[FeedbackRecord, ...]
    enqueued: float
    expires: float
    delivery_count: int = 0          # explicit abandons so far
    lock_token: str | None = None
    locked_until: float = 0.0

    def body(self) -> list[dict[str, str]]:
        return [record.to_json() for record in self.records]


def _new_token() -> str:
    return str(uuid.uuid4())


@dataclass
class FeedbackQueue:
    """The hub's one service-bound feedback queue.

    Records wait until a receive forms them into a message of up to ``batch`` records (IoT Hub also
    sends a partial batch after 15 s; here a receive takes what is there at once). A received
    message is locked for ``lock_secs``: completing it with its lock token deletes it; abandoning
    it, or letting the lock lapse, makes it receivable again with a new token. The
    ``max_delivery_count``-th abandon, or ``ttl_secs`` after it was formed, drops it. At most
    ``max_records`` records are held (waiting or in messages): further records are dropped and
    counted in ``dropped``."""

    batch: int = 64
    ttl_secs: float = 3600.0
    lock_secs: float = 60.0
    max_delivery_count: int = 10
    max_records: int = 10_000
    new_token: Callable[[], str] = _new_token
    waiting: deque[FeedbackRecord] = field(default_factory=deque)
    messages: list[FeedbackMessage] = field(default_factory=list)
    dropped: int = 0
    expired: int = 0
    dead_lettered: int = 0
    _sequence: int = 0

    def __len__(self) -> int:
        """Records held (waiting, or in messages not yet completed)."""
        return len(self.waiting) + sum(len(m.records) for m in self.messages)

    def add(self, record: FeedbackRecord) -> bool:
        if len(self) >= self.max_records:
            self.dropped += 1
            return False
        self.waiting.append(record)
        return True

    def receive(self, now: float) -> FeedbackMessage | None:
        """The oldest receivable message, locked under a new token; None when there is none."""
        self._expire(now)
        message = next((m for m in self.messages if m.lock_token is None or m.locked_until <= now), None)
        if message is None and self.waiting:
            count = min(self.batch, len(self.waiting))
            records = tuple(self.waiting.popleft() for _ in range(count))
            self._sequence += 1
            message = FeedbackMessage(self.new_token(), self._sequence, records, now, now + self.ttl_secs)
            self.messages.append(message)
        if message is None:
            return None
        message.lock_token = self.new_token()
        message.locked_until = now + self.lock_secs
        return message

    def complete(self, lock_token: str, now: float) -> bool:
        message = self._locked(lock_token, now)
        if message is None:
            return False
        self.messages.remove(message)
        return True

    def abandon(self, lock_token: str, now: float) -> bool:
        message = self._locked(lock_token, now)
        if message is None:
            return False
        message.delivery_count += 1
        message.lock_token = None
        message.locked_until = 0.0
        if message.delivery_count >= self.max_delivery_count:
            self.messages.remove(message)
            self.dead_lettered += 1
        return True

    def forget_device(self, device_id: str) -> None:
        """A deleted device's pending feedback is deleted too (azure-docs: "Pending feedback for
        deleted devices"): records not yet in a message."""
        self.waiting = deque(r for r in self.waiting if r.device_id != device_id)

    def _locked(self, lock_token: str, now: float) -> FeedbackMessage | None:
        token = lock_token.strip().strip('"')
        for message in self.messages:
            if message.lock_token == token and message.locked_until > now:
                return message
        return None

    def _expire(self, now: float) -> None:
        keep = [m for m in self.messages if m.expires > now]
        self.expired += len(self.messages) - len(keep)
        self.messages = keep


def outcome_records(outcomes: Iterable[Outcome], device_id: str, generation_id: str) -> list[FeedbackRecord]:
    """The feedback records the outcomes' ``iothub-ack`` asks for."""
    return [FeedbackRecord(o.message_id, device_id, generation_id, o.status, o.at)
            for o in outcomes if wants_feedback(o.ack, o.status)]
