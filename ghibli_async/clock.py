"""Time as the caption engine sees it: passed in, never read deep inside policy code.

`SystemClock` is real time. Its `now()` and `sleep()` go through the running event loop, so a
loop whose time is virtual (the tests') makes quota minutes and days pass at once.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic scale (only differences mean anything)."""

    def wall(self) -> datetime:
        """The current date and time (UTC), for quota days."""

    async def sleep(self, seconds: float | None, wake: asyncio.Event | None = None) -> None:
        """Wait `seconds` of this clock's time (None: no limit), or until `wake` is set."""


class LoopClock:
    """`now` and `sleep` on the running event loop's time; subclasses say what the wall time is."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float | None, wake: asyncio.Event | None = None) -> None:
        if wake is None:
            await asyncio.sleep(max(0.0, seconds or 0.0))
            return
        try:
            await asyncio.wait_for(wake.wait(), None if seconds is None else max(0.0, seconds))
        except asyncio.TimeoutError:
            pass


class SystemClock(LoopClock):
    def wall(self) -> datetime:
        return datetime.now(timezone.utc)
