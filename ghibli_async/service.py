"""`run --wait` and `run --watch`: the pipeline as a service that runs passes until the work is done.

A pass is one `Pipeline.run`. After each, a pure policy (`next_step`) decides: end, run again
(new frames arrived), sleep until the quota resets, try a failing caption service again later, or
watch the input folder. Waits are slept in slices that re-read the wall clock, so a machine that
suspends or a clock that jumps ends the wait on time rather than one long sleep late. Between
passes the work dir's lock is let go, so `keep`, `reject`, `retry` or `export` can run meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum

import structlog

from ghibli_async.caption.buckets import next_quota_reset
from ghibli_async.errors import NoInput, UserError, WorkDirBusy
from ghibli_async.pipeline import Pipeline, RunReport
from ghibli_async.run_end import RunEnd
from ghibli_async.state import State
from ghibli_async.state.runs import HEARTBEAT_S, ActivityStore, Doing
from ghibli_async.statuses import Status
from ghibli_async.watch import InputWatcher

log = structlog.get_logger(__name__)

SLICE_S = 60.0  # a wait re-reads the wall clock (and asks the watcher) at least this often
RESET_MARGIN_S = 60.0  # start a little after midnight Pacific: the server's day must have turned too
RETRY_AFTER_S = 600.0  # a caption service that kept failing is tried again after this long
BUSY_RETRY_S = 30.0  # another command holds the work dir: look again after this long


class Step(Enum):
    END = "end"
    RUN_AGAIN = "run again"
    WAIT_FOR_QUOTA = "wait for quota"
    RETRY_LATER = "retry later"
    WATCH = "watch"


def next_step(end: RunEnd, *, wait: bool, watch: bool, input_changed: bool, captions_waiting: int) -> Step:
    """What a service does after a pass that ended with `end` (pure: table-tested)."""
    if end in (RunEnd.INTERRUPTED, RunEnd.TERMINATED, RunEnd.NO_KEYS):
        return Step.END  # asked to stop; or nothing can caption until the user fixes the keys
    if watch and input_changed:
        return Step.RUN_AGAIN
    if end == RunEnd.QUOTA:
        return Step.WAIT_FOR_QUOTA if wait else Step.END
    if end == RunEnd.FAILED and wait and captions_waiting:
        return Step.RETRY_LATER  # the caption service kept failing (network, outage): not the images
    return Step.WATCH if watch else Step.END


@dataclass
class ServiceReport:
    """What a service did: the last pass in full, and per stage the summary's number over all passes."""

    last: RunReport | None = None  # None: no pass found anything to work on
    passes: int = 0
    shown: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0
    stopped_by: RunEnd | None = None

    def add(self, report: RunReport) -> None:
        self.passes += 1
        self.shown.update({name: stage.shown for name, stage in report.stages.items()})
        self.last = report  # only the last pass is kept: memory stays flat over days of passes

    @property
    def end(self) -> RunEnd:
        """The exit code: a stop the user asked for, else how the last pass ended."""
        return self.stopped_by or (self.last.end if self.last is not None else RunEnd.DONE)


