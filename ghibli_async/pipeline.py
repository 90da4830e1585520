"""Runs the enabled stages in order through one protocol, over one state; owns the event loop
(in `run_sync`) and the lazily started worker processes."""

from __future__ import annotations

import asyncio
import html
import multiprocessing
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import structlog
from filelock import FileLock, Timeout

from ghibli_async.clock import Clock, SystemClock
from ghibli_async.config import ApiKey, Config, load_caption_keys, load_config
from ghibli_async.detect import Detector, load_detectors
from ghibli_async.errors import UserError, WorkDirBusy
from ghibli_async.inputs import list_inputs
from ghibli_async.logs import configure_if_unset, log_file
from ghibli_async.pool import LazyPool
from ghibli_async.run_end import RunEnd, worst
from ghibli_async.stages.base import RunContext, Stage, StageReport, StopRequest
from ghibli_async.stages.caption import CaptionStage
from ghibli_async.stages.export import ExportResult, ExportStage, export_dataset, exported_count
from ghibli_async.stages.extract import ExtractStage
from ghibli_async.stages.filter import FilterStage
from ghibli_async.stages.resize import ResizeStage
from ghibli_async.stages.scan import ScanStage
from ghibli_async.state import State
from ghibli_async.state.progress import Counts, Problem
from ghibli_async.state.runs import HEARTBEAT_S, Doing
from ghibli_async.statuses import Override, Status
from ghibli_async.workdir import LOCK, LOG_FILE

log = structlog.get_logger(__name__)

MAX_PROBLEMS_SHOWN = 20
UNGUARDED_SCRIPT = (
    "ghibli_async.run() was called again while a worker process imported your script: put the call "
    'under `if __name__ == "__main__":`'
)

# Every stage, in the order a run goes through them; each is switched on or off by its `enabled`.
STAGES: tuple[Stage, ...] = (ExtractStage(), ScanStage(), FilterStage(), ResizeStage(), CaptionStage(), ExportStage())


@dataclass(repr=False)
class RunReport:
    """What one run did (per stage, in run order), and the dataset's totals and problems as it left
    them. Shown (in a notebook, or printed) it reads as the CLI's summary."""

    stages: dict[str, StageReport] = field(default_factory=dict)
    counts: Counts | None = None
    problems: list[Problem] = field(default_factory=list)  # every frame that failed or was blocked
    rejected: tuple[int, list[Problem]] = (0, [])  # how many frames are rejected, and the first of them
    elapsed_s: float = 0.0
    stopped_by: RunEnd | None = None  # Ctrl-C or SIGTERM, when the user stopped the run
    input_dir: Path | None = None
    output_dir: Path | None = None  # the dataset: images and metadata.jsonl

    @property
    def failed(self) -> list[str]:
        """Source paths of the frames that failed (a rerun tries them again)."""
        return [problem.source_path for problem in self.problems if problem.status == Status.FAILED.value]

    @property
    def blocked(self) -> list[str]:
        """Source paths of the frames every model refused for safety (never exported)."""
        return [problem.source_path for problem in self.problems if problem.status == Status.BLOCKED.value]

    def __str__(self) -> str:
        from ghibli_async.report import format_summary  # the report module imports this one

        return format_summary(self)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        """Jupyter shows the summary as it reads in a terminal."""
        return f"<pre>{html.escape(str(self))}</pre>"

    def outcomes(self, stage: str) -> Counter[str]:
        """What the stage did, by outcome (empty when it did not run)."""
        report = self.stages.get(stage)
        return report.counts if report else Counter()

    @property
    def notes(self) -> list[str]:
        return [note for report in self.stages.values() for note in report.notes]

    @property
    def end(self) -> RunEnd:
        """How the run ended; its value is the exit code."""
        return self.stopped_by or worst([report.end for report in self.stages.values()])


GRACE_S = 15.0  # after a polite stop, how long the requests in flight may take to land


