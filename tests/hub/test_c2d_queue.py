"""The pure C2D logic (local/edb_local/hub/c2d.py): the per-device queue's outcomes, which outcomes
produce feedback for which `iothub-ack`, and the feedback queue's batching, locks, redelivery,
time to live and bound. No hub, no sockets: the clock is a parameter."""

from __future__ import annotations

import itertools

import pytest

from edb_local.hub.c2d import (
    C2DQueue,
    FeedbackQueue,
    FeedbackRecord,
    Status,
    ack_mode,
    outcome_records,
    wants_feedback,
)
from edb_local.hub.delivery import QueuedMessage

T0 = 1_700_000_000.0


def msg(seq: int, *, ack: str | None = None, expires: float = T0 + 3600, mid: str | None = None) -> QueuedMessage:
    application: dict[str, str | None] = {} if ack is None else {"iothub-ack": ack}
    return QueuedMessage(0, seq, "$c2d", expires, b"x", {"system": {"messageId": mid or f"m{seq}"},
                                                          "application": application})


def record(n: int, device: str = "d1", status: Status = Status.SUCCESS) -> FeedbackRecord:
    return FeedbackRecord(f"m{n}", device, "gen-1", status, T0 + n)


def tokens() -> FeedbackQueue:
    counter = itertools.count(1)
    return FeedbackQueue(new_token=lambda: f"t{next(counter)}")


# -- which outcome asks for feedback ------------------------------------------------------------

@pytest.mark.parametrize(("mode", "success", "others"), [
    ("none", False, False), ("positive", True, False), ("negative", False, True), ("full", True, True)])
def test_ack_modes(mode: str, success: bool, others: bool) -> None:
    assert wants_feedback(mode, Status.SUCCESS) is success
    for status in (Status.EXPIRED, Status.DELIVERY_COUNT_EXCEEDED, Status.REJECTED, Status.PURGED):
        assert wants_feedback(mode, status) is others


def test_ack_property_parsing() -> None:
    assert ack_mode({}) == "none"
    assert ack_mode({"iothub-ack": "FULL"}) == "full"
    assert ack_mode({"iothub-ack": "ful"}) is None          # refused by the hub at enqueue
    assert ack_mode({"ack": "full"}) == "none"              # only iothub-ack asks for feedback


# -- the device queue ---------------------------------------------------------------------------

def test_take_sends_in_order_within_the_window_and_drops_expired() -> None:
    queue = C2DQueue()
    for seq in (3, 1, 2):
        queue.push(msg(seq))
    queue.push(msg(4, expires=T0 - 1, ack="negative"))
    send, expired = queue.take(window=2, now=T0)
    assert [m.seq for m in send] == [1, 2] and expired == []
    assert queue.sent(send[0], 11, T0) is None and queue.sent(send[1], 12, T0) is None
    assert queue.take(window=2, now=T0) == ([], [])          # window full
    done = queue.complete(11, T0 + 1)
    assert done is not None and done.status is Status.SUCCESS and done.at == T0 + 1
    assert queue.complete(11, T0 + 1) is None                 # a duplicate PUBACK completes nothing
    send, expired = queue.take(window=3, now=T0 + 2)          # 12 in flight: room for two
    assert [m.seq for m in send] == [3]
    assert [(o.message.seq, o.status, o.at) for o in expired] == [(4, Status.EXPIRED, T0 - 1)]
    assert len(queue) == 1                                    # 12 in flight (3 taken, not yet sent())


def test_qos0_delivery_completes_at_once() -> None:
    queue = C2DQueue()
    queue.push(msg(1, ack="positive"))
    [message], _ = queue.take(window=5, now=T0)
    outcome = queue.sent(message, None, T0)
    assert outcome is not None and outcome.status is Status.SUCCESS and len(queue) == 0


def test_requeue_keeps_order_marks_dup_and_does_not_count() -> None:
    queue = C2DQueue(max_delivery_count=2)
    queue.push(msg(1))
    queue.push(msg(2))
    send, _ = queue.take(window=1, now=T0)
    queue.sent(send[0], 7, T0)
    for _ in range(5):        # lost connections are lost locks: no delivery count
        queue.requeue_inflight()
        send, _ = queue.take(window=1, now=T0)
        assert send[0].seq == 1 and send[0].dup
        queue.sent(send[0], 7, T0)
    assert len(queue) == 2


def test_abandon_counts_and_dead_letters_at_the_max() -> None:
    queue = C2DQueue(max_delivery_count=3)
    queue.push(msg(1, ack="full"))
    for _ in range(2):
        send, _ = queue.take(window=1, now=T0)
        queue.sent(send[0], 5, T0)
        assert queue.abandon(5, T0) is None
    send, _ = queue.take(window=1, now=T0)
    queue.sent(send[0], 5, T0)
    outcome = queue.abandon(5, T0 + 9)
    assert outcome is not None and outcome.status is Status.DELIVERY_COUNT_EXCEEDED and len(queue) == 0


