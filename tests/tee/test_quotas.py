"""The TEE's quota decisions (edb_tee.quotas), directly: reserves per role, the shared part, the
per-process bound, giving back; and the measured configuration that sizes them."""

from __future__ import annotations

import pytest

from edb.errors import TeeError
from edb_tee.config import MeasuredConfig
from edb_tee.quotas import SHARED, Quota, connection_quota, frame_memory_quota

RUNNER, INSTALLER, ADMIN = frozenset({"runner"}), frozenset({"installer"}), frozenset({"admin"})
EVERY_ROLE = frozenset({"runner", "installer", "admin"})


def test_default_connection_split() -> None:
    q = connection_quota(64)
    assert (q.total, q.shared, dict(q.reserved), q.per_pid) == (64, 52, {"installer": 8, "admin": 4}, 16)


def test_runner_processes_cannot_take_the_installer_or_admin_reserve() -> None:
    q = connection_quota(64)
    taken = []
    for pid in range(100, 120):  # forks: each process up to its own bound, the role up to the shared part
        while (g := q.take(pid, RUNNER)) is not None:
            taken.append(g)
    assert len(taken) == q.shared == 52 and all(g.pool == SHARED for g in taken)
    assert q.take(999, RUNNER) is None
    installs = [q.take(7, INSTALLER) for _ in range(8)]  # the whole installer reserve is still there
    assert all(g is not None and g.pool == "installer" for g in installs)
    assert q.take(7, INSTALLER) is None
    admins = [q.take(8, ADMIN) for _ in range(4)]
    assert all(g is not None and g.pool == "admin" for g in admins)
    assert q.take(8, ADMIN) is None
    assert q.take(9, RUNNER) is None  # nothing the runner could reach freed up


def test_shared_first_then_reserve_and_give_back() -> None:
    q = connection_quota(64)
    first = q.take(1, INSTALLER)
    assert first is not None and first.pool == SHARED  # the reserve stays for when it is needed
    q.give(first)
    assert q.in_use() == 0 and q.held_by(1) == 0
    runner = [q.take(pid, RUNNER) for pid in range(10, 14) for _ in range(13)]
    assert all(g is not None for g in runner) and q.used(SHARED) == 52
    g = q.take(2, INSTALLER)
    assert g is not None and g.pool == "installer"
    freed = runner.pop()
    assert freed is not None
    q.give(freed)  # a runner connection closes: the next caller gets the shared slot back
    again = q.take(3, RUNNER)
    assert again is not None and again.pool == SHARED


def test_per_process_bound_covers_every_pool() -> None:
    q = connection_quota(64)
    grants = [q.take(5, EVERY_ROLE) for _ in range(16)]
    assert all(g is not None for g in grants)
    assert q.take(5, EVERY_ROLE) is None  # single-uid mode: one process still holds at most a quarter
    assert q.take(6, EVERY_ROLE) is not None


def test_frame_memory_quota_holds_declared_lengths() -> None:
    mib = 1 << 20
    q = frame_memory_quota(256 * mib)
    assert (q.shared, q.reserved["installer"], q.reserved["admin"], q.per_pid) == (208 * mib, 32 * mib, 16 * mib,
                                                                                  128 * mib)
    a = q.take(1, RUNNER, 64 * mib)
    b = q.take(1, RUNNER, 64 * mib)
    assert a is not None and b is not None
    assert q.take(1, RUNNER, 64 * mib) is None  # that process's half
    c = q.take(2, RUNNER, 64 * mib)
    assert c is not None
    assert q.take(3, RUNNER, 64 * mib) is None  # 192 of the shared 208 MiB held: no room for another 64
    assert q.take(4, INSTALLER, 1 * mib) is not None  # the installer's frame still fits (shared, then reserve)
    assert q.take(4, INSTALLER, 31 * mib) is not None
    assert q.take(5, ADMIN, 16 * mib) is not None
    assert q.take(3, RUNNER, 16 * mib + 1) is None
    q.give(a)
    assert q.take(3, RUNNER, 64 * mib) is not None


@pytest.mark.parametrize("bad", [dict(total=4, reserved={"installer": 4}, per_pid=1),
                                 dict(total=0, reserved={}, per_pid=1), dict(total=4, reserved={}, per_pid=0)])
def test_quota_sizes_are_checked(bad: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError):
        Quota(**bad)


def test_small_connection_limits_keep_a_shared_part() -> None:
    for n in (1, 2, 7, 8, 9, 16):
        q = connection_quota(n)
        assert q.shared >= 1 and q.per_pid >= 1


def test_measured_config_limits_round_trip_and_are_checked() -> None:
    m = MeasuredConfig(frame_deadline_s=3, max_pending_frame_bytes=1 << 28)
    assert MeasuredConfig.from_json(m.to_json()) == m
    old = {k: v for k, v in MeasuredConfig().to_json().items() if k not in ("frameDeadlineSeconds",
                                                                           "maxPendingFrameBytes")}
    assert MeasuredConfig.from_json(old) == MeasuredConfig()  # devices provisioned before these existed
    for key, value in (("frameDeadlineSeconds", 0), ("maxPendingFrameBytes", 64 * 1024 * 1024),
                       ("frameDeadlineSeconds", 1.5), ("maxPendingFrameBytes", True)):
        with pytest.raises(TeeError) as err:
            MeasuredConfig.from_json({**MeasuredConfig().to_json(), key: value})
        assert err.value.code == "TEE_CONFIG_INVALID"