class Pipeline:
    """One configured pipeline. `await pipeline.run()` in async code; `run_sync()` anywhere else,
    including a Jupyter cell (which already runs an event loop)."""

    def __init__(
        self,
        config: Config,
        *,
        keys: list[ApiKey] | None = None,
        clock: Clock | None = None,
        detectors: list[Detector] | None = None,
    ) -> None:
        self.config = config
        self.keys = load_caption_keys(config) if keys is None else keys
        self.clock = clock or SystemClock()
        self.detectors = detectors
        self.stop = StopRequest()  # `request()` it (from a signal handler) to stop politely
        self.modes = ""  # what `status` says this process is: "" one pass, else the service's modes

    async def run(self, *, limit: int | None = None) -> RunReport:
        """Every enabled stage in order; each resumes where the last run stopped.

        A cancel (a notebook's interrupt, which cancels the cell) stops the run politely, as the
        CLI's first Ctrl-C does: no new work, the requests in flight get up to GRACE_S to land,
        the export shows what is done, and the report comes back. A second cancel, or one after a
        polite stop was already asked for, stops at once."""
        configure_if_unset()
        work = asyncio.ensure_future(self._logged_run(limit))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            if work.done() and not work.cancelled():
                return work.result()
            if self.stop.requested:
                work.cancel()
                raise
        self.stop.request(RunEnd.INTERRUPTED)
        task = asyncio.current_task()
        if task is not None and hasattr(task, "uncancel"):  # Python 3.11+: this cancel is handled
            task.uncancel()
        log.warning(
            "stopping", effect=f"the requests in flight get up to {GRACE_S:.0f} s to land; again to stop at once"
        )
        try:
            return await asyncio.wait_for(asyncio.shield(work), GRACE_S)
        except (asyncio.CancelledError, asyncio.TimeoutError):
            work.cancel()
            raise asyncio.CancelledError from None

    async def _logged_run(self, limit: int | None) -> RunReport:
        with log_file(self.config.paths.work_dir / LOG_FILE):  # as a CLI run's, for a library run too
            return await self._run(limit=limit)

    async def _run(self, *, limit: int | None) -> RunReport:
        config = self.config
        started = time.monotonic()
        report = RunReport(input_dir=config.paths.input_dir, output_dir=config.paths.output_dir)
        stages = [stage for stage in STAGES if stage.enabled(config)]
        inputs = list_inputs(config)  # nothing to do: say so first
        # Detectors load before any work: a missing package or weights file stops the run at once.
        detectors = self.detectors
        if detectors is None:
            detectors = load_detectors(config.filter) if config.stages.filter else []
        ensure_writable(config.paths.work_dir, config.paths.output_dir.parent)  # before any work is paid for
        refuse_a_lost_state(config)
        with (
            exclusive(config.paths.work_dir),
            State.open(config.state_path) as state,
            LazyPool(config.resize.workers or os.cpu_count() or 1) as pool,
        ):
            context = RunContext(state, config, pool, self.clock, self.keys, detectors, inputs, limit, self.stop)
            run_id = state.runs.start({stage.name: stage in stages for stage in STAGES})
            async with self._heard_from(state):
                for index, stage in enumerate(stages):
                    if not any(later.uses_pool for later in stages[index:]):
                        pool.close()  # nothing left to decode or resize: free the workers' memory
                    if self.stop.requested and not stage.after_stop:
                        continue  # asked to stop: the export still shows what is done
                    log.debug("stage_start", stage=stage.name)
                    state.activity.doing(os.getpid(), stage.name, self.clock.wall())
                    report.stages[stage.name] = await stage.run(context)
            report.stopped_by = self.stop.end
            state.runs.finish(run_id, int(report.end))
            report.counts = state.progress.counts()
            report.problems = state.progress.problems()
            report.rejected = state.progress.rejected(limit=MAX_PROBLEMS_SHOWN)
        report.elapsed_s = time.monotonic() - started
        return report

    @asynccontextmanager
    async def _heard_from(self, state: State) -> AsyncIterator[None]:
        """For `status` in another terminal: this process's row in the activity table names the
        stage it is in and is touched every HEARTBEAT_S, so a killed run is seen as gone."""
        pid = os.getpid()
        state.activity.claim(pid, self.modes, self.clock.wall())

        async def beat() -> None:
            while True:
                await self.clock.sleep(HEARTBEAT_S)
                state.activity.heard(pid, self.clock.wall())

        heartbeat = asyncio.create_task(beat())
        try:
            yield
        finally:
            heartbeat.cancel()
            state.activity.doing(pid, Doing.FINISHED, self.clock.wall())

    def run_sync(self, *, limit: int | None = None) -> RunReport:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.run(limit=limit))
        # A notebook: its loop is busy with this cell, so the run gets a loop of its own in a thread.
        # An interrupt (Jupyter's stop button) cancels it there: the run stops politely and its
        # report comes back; a second interrupt stops it at once.
        loop = asyncio.new_event_loop()
        task = loop.create_task(self.run(limit=limit))
        with ThreadPoolExecutor(1, thread_name_prefix="ghibli_async") as thread:
            try:
                return _result_or_stop(thread.submit(loop.run_until_complete, task), loop, task)
            finally:
                # Closed only here, after the interrupt (if any) was handled: an interrupt that lands
                # as the run ends still finds the loop open to take the cancel.
                thread.submit(_close, loop).result()


