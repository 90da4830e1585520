"""An event loop on virtual time: when nothing is ready, the clock jumps to the next timer.

Quota minutes and days then pass at once, and no assertion depends on how loaded the machine is.
Work outside the loop's thread (aiofiles, `to_thread`, the process pool) is waited for in real
time before the clock may move, so a thread never finds that hours went by while it read a file.
Sockets on loopback are ready the moment the peer wrote, so a fake server served from the same
loop answers in zero virtual time plus whatever latency it sleeps.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from ghibli_async.clock import LoopClock

T = TypeVar("T")

START = datetime(2026, 11, 26, 9, 0, tzinfo=timezone.utc)  # 01:00 in Los Angeles: a fresh quota day
_THREAD_POLL_S = 0.05  # real seconds to wait for a thread at a time


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        super().__init__(selectors.DefaultSelector())
        self._now = 0.0
        self._outside_jobs = 0
        real_select = self._selector.select

        def select(timeout: float | None = None) -> list:
            ready = real_select(0)
            if ready or timeout == 0:
                return ready
            if self._outside_jobs:  # a thread or process is working: its answer wakes the loop
                return real_select(_THREAD_POLL_S if timeout is None else min(timeout, _THREAD_POLL_S))
            if timeout is None:  # no timer at all: only the outside world can wake us
                return real_select(None)
            self._now += timeout
            return []

        self._selector.select = select  # type: ignore[method-assign]

    def time(self) -> float:
        return self._now

    def run_in_executor(self, executor: Any, func: Any, *args: Any) -> asyncio.Future:
        future = super().run_in_executor(executor, func, *args)
        self._outside_jobs += 1
        future.add_done_callback(self._outside_job_done)
        return future

    def _outside_job_done(self, _: asyncio.Future) -> None:
        self._outside_jobs -= 1


def run_virtual(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run` on virtual time."""
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(main)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


class VirtualClock(LoopClock):
    """The engine's clock on the running loop's (virtual) time; the wall starts at `start`."""

    def __init__(self, start: datetime = START) -> None:
        self._start = start

    def wall(self) -> datetime:
        return self._start + timedelta(seconds=self.now())
