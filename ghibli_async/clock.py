"""Time as the caption engine sees it: passed in, never read deep inside policy code.

`SystemClock` is real time. `ScaledClock` runs `speed` times faster, for tests and benchmarks that
compress minutes and days on both sides (the engine and the fake server share one instance).
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic scale (only differences mean anything)."""

    def wall(self) -> datetime:
        """The current date and time (UTC), for quota days."""

    async def sleep(self, seconds: float | None, wake: asyncio.Event | None = None) -> None:
        """Wait `seconds` of this clock's time (None: no limit), or until `wake` is set."""


async def _sleep_real(seconds: float | None, wake: asyncio.Event | None) -> None:
    if wake is None:
        await asyncio.sleep(max(0.0, seconds or 0.0))
        return
    try:
        await asyncio.wait_for(wake.wait(), None if seconds is None else max(0.0, seconds))
    except asyncio.TimeoutError:
        pass


class SystemClock:
    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> datetime:
        return datetime.now(timezone.utc)

    async def sleep(self, seconds: float | None, wake: asyncio.Event | None = None) -> None:
        await _sleep_real(seconds, wake)


class ScaledClock:
    """Emulated time running `speed` times faster than real time, starting at `start`."""

    def __init__(self, speed: float, start: datetime | None = None) -> None:
        self.speed = speed
        self._origin = time.monotonic()
        self._start = start or datetime.now(timezone.utc)

    def now(self) -> float:
        return (time.monotonic() - self._origin) * self.speed

    def wall(self) -> datetime:
        return self._start + timedelta(seconds=self.now())

    async def sleep(self, seconds: float | None, wake: asyncio.Event | None = None) -> None:
        await _sleep_real(None if seconds is None else seconds / self.speed, wake)
