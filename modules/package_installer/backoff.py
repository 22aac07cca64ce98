"""Exponential backoff with full jitter (pure: the random source and the clock are parameters)."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    base_s: float = 2.0
    cap_s: float = 60.0
    factor: float = 2.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the ``attempt``-th failure (1-based): uniform in [ceiling/2, ceiling].

        Half-jitter rather than full jitter keeps a floor, so a fleet that failed together does not
        come back in the same second and a single device never retries in a tight loop.
        """
        ceiling = min(self.cap_s, self.base_s * self.factor ** max(0, attempt - 1))
        rng = rng or random.SystemRandom()
        return ceiling / 2 + rng.random() * ceiling / 2
