"""Hot-swap bookkeeping: which loaded model serves, and when an old one may be unloaded.

A batch *leases* the active model for its duration. A swap makes the new model active at once for
every later batch; the old one is retired and unloaded only when its last lease returns, so a batch
in progress is never cut off and no message is dropped or answered twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

H = TypeVar("H")


@dataclass(eq=False)
class Loaded(Generic[H]):
    handle: H
    name: str
    version: str
    security_version: int | None = None
    leases: int = field(default=0)
    retired: bool = field(default=False)


class ModelSlot(Generic[H]):
    def __init__(self) -> None:
        self.active: Loaded[H] | None = None
        self._retired: list[Loaded[H]] = []

    def acquire(self) -> Loaded[H] | None:
        model = self.active
        if model is not None:
            model.leases += 1
        return model

    def release(self, model: Loaded[H]) -> list[H]:
        """Return a lease; handles that may be unloaded now."""
        model.leases -= 1
        return self._collect()

    def swap(self, new: Loaded[H] | None) -> list[H]:
        """Make ``new`` the active model (None: serve nothing); handles that may be unloaded now."""
        old = self.active
        self.active = new
        if old is not None and old is not new:
            old.retired = True
            self._retired.append(old)
        return self._collect()

    def _collect(self) -> list[H]:
        free = [m for m in self._retired if m.leases <= 0]
        self._retired = [m for m in self._retired if m.leases > 0]
        return [m.handle for m in free]

    @property
    def retired_count(self) -> int:
        return len(self._retired)