def _result_or_stop(running: Future[RunReport], loop: asyncio.AbstractEventLoop, task: asyncio.Task) -> RunReport:
    try:
        return running.result()
    except KeyboardInterrupt:
        loop.call_soon_threadsafe(task.cancel)  # a polite stop (a no-op when the run has just ended)
    try:
        return running.result()
    except KeyboardInterrupt:
        loop.call_soon_threadsafe(task.cancel)  # the second: at once
        with suppress(asyncio.CancelledError):
            running.result()
        raise


def _close(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()


def _called_while_a_worker_imports_the_script() -> bool:
    """A worker process re-runs the user's script as `__mp_main__` to start; a call at its top
    level (no `if __name__ == "__main__":`) would start a whole run inside the worker."""
    if multiprocessing.parent_process() is None:
        return False
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_globals.get("__name__") == "__mp_main__":
            return True
        frame = frame.f_back
    return False


def run(config: Config | str | os.PathLike[str], *, limit: int | None = None) -> RunReport:
    """Blocking one-liner for scripts and notebooks: `ghibli_async.run("config.yaml")`; in a
    script, under `if __name__ == "__main__":` (worker processes import the script again)."""
    if _called_while_a_worker_imports_the_script():
        raise SystemExit(UNGUARDED_SCRIPT)
    return Pipeline(config if isinstance(config, Config) else load_config(config)).run_sync(limit=limit)


def ensure_writable(*folders: Path) -> None:
    """Each folder exists (made if need be) and takes a new file: a run must not pay for captions
    it then cannot write."""
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".ghibli-write-check-"):
                pass
        except OSError as exc:
            raise UserError(
                f"cannot write to {folder} ({exc.strerror or exc}): fix its permissions or choose another "
                "folder in paths (work_dir, output_dir)"
            ) from None


@contextmanager
def exclusive(work_dir: Path) -> Iterator[None]:
    """One run per work dir: two would resize and caption the same images."""
    work_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(work_dir / LOCK, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise WorkDirBusy(f"another ghibli_async run is using {work_dir}: wait for it or stop it") from None
    except OSError as exc:
        raise UserError(
            f"cannot lock {work_dir} ({exc.strerror or exc}): the work dir must be writable; fix its permissions"
        ) from None
    try:
        yield
    finally:
        lock.release()


def refuse_a_lost_state(config: Config) -> None:
    """No state beside an exported dataset: the state was lost, and a fresh one would pay for every
    caption again and then empty the dataset to match."""
    if not config.state_path.exists() and (rows := exported_count(config.paths.output_dir)):
        raise UserError(
            f"no state at {config.state_path}, but {config.paths.output_dir} holds an exported dataset of {rows} "
            "images. Nothing was changed: run `python -m ghibli_async restore` to rebuild the state from it "
            "(no caption is paid for again), or move that folder away to start afresh"
        )


def export_only(config: Config) -> ExportResult:
    """Rewrite the output folder from the state, without running any stage."""
    if not config.state_path.exists():
        raise UserError(f"nothing to export: no state at {config.state_path} (run the pipeline first)")
    with exclusive(config.paths.work_dir), State.open(config.state_path) as state:
        return export_dataset(state, config)


def retry_failed(config: Config, stages: list[str]) -> dict[str, int]:
    """Failed frames of these stages back in the queue, for the next run."""
    if not config.state_path.exists():
        return {}
    with exclusive(config.paths.work_dir), State.open(config.state_path) as state:
        columns = {stage.name: stage.status_column for stage in STAGES if stage.name in stages and stage.status_column}
        return state.progress.retry_failed(columns)


def set_override(config: Config, source_paths: list[str], command: str) -> list[str]:
    """`keep` / `reject` frames by source path; returns the paths the state does not know."""
    if not config.state_path.exists():
        return source_paths
    with exclusive(config.paths.work_dir), State.open(config.state_path) as state:
        return state.filter.set_override(source_paths, Override(command))
