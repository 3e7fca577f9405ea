"""A monotonic clock a test sets: ``clock.now += 300`` instead of waiting 300 s."""

from __future__ import annotations


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