def test_reject_dead_letters() -> None:
    queue = C2DQueue()
    queue.push(msg(1))
    send, _ = queue.take(window=1, now=T0)
    queue.sent(send[0], 9, T0)
    outcome = queue.reject(9, T0)
    assert outcome is not None and outcome.status is Status.REJECTED and len(queue) == 0


def test_expire_and_purge() -> None:
    queue = C2DQueue()
    queue.push(msg(1, expires=T0 + 10))
    queue.push(msg(2, expires=T0 + 100))
    queue.push(msg(3, expires=T0 + 100))
    send, _ = queue.take(window=1, now=T0)
    queue.sent(send[0], 1, T0)                     # seq 1 in flight: not expired while in flight
    assert [o.message.seq for o in queue.expire(T0 + 50)] == []
    queue.requeue_inflight()
    assert [(o.message.seq, o.status) for o in queue.expire(T0 + 50)] == [(1, Status.EXPIRED)]
    send, _ = queue.take(window=1, now=T0 + 50)
    queue.sent(send[0], 2, T0 + 50)
    purged = queue.purge(T0 + 60)
    assert [(o.message.seq, o.status) for o in purged] == [(2, Status.PURGED), (3, Status.PURGED)]
    assert len(queue) == 0 and queue.complete(2, T0 + 61) is None    # a late PUBACK: nothing


def test_outcome_records_follow_each_messages_ack() -> None:
    queue = C2DQueue()
    for seq, ack in ((1, "full"), (2, "negative"), (3, "positive"), (4, None)):
        queue.push(msg(seq, ack=ack))
    records = outcome_records(queue.purge(T0), "d1", "gen-1")
    assert [(r.original_message_id, r.status) for r in records] == [("m1", Status.PURGED), ("m2", Status.PURGED)]
    assert records[0].to_json() == {
        "originalMessageId": "m1", "description": "Purged", "deviceGenerationId": "gen-1", "deviceId": "d1",
        "enqueuedTimeUtc": "2023-11-14T22:13:20.000Z", "statusCode": "Purged"}


# -- the feedback queue -------------------------------------------------------------------------

def test_feedback_batches_locks_and_completes() -> None:
    queue = tokens()
    assert queue.receive(T0) is None
    for n in range(70):
        queue.add(record(n))
    first = queue.receive(T0)
    assert first is not None and len(first.records) == 64 and first.lock_token == "t2"   # t1: message id
    second = queue.receive(T0)                   # the first is locked: the rest forms a second batch
    assert second is not None and len(second.records) == 6
    assert queue.receive(T0) is None
    assert queue.complete('"t2"', T0 + 1)        # quoted as in the ETag header: accepted
    assert not queue.complete("t2", T0 + 1)      # completed already
    assert len(queue) == 6


def test_feedback_abandon_and_lapsed_lock_redeliver() -> None:
    queue = FeedbackQueue(lock_secs=60, max_delivery_count=3)
    queue.add(record(1))
    got = queue.receive(T0)
    assert got is not None and got.delivery_count == 0
    token = got.lock_token
    assert token is not None and queue.abandon(token, T0 + 1)
    again = queue.receive(T0 + 2)
    assert again is got and again.lock_token != token and again.delivery_count == 1
    assert not queue.complete(token, T0 + 2)     # the old token is dead
    # the lock lapses: receivable again, the delivery count unchanged
    later = queue.receive(T0 + 2 + 61)
    assert later is got and later.delivery_count == 1
    assert later.lock_token is not None and queue.abandon(later.lock_token, T0 + 70)
    last = queue.receive(T0 + 71)
    assert last is not None and last.lock_token is not None and queue.abandon(last.lock_token, T0 + 72)
    assert queue.receive(T0 + 73) is None and queue.dead_lettered == 1     # third abandon: gone


def test_feedback_lapsed_lock_cannot_complete() -> None:
    queue = tokens()
    queue.add(record(1))
    got = queue.receive(T0)
    assert got is not None and got.lock_token is not None
    assert not queue.complete(got.lock_token, T0 + 60)


def test_feedback_time_to_live_and_bound() -> None:
    queue = FeedbackQueue(ttl_secs=3600, max_records=3)
    assert all(queue.add(record(n)) for n in range(3))
    assert not queue.add(record(3)) and queue.dropped == 1
    got = queue.receive(T0)
    assert got is not None and got.expires == T0 + 3600
    assert queue.receive(T0 + 3601) is None and queue.expired == 1 and len(queue) == 0
    assert queue.add(record(4))                  # room again


def test_feedback_of_a_deleted_device_is_forgotten() -> None:
    queue = FeedbackQueue()
    queue.add(record(1, "gone"))
    queue.add(record(2, "kept"))
    queue.forget_device("gone")
    got = queue.receive(T0)
    assert got is not None and [r.device_id for r in got.records] == ["kept"]
