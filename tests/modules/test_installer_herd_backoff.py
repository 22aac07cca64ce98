"""Key release under a herd, device side (pure): the installer honours the service's Retry-After with
jitter on top of its own backoff, and a retryable refusal is retried for as long as it lasts (no
genuine device gives up for good)."""

from __future__ import annotations

import random

from edb.schemas.common import ErrorInfo
from package_installer.backoff import Backoff
from package_installer.reconcile import record_failure

IDENTITY = ("digits", "2.0.0", "ab" * 32, 1)
LIMITED = ErrorInfo("KR_RATE_LIMITED", "too many releases; retry in 5 s")


def test_retry_after_is_a_floor_with_jitter_above_it() -> None:
    rng = random.Random(7)
    delays = []
    for _ in range(200):  # 200 devices told the same Retry-After at the same moment
        failure = record_failure(None, IDENTITY, LIMITED, retryable=True, now=100.0, backoff=Backoff(), rng=rng,
                                 retry_after=5.0)
        assert failure.retry_at is not None
        delays.append(failure.retry_at - 100.0)
    assert min(delays) >= 5.0 and max(delays) <= 7.5
    assert len({round(d, 3) for d in delays}) > 150  # spread out, not one instant
    assert max(delays) - min(delays) > 1.5


def test_own_backoff_wins_when_longer_and_without_retry_after() -> None:
    rng = random.Random(1)
    previous = None
    for _ in range(6):  # the 6th failure: ceiling min(60, 2 * 2**5) = 60 s, delay in [30, 60]
        previous = record_failure(previous, IDENTITY, LIMITED, retryable=True, now=0.0, backoff=Backoff(), rng=rng,
                                  retry_after=1.0)
    assert previous is not None and previous.attempts == 6 and previous.retry_at is not None
    assert 30.0 <= previous.retry_at <= 60.0
    plain = record_failure(None, IDENTITY, LIMITED, retryable=True, now=0.0, backoff=Backoff(), rng=rng)
    assert plain.retry_at is not None and 1.0 <= plain.retry_at <= 2.0


def test_a_long_herd_never_ends_in_a_permanent_refusal() -> None:
    previous = None
    for _ in range(500):
        previous = record_failure(previous, IDENTITY, LIMITED, retryable=True, now=0.0, backoff=Backoff(),
                                  rng=random.Random(3), retry_after=2.0)
    assert previous is not None and previous.retry_at is not None and previous.retry_at <= 60.0
    denied = record_failure(None, IDENTITY, ErrorInfo("KR_POLICY_DENIED", "not on the list"), retryable=False,
                            now=0.0, backoff=Backoff(), retry_after=5.0)
    assert denied.retry_at is None  # a denial is not retried by itself (it would only hammer the service)
    huge = record_failure(None, IDENTITY, LIMITED, retryable=True, now=0.0, backoff=Backoff(), rng=random.Random(3),
                          retry_after=1e9)
    assert huge.retry_at is not None and huge.retry_at <= 5400.0  # a hostile Retry-After is capped
