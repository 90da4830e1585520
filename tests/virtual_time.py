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
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from typing_extensions import TypeVarTuple, Unpack

from ghibli_async.clock import LoopClock

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

START = datetime(2026, 11, 26, 9, 0, tzinfo=timezone.utc)  # 01:00 in Los Angeles: a fresh quota day
_THREAD_POLL_S = 0.05  # real seconds to wait for a thread at a time


class _ClockJumpingSelector(selectors.DefaultSelector):
    """Answers at once when a socket is ready; otherwise, instead of sleeping, moves the loop's
    clock to the next timer (or waits for real while a thread or process works for the loop)."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if self._loop.outside_jobs:  # a thread or process is working: its answer wakes the loop
            return super().select(_THREAD_POLL_S if timeout is None else min(timeout, _THREAD_POLL_S))
        if timeout is None:  # no timer at all: only the outside world can wake us
            return super().select(None)
        self._loop.virtual_now += timeout
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self.virtual_now = 0.0
        self.outside_jobs = 0
        super().__init__(_ClockJumpingSelector(self))

    def time(self) -> float:
        return self.virtual_now

    def run_in_executor(
        self, executor: Executor | None, func: Callable[[Unpack[Ts]], T], *args: Unpack[Ts]
    ) -> asyncio.Future[T]:
        future = super().run_in_executor(executor, func, *args)
        self.outside_jobs += 1
        future.add_done_callback(self._outside_job_done)
        return future

    def _outside_job_done(self, _: asyncio.Future[Any]) -> None:
        self.outside_jobs -= 1


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
        self._loop: asyncio.AbstractEventLoop | None = None

    def now(self) -> float:
        """The running loop's time; after a run, where its loop stopped (a `status` after the run)."""
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            if self._loop is None:
                return 0.0
        return self._loop.time()

    def wall(self) -> datetime:
        return self._start + timedelta(seconds=self.now())


class SteadyClock(LoopClock):
    """Real time on a fixed calendar: the wall starts at `start` when the clock is made and runs with
    the monotonic clock, so a test on real time never meets a quota-day change by chance of when
    it runs (for a CLI run in this process and the fake server in its thread, both given this clock)."""

    def __init__(self, start: datetime = START) -> None:
        self._start, self._made = start, time.monotonic()

    def wall(self) -> datetime:
        return self._start + timedelta(seconds=time.monotonic() - self._made)
