"""Who may hold how much of the TEE service: connections and the memory of unfinished frames.

Pure decisions, no I/O and no locks (the server calls them under its own lock). Both resources are
shared the same way (:class:`Quota`):

- a part of the total is **reserved** for a role: only a caller holding that role may use it. The
  installer and admin roles have reserves, the runner has none, so however many connections and
  half-sent frames runner-role processes hold, an install and an operator's inspection still get
  through;
- the rest is **shared** by every role; a caller takes from the shared part first and from the
  reserve of a role it holds only when the shared part is full (so the reserve is still there when
  it is needed);
- no single process (peer pid, recorded by the kernel at connect) holds more than ``per_pid``,
  so one process cannot take the shared part alone; a role's own share is the shared part plus its
  reserve, which bounds a role however many processes it forks.

In the development single-uid mode one uid holds every role, so the reserves cannot tell the
runner from the installer there; the per-process bound still applies.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

#: The roles a reserve is kept for, in the order a caller holding several draws on them.
RESERVED_ROLES = ("installer", "admin")
SHARED = ""  # the pool name of the shared part


@dataclass(frozen=True)
class Grant:
    """What one :meth:`Quota.take` handed out: give it back with :meth:`Quota.give`."""

    pid: int
    pool: str  # SHARED or the role whose reserve it came from
    amount: int


@dataclass
class Quota:
    total: int
    reserved: Mapping[str, int]
    per_pid: int
    _used: Counter[str] = field(default_factory=Counter)
    _by_pid: Counter[int] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        if self.total < 1 or self.per_pid < 1 or any(r < 0 for r in self.reserved.values()):
            raise ValueError("quota sizes must be positive")
        if sum(self.reserved.values()) >= self.total:
            raise ValueError("the reserves must leave a shared part")

    @property
    def shared(self) -> int:
        return self.total - sum(self.reserved.values())

    def take(self, pid: int, roles: frozenset[str], amount: int = 1) -> Grant | None:
        """A grant of ``amount`` for a caller ``pid`` holding ``roles``, or None (over a quota)."""
        if amount < 0 or self._by_pid[pid] + amount > self.per_pid:
            return None
        pool: str | None = None
        if self._used[SHARED] + amount <= self.shared:
            pool = SHARED
        else:
            for role in RESERVED_ROLES:
                if role in roles and self._used[role] + amount <= self.reserved.get(role, 0):
                    pool = role
                    break
        if pool is None:
            return None
        self._used[pool] += amount
        self._by_pid[pid] += amount
        return Grant(pid, pool, amount)

    def give(self, grant: Grant) -> None:
        self._used[grant.pool] -= grant.amount
        self._by_pid[grant.pid] -= grant.amount
        if self._by_pid[grant.pid] <= 0:
            del self._by_pid[grant.pid]

    def used(self, pool: str = SHARED) -> int:
        return self._used[pool]

    def held_by(self, pid: int) -> int:
        return self._by_pid[pid]

    def in_use(self) -> int:
        return sum(self._used.values())


def connection_quota(max_connections: int) -> Quota:
    """``maxConnections`` split: 1/8 kept for the installer, 1/16 for admin (at least one each from
    8 connections up), a quarter at most per process. Default 64: installer 8, admin 4, shared 52,
    16 per process (a client pools 4)."""
    reserved = {"installer": max(1, max_connections // 8), "admin": max(1, max_connections // 16)}
    if max_connections < 8:
        reserved = {"installer": 0, "admin": 0}  # too few to split; a configuration choice
    return Quota(max_connections, reserved, max(1, max_connections // 4))


def frame_memory_quota(max_pending_bytes: int) -> Quota:
    """The bytes of frames being received (a frame's declared length, from its length prefix until
    its last byte): 1/8 kept for the installer, 1/16 for admin, half at most per process. Their
    frames are small (the package travels as a descriptor), so these reserves are ample."""
    reserved = {"installer": max_pending_bytes // 8, "admin": max_pending_bytes // 16}
    return Quota(max_pending_bytes, reserved, max(1, max_pending_bytes // 2))
