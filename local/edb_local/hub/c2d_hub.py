"""The hub's cloud-to-device side: each device's C2D queue and the service's feedback queue (their
logic, pure, is :mod:`edb_local.hub.c2d`), their rows in the store, delivery over MQTT to a
subscribed device (QoS 1; its PUBACK completes the message) and the feedback each outcome asks
for. The core owns the sessions, identities and counters and calls in here for device sessions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from edb_local.hub import c2d, errors
from edb_local.hub.config import HubConfig
from edb_local.hub.delivery import QueuedMessage
from edb_local.hub.errors import HubError
from edb_local.hub.session import ClientSession
from edb_local.hub.state import HubState
from edb_local.hub.store import Store
from edb_local.hub.topics import Identity


class CloudToDevice:
    def __init__(self, config: HubConfig, store: Store, state: HubState, sessions: Mapping[Identity, ClientSession],
                 counters: dict[str, int], refuse: Callable[[str, object, str], None]) -> None:
        self.config = config
        self.store = store
        self.state = state
        self.sessions = sessions
        self.counters = counters
        self._refuse = refuse
        self.queues: dict[str, c2d.C2DQueue] = {}  # by device id
        self.feedback = c2d.FeedbackQueue(
            ttl_secs=config.feedback_ttl_secs, lock_secs=config.feedback_lock_secs,
            max_delivery_count=config.feedback_max_delivery_count, max_records=config.feedback_max_records)
        #: called when feedback may have become receivable (records added, a message abandoned)
        self.feedback_listeners: list[Callable[[], None]] = []

    def queue(self, device_id: str) -> c2d.C2DQueue:
        queue = self.queues.get(device_id)
        if queue is None:
            queue = self.queues[device_id] = c2d.C2DQueue(max_delivery_count=self.config.c2d_max_delivery_count)
        return queue

    def enqueue(self, device_id: str, body: bytes, system: dict[str, str], application: dict[str, str | None],
                    *, expires: float | None) -> None:
        """Queue a C2D message for a device (stored; delivered over MQTT as QoS 1 on
        `devices/<id>/messages/devicebound/<properties>` while the device is subscribed; a PUBACK
        completes it). Refused: unknown device, a full queue (IoT Hub's limit: 50), already expired,
        too large, an `iothub-ack` other than none/positive/negative/full."""
        identity = Identity(device_id)
        if self.state.identities.get(identity) is None:
            raise HubError("no such device", code=errors.C2D_UNKNOWN_DEVICE)
        if len(body) > self.config.c2d_max_message_bytes:
            raise HubError(f"{len(body)}-byte C2D message above the limit", code=errors.C2D_BAD_MESSAGE)
        if c2d.ack_mode(application) is None:
            raise HubError(f"{c2d.ACK_PROPERTY} must be one of {', '.join(c2d.ACK_MODES)}",
                           code=errors.C2D_BAD_MESSAGE)
        now = time.time()
        ttl = self.config.c2d_default_ttl_secs if expires is None else expires - now
        if ttl <= 0:
            raise HubError("C2D message already expired", code=errors.C2D_BAD_MESSAGE)
        queue = self.queue(device_id)
        if len(queue) >= self.config.c2d_queue_limit:
            raise HubError(f"device {device_id} has {len(queue)} C2D messages queued",
                           code=errors.C2D_QUEUE_FULL)
        deadline = now + min(ttl, self.config.c2d_max_ttl_secs)
        props = {"system": system, "application": application}
        seq = self.store.add_pending(device_id, "", c2d.C2D_INPUT, 0, deadline, body, props)
        queue.push(QueuedMessage(0, seq, c2d.C2D_INPUT, deadline, body, props))
        self.counters["c2d_queued"] = self.counters.get("c2d_queued", 0) + 1
        self.pump(identity)

    def pump(self, identity: Identity) -> None:
        queue = self.queues.get(identity.device_id)
        session = self.sessions.get(identity)
        if queue is None or not queue.heap:
            return
        qos = None if session is None else session.subscriptions.get(f"{identity.topic_base}/messages/devicebound/#")
        if session is None or qos is None:
            return      # expired messages wait for housekeeping, a feedback receive or the next send
        now = time.time()
        send, outcomes = queue.take(self.config.inflight_window, now)
        for message in send:
            outcome = queue.sent(message, session.send_input(message, qos), now)
            if outcome is not None:
                outcomes.append(outcome)     # QoS 0 subscription: completed when sent
        self._outcomes(identity.device_id, outcomes)

    def puback(self, identity: Identity, packet_id: int) -> None:
        queue = self.queues.get(identity.device_id)
        outcome = None if queue is None else queue.complete(packet_id, time.time())
        if outcome is not None:
            self._outcomes(identity.device_id, [outcome])
            self.pump(identity)

    def _outcomes(self, device_id: str, outcomes: list[c2d.Outcome]) -> None:
        """Messages that left a device's queue: delete their rows, count them, and record the
        feedback their `iothub-ack` asks for."""
        if not outcomes:
            return
        for outcome in outcomes:
            self.store.delete_pending(outcome.message.seq)
            key = f"c2d_{outcome.status.lower()}"
            self.counters[key] = self.counters.get(key, 0) + 1
        record = self.state.identities.get(Identity(device_id))
        generation_id = record.generation_id if record is not None else ""
        added = False
        for feedback in c2d.outcome_records(outcomes, device_id, generation_id):
            if not self.feedback.add(feedback):
                self._refuse(errors.C2D_FEEDBACK_DROPPED, device_id,
                            f"feedback queue holds {self.config.feedback_max_records} records")
            else:
                added = True
        if added:
            self._feedback_changed()

    def _feedback_changed(self) -> None:
        for listener in self.feedback_listeners:
            listener()

    def expire(self) -> int:
        """Drop every expired enqueued C2D message (their `Expired` feedback included)."""
        now = time.time()
        dropped = 0
        for device_id, queue in list(self.queues.items()):
            outcomes = queue.expire(now)
            dropped += len(outcomes)
            self._outcomes(device_id, outcomes)
        return dropped

    def purge(self, device_id: str) -> int:
        """`DELETE /devices/{id}/commands`: remove every message queued for the device (404 for an
        unknown device); returns how many."""
        self.state.identity(Identity(device_id))
        queue = self.queues.get(device_id)
        if queue is None:
            return 0
        outcomes = queue.purge(time.time())
        self._outcomes(device_id, outcomes)
        return len(outcomes)

    def forget(self, device_id: str) -> None:
        """A deleted device: its queue (rows are deleted by the caller) and its waiting feedback go."""
        self.queues.pop(device_id, None)
        self.feedback.forget_device(device_id)

    def receive_feedback(self) -> c2d.FeedbackMessage | None:
        self.expire()      # an expiry is reported when the service asks, not 30 s later
        return self.feedback.receive(time.time())

    def settle_feedback(self, lock_token: str, *, complete: bool) -> None:
        now = time.time()
        done = self.feedback.complete(lock_token, now) if complete else self.feedback.abandon(lock_token, now)
        if not done:
            raise HubError("no feedback message is locked under this token (unknown, completed or lapsed)",
                           code=errors.C2D_LOCK_LOST)
        if not complete:
            self._feedback_changed()
