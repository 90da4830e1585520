"""Resize stage: numbered RGB JPEGs in the work dir (512 px squares by default, person-aware; or
aspect-ratio buckets), made on all cores.

The worker processes only read the source and write `resized/N.jpg`; the state is written here,
in the event loop's thread, one short transaction per image as results arrive.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path

import structlog
from tqdm.auto import tqdm

from ghibli_async.atomic import remove_partials
from ghibli_async.config import Config
from ghibli_async.errors import MachineError
from ghibli_async.filter_rules import box_counts
from ghibli_async.geometry import bucket_spread
from ghibli_async.imaging import ResizeOutcome, resize_file, too_small
from ghibli_async.stages.base import PlanContext, RunContext, StageReport, capped, counts_line
from ghibli_async.state import State
from ghibli_async.state.results import ResizeJob
from ghibli_async.statuses import Status
from ghibli_async.thumbs import thumb_path
from ghibli_async.workdir import output_name

log = structlog.get_logger(__name__)


class ResizeStage:
    name = "resize"
    label = "resized"
    uses_pool = True
    after_stop = False
    status_column: str | None = "resize_status"
    skip: str | None = "resize new frames"

    def plan(self, context: PlanContext) -> None:
        config, counts = context.config, context.counts
        if not config.stages.resize:
            context.says(self.name, "off")
            return
        waiting = context.fresh + (counts.of(self.status_column).get(Status.PENDING.value, 0) if counts else 0)
        kept = " (those the filter keeps)" if config.stages.filter else ""
        context.says(self.name, f"up to {capped(waiting, context.limit)} frames to resize{kept}")

    def enabled(self, config: Config) -> bool:
        return config.stages.resize

    async def run(self, context: RunContext) -> StageReport:
        counts, sizes = await run_resize(context)
        line = counts_line(counts)
        if context.config.resize.fit == "bucket" and sizes:  # how the frames spread over the buckets
            line += f"; buckets: {bucket_spread(sizes)}"
        return StageReport(counts, shown=counts.total(), line=line)


async def run_resize(context: RunContext) -> tuple[Counter[str], Counter[tuple[int, int]]]:
    """Resize every numbered image still pending; returns how many ended in each status, and how
    many images of each size were written."""
    state, config, workers = context.state, context.config, context.pool.workers
    resized_dir = config.resized_dir
    resized_dir.mkdir(parents=True, exist_ok=True)
    remove_partials(resized_dir)  # left by a killed run; their images are still pending
    _requeue_vanished(state, resized_dir)
    if again := state.results.requeue_too_small(lambda size: not too_small(size, config.resize)):
        log.info("too_small_again", count=again, reason="kept by hand, or the resize settings take them now")
    if again := state.results.requeue_other_geometry(config.resize.signature):
        log.info("resize_again", count=again, geometry=config.resize.signature, effect="captions are kept")
    state.results.assign_output_numbers(require_kept=config.stages.filter)
    jobs = state.results.resize_jobs(limit=context.limit)
    tally: Counter[str] = Counter()
    sizes: Counter[tuple[int, int]] = Counter()
    if not jobs:
        return tally, sizes
    log.info("resize_start", images=len(jobs), workers=workers, size=config.resize.size)
    loop = asyncio.get_running_loop()
    pool = context.pool.executor()

    def submit(job: ResizeJob) -> asyncio.Future[ResizeOutcome]:
        dest = str(resized_dir / output_name(job.number))
        settings = config.resize.model_copy(update={"allow_upscale": True}) if job.upscale else config.resize
        persons = [
            (box.x1, box.y1, box.x2, box.y2)
            for key, boxes in job.boxes.items()
            for box in boxes
            if box_counts(box, key, config.filter)
        ]
        return loop.run_in_executor(pool, resize_file, job.source_path, dest, settings, persons)

    with tqdm(total=len(jobs), desc="resize", unit="img") as bar:
        async for job, outcome in _bounded(
            jobs, submit, window=workers * 4, keep_going=lambda: not context.stop.requested
        ):
            _record(state, config, job, outcome)
            tally[outcome.status.value] += 1
            if outcome.output_size:
                sizes[outcome.output_size] += 1
            bar.update()
    return tally, sizes


async def _bounded(
    jobs: Iterable[ResizeJob],
    submit: Callable[[ResizeJob], asyncio.Future[ResizeOutcome]],
    *,
    window: int,
    keep_going: Callable[[], bool],
) -> AsyncIterator[tuple[ResizeJob, ResizeOutcome]]:
    """Yield (job, outcome) as they finish, with at most `window` jobs in the pool at once; no new
    job once `keep_going()` is false (the jobs in the pool still finish)."""
    in_flight: dict[asyncio.Future[ResizeOutcome], ResizeJob] = {}
    queue = iter(jobs)
    try:
        while True:
            while len(in_flight) < window and keep_going() and (job := next(queue, None)) is not None:
                in_flight[submit(job)] = job
            if not in_flight:
                return
            done, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                yield in_flight.pop(future), future.result()
    finally:
        for future in in_flight:
            future.cancel()


def _record(state: State, config: Config, job: ResizeJob, outcome: ResizeOutcome) -> None:
    if outcome.machine:
        raise MachineError(
            f"resize stopped: {outcome.reason} (with {Path(job.source_path).name}); free space or fix the "
            "permissions of the work dir, then rerun: the frames not resized stay pending"
        )
    state.results.record_resize(
        job.image_id,
        outcome.status,
        reason=outcome.reason,
        size=outcome.source_size,
        signature=config.resize.signature,
        window=outcome.window,
        written=outcome.output_size,
    )
    if outcome.status == Status.DONE:  # a thumbnail of the frame as it was shown before is stale now
        thumb_path(config, job.image_id).unlink(missing_ok=True)
    if outcome.status == Status.FAILED:
        log.warning("resize_failed", path=job.source_path, reason=outcome.reason)


def _requeue_vanished(state: State, resized_dir: Path) -> None:
    """Images marked resized whose file someone deleted go back to the queue."""
    present = {entry.name for entry in resized_dir.iterdir()}
    missing = [number for number in state.results.resized_numbers() if output_name(number) not in present]
    if missing:
        log.warning("resized_files_missing", count=len(missing), effect="resizing them again")
        state.results.forget_resized(missing)
