"""The runner's pure parts: batching within a latency bound, duplicate suppression, hot-swap leases,
version selection, input decoding."""

from __future__ import annotations

import pytest

from edb.schemas import ModelSpec
from inference_runner.batching import Batcher, RecentIds
from inference_runner.model_slot import Loaded, ModelSlot
from inference_runner.selection import decide
from inference_runner.stats import LatencyStats


def test_batch_is_ready_when_full() -> None:
    b: Batcher[str] = Batcher(max_rows=3, max_latency_s=1.0)
    b.add("a", 1, now=0.0)
    b.add("b", 1, now=0.1)
    assert not b.ready(0.2)
    b.add("c", 1, now=0.2)
    assert b.ready(0.2)
    assert [p.item for p in b.take()] == ["a", "b", "c"]
    assert len(b) == 0 and b.deadline() is None


def test_batch_is_ready_at_the_oldest_items_deadline() -> None:
    b: Batcher[str] = Batcher(max_rows=100, max_latency_s=0.02)
    b.add("a", 1, now=10.0)
    b.add("b", 1, now=10.015)
    assert b.deadline() == pytest.approx(10.02)
    assert not b.ready(10.019)
    assert b.ready(10.02)
    assert [p.item for p in b.take()] == ["a", "b"]


def test_take_never_splits_an_item_and_keeps_order() -> None:
    b: Batcher[str] = Batcher(max_rows=4, max_latency_s=0)
    for item, rows in (("a", 3), ("b", 2), ("c", 9), ("d", 1)):
        b.add(item, rows, now=0)
    batches = []
    while len(b):
        batches.append([p.item for p in b.take()])
    assert batches == [["a"], ["b"], ["c"], ["d"]]


def test_zero_latency_serves_each_item_immediately() -> None:
    b: Batcher[int] = Batcher(max_rows=8, max_latency_s=0)
    b.add(1, 1, now=5)
    assert b.ready(5)


def test_recent_ids_suppress_redelivery_within_capacity() -> None:
    ids = RecentIds(capacity=2)
    assert not ids.seen("a") and ids.seen("a")
    assert not ids.seen("b") and not ids.seen("c")
    assert not ids.seen("a")  # evicted


def test_hot_swap_waits_for_leases_before_unloading_the_old_model() -> None:
    slot: ModelSlot[str] = ModelSlot()
    assert slot.swap(Loaded("h1", "digits", "1")) == []
    lease = slot.acquire()
    assert lease is not None and lease.version == "1"
    # v2 arrives while a batch still runs on v1
    assert slot.swap(Loaded("h2", "digits", "2")) == []
    nxt = slot.acquire()
    assert nxt is not None and nxt.version == "2"  # every later batch uses v2
    assert slot.release(lease) == ["h1"]  # only now v1 may go
    assert slot.release(nxt) == []
    assert slot.retired_count == 0


def test_swap_without_leases_unloads_at_once_and_none_stops_serving() -> None:
    slot: ModelSlot[str] = ModelSlot()
    slot.swap(Loaded("h1", "digits", "1"))
    assert slot.swap(Loaded("h2", "digits", "2")) == ["h1"]
    assert slot.swap(None) == ["h2"]
    assert slot.acquire() is None


def test_version_selection() -> None:
    spec = ModelSpec("digits", "2.0.0")
    assert not decide(None, None, "1").load
    assert not decide(spec, None, None).load
    assert not decide(spec, None, "1.9.9").load
    assert decide(spec, None, "2.0.0").load
    assert not decide(spec, ("digits", "2.0.0"), "2.0.0").load
    assert decide(spec, ("digits", "2.0.0"), "2.1.0").load
    assert decide(ModelSpec("other"), ("digits", "2.0.0"), "1").load


def test_latency_stats() -> None:
    stats = LatencyStats(window=100)
    for i in range(1, 101):
        stats.record(float(i))
    stats.record(0, ok=False)
    s = stats.summary()
    assert s["count"] == 101 and s["errors"] == 1
    assert s["p50Ms"] == 50 and s["p99Ms"] == 99
