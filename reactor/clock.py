"""Clocks: where the reactor reads the time.

Every timer, idle timeout and heartbeat reads the loop's clock, never
``time.monotonic`` directly, so tests inject a :class:`FakeClock` and move time
by hand (Twisted's ``task.Clock``, trio's ``MockClock``).
"""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["Clock", "MonotonicClock", "FakeClock"]


class Clock(Protocol):
    """Anything with ``now() -> float`` (seconds, monotonic)."""

    def now(self) -> float: ...


class MonotonicClock:
    """The real clock: ``time.monotonic``."""

    __slots__ = ()

    now = staticmethod(time.monotonic)


class FakeClock:
    """A clock that moves only when told to; for tests.

    >>> clock = FakeClock(); clock.advance(1.5); clock.now()
    1.5
    """

    __slots__ = ("_now",)

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` (must not be negative)."""
        if seconds < 0:
            raise ValueError(f"cannot move a clock backwards by {seconds} s")
        self._now += seconds
