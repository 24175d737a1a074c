"""Backoff policy: pure functions, the database adds the delay to its own clock."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: ``base * factor**(attempt-1)``, capped, ±jitter."""

    base: float = 1.0
    factor: float = 2.0
    cap: float = 3600.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if self.base < 0 or self.cap < 0:
            raise ValueError("backoff base and cap must be >= 0 seconds")
        if self.factor < 1:
            raise ValueError("backoff factor must be >= 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("backoff jitter must be in [0, 1)")


def backoff_delay(policy: Backoff, attempt: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
    if attempt < 1:
        raise ValueError("attempt numbers start at 1")
    exponent = min(attempt - 1, 64)  # 2**64 s is past any cap; avoids float overflow
    raw = min(policy.cap, policy.base * policy.factor**exponent)
    if policy.jitter == 0 or raw == 0:
        return raw
    r = (rng or random).uniform(-policy.jitter, policy.jitter)
    return max(0.0, min(policy.cap, raw * (1 + r)))


def reconnect_delay(failures: int, base: float = 0.2, cap: float = 10.0) -> float:
    """Capped backoff for reconnecting to the database after ``failures`` consecutive errors."""
    if failures < 1:
        return 0.0
    return float(min(cap, base * 2 ** min(failures - 1, 16)))
