"""Store-and-forward queues for module inputs (edgeHub's per-endpoint queues).

Every message routed to ``BrokeredEndpoint("/modules/<m>/inputs/<i>")`` is written to the
``pending`` table first, then kept here in (priority, arrival) order. While the module is
connected and subscribed to its inputs, up to ``window`` messages are in flight as QoS 1 PUBLISHes;
a PUBACK deletes the row. A disconnect puts in-flight messages back (they are re-sent with DUP
when the module returns), a message past its time-to-live is dropped instead of sent. That is
at-least-once: a module that crashes between processing and PUBACK sees the message again.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from edb_local.hub.store import Store


@dataclass(order=True, slots=True)
class QueuedMessage:
    priority: int
    seq: int
    input: str = field(compare=False)
    expires: float = field(compare=False)
    body: bytes = field(compare=False)
    props: dict[str, Any] = field(compare=False)
    dup: bool = field(default=False, compare=False)


class InputSender(Protocol):
    def send_input(self, message: QueuedMessage, qos: int) -> int | None:
        """Publish to the module's input topic; return the packet id (QoS 1) or None (QoS 0)."""


@dataclass
class InputQueue:
    heap: list[QueuedMessage] = field(default_factory=list)
    inflight: dict[int, QueuedMessage] = field(default_factory=dict)
    expired: int = 0

    def __len__(self) -> int:
        return len(self.heap) + len(self.inflight)

    def push(self, message: QueuedMessage) -> None:
        heapq.heappush(self.heap, message)

    def pump(self, sender: InputSender, store: Store, *, window: int, qos: int, now: float | None = None) -> int:
        """Send what the window allows; returns how many were sent."""
        now = time.time() if now is None else now
        sent = 0
        while self.heap and len(self.inflight) < window:
            message = heapq.heappop(self.heap)
            if message.expires <= now:
                self.expired += 1
                store.delete_pending(message.seq)
                continue
            packet_id = sender.send_input(message, qos)
            sent += 1
            if packet_id is None:
                store.delete_pending(message.seq)   # QoS 0 subscription: at most once, as asked
            else:
                self.inflight[packet_id] = message
        return sent

    def ack(self, packet_id: int, store: Store) -> bool:
        message = self.inflight.pop(packet_id, None)
        if message is None:
            return False
        store.delete_pending(message.seq)
        return True

    def requeue_inflight(self) -> None:
        for message in self.inflight.values():
            message.dup = True
            heapq.heappush(self.heap, message)
        self.inflight.clear()

    def drop_expired(self, store: Store, now: float | None = None) -> int:
        now = time.time() if now is None else now
        keep = [m for m in self.heap if m.expires > now]
        dropped = len(self.heap) - len(keep)
        if dropped:
            for message in self.heap:
                if message.expires <= now:
                    store.delete_pending(message.seq)
            heapq.heapify(keep)
            self.heap = keep
            self.expired += dropped
        return dropped