class Service:
    """Runs the pipeline's passes; `wait` sleeps through quota resets, `watch` (which implies `wait`)
    also takes frames and videos that appear in the input folder, and only a stop ends it."""

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        wait: bool = False,
        watch: bool = False,
        poll: bool = False,
        settle_s: float = 5.0,
        on_idle: Callable[[int], None] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.clock = pipeline.clock
        self.wait = wait or watch
        self.watch = watch
        self._poll, self._settle_s = poll, settle_s
        self._on_idle = on_idle  # called with the number of passes so far when watching begins (tests)
        self._woken = asyncio.Event()
        self._state: State | None = None  # its own connection, for the activity row between passes
        pipeline.modes = ", ".join(mode for mode, on in (("wait", self.wait), ("watch", watch)) if on)

    async def run(self, *, limit: int | None = None) -> ServiceReport:
        started = time.monotonic()
        report = ServiceReport()
        config = self.pipeline.config
        watcher = (
            InputWatcher(
                config.paths.input_dir,
                ignore=(config.paths.work_dir, config.paths.output_dir),
                force_polling=self._poll,
                settle_s=self._settle_s,
            )
            if self.watch
            else None
        )
        stop = self.pipeline.stop
        try:
            with stop.listening(self._wake_on_stop(watcher)):
                await self._serve(report, watcher, limit)
        finally:
            if watcher is not None:
                watcher.close()
            self._mark_ended()
        report.stopped_by = stop.end
        if report.last is not None and report.last.stopped_by is None:
            report.last.stopped_by = stop.end  # stopped between passes: its summary says so too
        report.elapsed_s = time.monotonic() - started
        return report

    def _mark_ended(self) -> None:
        """`status` then says no run is going (a row another process holds is left alone)."""
        state_path = self.pipeline.config.state_path
        if self._state is None and state_path.exists():
            with suppress(UserError):
                self._state = State.open(state_path)
        if self._state is not None:
            self._state.activity.doing(os.getpid(), Doing.ENDED, self.clock.wall())
            self._state.close()

    async def _serve(self, report: ServiceReport, watcher: InputWatcher | None, limit: int | None) -> None:
        stop = self.pipeline.stop
        while not stop.requested:
            last = await self._pass(limit, first=report.passes == 0)
            if last is not None:
                report.add(last)
            if stop.requested:
                return
            changed = await _new_input(watcher)
            end = last.end if last is not None else RunEnd.DONE
            step = next_step(
                end, wait=self.wait, watch=self.watch, input_changed=changed, captions_waiting=_captions_waiting(last)
            )
            if step == Step.END:
                return
            if step == Step.WAIT_FOR_QUOTA:
                await self._sleep_until(next_quota_reset(self.clock.wall()), Doing.WAITING_FOR_QUOTA, watcher)
            elif step == Step.RETRY_LATER:
                await self._sleep_until(self.clock.wall(), Doing.RETRYING_LATER, watcher, RETRY_AFTER_S)
            elif step == Step.WATCH:
                await self._watch(watcher, report.passes)

    async def _pass(self, limit: int | None, *, first: bool) -> RunReport | None:
        """One run of the pipeline; None when the input folder is empty and the service watches it.
        Another command holding the work dir makes a later pass wait its turn."""
        while True:
            try:
                return await self.pipeline.run(limit=limit)
            except NoInput:
                if not self.watch:
                    raise
                log.info("input_empty", folder=str(self.pipeline.config.paths.input_dir), watching=True)
                return None
            except WorkDirBusy:
                if first:
                    raise
                await self._sleep_until(self.clock.wall(), Doing.WAITING_FOR_LOCK, None, BUSY_RETRY_S)
                if self.pipeline.stop.requested:
                    return None

    async def _sleep_until(
        self, target: datetime, doing: Doing, watcher: InputWatcher | None, extra_s: float = RESET_MARGIN_S
    ) -> None:
        """Until the wall clock reads `target + extra_s`, a stop, or new frames (when watching)."""
        until = target + timedelta(seconds=extra_s)
        self._say(doing, until)
        while not self.pipeline.stop.requested:
            left = (until - self.clock.wall()).total_seconds()
            if left <= 0:
                return
            await self.clock.sleep(min(left, SLICE_S), self._woken)
            self._activity().heard(os.getpid(), self.clock.wall())
            if await _new_input(watcher):
                return  # a pass takes the new frames now; the wait goes on after it

    async def _watch(self, watcher: InputWatcher | None, passes: int) -> None:
        """Until frames or videos appear in the input folder (and copying them has finished), or a stop."""
        assert watcher is not None
        self._say(Doing.WATCHING, None)
        if self._on_idle is not None:
            self._on_idle(passes)
        heard = self.clock.wall()
        while not self.pipeline.stop.requested:
            if await _new_input(watcher):
                return
            if (self.clock.wall() - heard).total_seconds() >= HEARTBEAT_S:
                heard = self.clock.wall()
                self._activity().heard(os.getpid(), heard)

    def _say(self, doing: Doing, until: datetime | None) -> None:
        """Once per wait: in the log (local time) and in the activity row `status` reads."""
        when = {"until": f"{until.astimezone():%Y-%m-%d %H:%M %Z}"} if until else {}
        log.info(doing.value.replace(" ", "_"), **when)
        self._activity().doing(os.getpid(), doing, self.clock.wall(), until=until)

    def _activity(self) -> ActivityStore:
        if self._state is None:
            self._state = State.open(self.pipeline.config.state_path)
            self._state.activity.claim(os.getpid(), self.pipeline.modes, self.clock.wall())
        return self._state.activity

    def _wake_on_stop(self, watcher: InputWatcher | None) -> Callable[[], None]:
        def wake() -> None:
            self._woken.set()
            if watcher is not None:
                watcher.close()

        return wake


async def _new_input(watcher: InputWatcher | None) -> bool:
    """Did frames or videos appear since the last look? If so, wait for the copy to finish first."""
    if watcher is None or not await watcher.changed():
        return False
    await watcher.quiet()
    log.info("new_input", effect="a pass takes the new frames now")
    return True


def _captions_waiting(report: RunReport | None) -> int:
    if report is None or report.counts is None:
        return 0
    return report.counts.caption.get(Status.PENDING.value, 0)
