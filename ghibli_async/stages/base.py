"""The one shape every stage has: a name, whether it is on, its status column and `--skip-` flag,
its `--dry-run` line (`plan`) and `run(context) -> StageReport`.

Stages talk to each other only through the state; the pipeline runs the enabled ones in order and
builds the summary from their reports, the CLI makes its skip flags and `retry` choices from them,
and `--dry-run` asks each for its line: a new stage is one module plus its config section and its
place in `STAGES`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ghibli_async.run_end import RunEnd

if TYPE_CHECKING:
    from ghibli_async.clock import Clock
    from ghibli_async.config import ApiKey, Config
    from ghibli_async.detect import Detector
    from ghibli_async.inputs import InputFiles
    from ghibli_async.pool import LazyPool
    from ghibli_async.state import State
    from ghibli_async.state.progress import Counts


class StopRequest:
    """A polite stop (the first Ctrl-C or SIGTERM): stages take no new work, and work in flight
    (requests already paid for) may finish and be recorded."""

    def __init__(self) -> None:
        self.end: RunEnd | None = None
        self._listeners: list[Callable[[], None]] = []

    @property
    def requested(self) -> bool:
        return self.end is not None

    def request(self, end: RunEnd = RunEnd.INTERRUPTED) -> None:
        if self.end is None:
            self.end = end
            for listener in self._listeners:
                listener()

    @contextmanager
    def listening(self, listener: Callable[[], None]) -> Iterator[None]:
        """`listener()` is called on a request made while inside; a service runs many passes over one
        StopRequest, so each pass's listeners leave with it."""
        self._listeners.append(listener)
        try:
            yield
        finally:
            self._listeners.remove(listener)


@dataclass
class RunContext:
    """What a stage may use during one run."""

    state: State
    config: Config
    pool: LazyPool
    clock: Clock
    keys: list[ApiKey]
    detectors: list[Detector]
    inputs: InputFiles  # the input folder as last walked (the extract stage walks it again)
    limit: int | None = None  # at most this many images per stage
    stop: StopRequest = field(default_factory=StopRequest)


@dataclass
class StageReport:
    """What one stage did in this run: counts by outcome, and its line of the summary."""

    counts: Counter[str] = field(default_factory=Counter)
    shown: int = 0  # the number in the summary's column
    line: str | None = None  # the rest of its summary line; None: nothing to say
    notes: list[str] = field(default_factory=list)  # what the user should know (why it stopped, what it retired)
    end: RunEnd = RunEnd.DONE  # how the stage ended, for the exit code
    resume_at: str | None = None  # when a rerun can go on (a quota reset), in local time


@dataclass
class RunPlan:
    """What a run would do (`--dry-run`), stage by stage, and what it would trip on."""

    stages: list[tuple[str, str]] = field(default_factory=list)  # (stage, what it would do)
    blocking: list[str] = field(default_factory=list)  # what would stop the run before any work
    warnings: list[str] = field(default_factory=list)  # what would stop a stage, or leave work undone

    def text(self) -> str:
        lines = ["Dry run, nothing written:"]
        lines += [f"  {stage:<9} {what}" for stage, what in self.stages]
        lines += [f"Would stop the run: {problem}" for problem in self.blocking]
        lines += [f"Warning: {warning}" for warning in self.warnings]
        return "\n".join(lines)


@dataclass
class PlanContext:
    """What a stage's plan line is made from: the input folder as walked, the state's counts
    (read only; None before the first run), and the frames new or changed since."""

    config: Config
    inputs: InputFiles
    counts: Counts | None
    fresh: int  # frames new or changed since the last scan
    extracted: set[str]  # videos whose frames are all extracted
    limit: int | None
    clock: Clock
    plan: RunPlan

    def says(self, stage: str, what: str) -> None:
        self.plan.stages.append((stage, what))


class Stage(Protocol):
    name: str  # as in `stages:` of the config and in the summary
    label: str  # the summary's word for what it did
    uses_pool: bool  # needs the worker processes (the pipeline closes them after the last such stage)
    after_stop: bool  # still runs when the user asked the run to stop (export: show what is done)
    status_column: str | None  # the images column of each frame's status here (`retry` puts failed ones back)
    skip: str | None  # what `--skip-<name>` does not do, for its help; None: the stage cannot be skipped

    def enabled(self, config: Config) -> bool: ...

    def plan(self, context: PlanContext) -> None:
        """Its line of `--dry-run` (and what would stop it), from the state as it is; writes nothing."""

    async def run(self, context: RunContext) -> StageReport: ...


def capped(count: int, limit: int | None) -> str:
    """`12`, or `5 (--limit 5 of 12)`."""
    return f"{min(count, limit)} (--limit {limit} of {count})" if limit is not None and count > limit else str(count)


def plural(count: int, noun: str) -> str:
    """`1 request`, `2 requests`."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def counts_line(counts: Counter[str], *, empty: str = "nothing to do") -> str:
    """`done 3, failed 1` in a stable order."""
    return ", ".join(f"{outcome} {n}" for outcome, n in sorted(counts.items())) or empty
