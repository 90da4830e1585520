"""Resize stage: numbered 512x512 RGB JPEGs in the work dir, made on all cores.

The worker processes only read the source and write `resized/N.jpg`; the state is written here,
in the event loop's thread, one short transaction per image as results arrive.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import Executor
from pathlib import Path

import structlog
from tqdm.auto import tqdm

from ghibli_async.config import Config
from ghibli_async.imaging import TEMP_SUFFIX, ResizeOutcome, resize_file
from ghibli_async.state import ResizeJob, StateStore

log = structlog.get_logger(__name__)


def output_name(number: int) -> str:
    return f"{number}.jpg"


async def run_resize(
    store: StateStore, config: Config, pool: Executor, *, workers: int, limit: int | None
) -> Counter[str]:
    """Resize every numbered image still pending; returns how many ended in each status."""
    resized_dir = config.resized_dir
    resized_dir.mkdir(parents=True, exist_ok=True)
    _remove_partial_files(resized_dir)
    _requeue_vanished(store, resized_dir)
    store.assign_output_numbers(require_kept=config.stages.filter)
    jobs = store.resize_jobs(limit=limit)
    tally: Counter[str] = Counter()
    if not jobs:
        return tally
    log.info("resize_start", images=len(jobs), workers=workers, size=config.resize.size)
    loop = asyncio.get_running_loop()

    def submit(job: ResizeJob) -> asyncio.Future[ResizeOutcome]:
        dest = str(resized_dir / output_name(job.number))
        return loop.run_in_executor(pool, resize_file, job.source_path, dest, config.resize)

    with tqdm(total=len(jobs), desc="resize", unit="img") as bar:
        async for job, outcome in _bounded(jobs, submit, window=workers * 4):
            _record(store, job, outcome)
            tally[outcome.status] += 1
            bar.update()
    return tally


async def _bounded(
    jobs: Iterable[ResizeJob], submit: Callable[[ResizeJob], asyncio.Future[ResizeOutcome]], *, window: int
) -> AsyncIterator[tuple[ResizeJob, ResizeOutcome]]:
    """Yield (job, outcome) as they finish, with at most `window` jobs in the pool at once."""
    in_flight: dict[asyncio.Future[ResizeOutcome], ResizeJob] = {}
    queue = iter(jobs)
    try:
        while True:
            while len(in_flight) < window and (job := next(queue, None)) is not None:
                in_flight[submit(job)] = job
            if not in_flight:
                return
            done, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                yield in_flight.pop(future), future.result()
    finally:
        for future in in_flight:
            future.cancel()


def _record(store: StateStore, job: ResizeJob, outcome: ResizeOutcome) -> None:
    store.record_resize(job.image_id, outcome.status, reason=outcome.reason, size=outcome.source_size)
    if outcome.status == "failed":
        log.warning("resize_failed", path=job.source_path, reason=outcome.reason)


def _remove_partial_files(resized_dir: Path) -> None:
    """Temporary files left by a killed run; their images are still pending in the state."""
    for partial in resized_dir.glob(f"*{TEMP_SUFFIX}"):
        partial.unlink(missing_ok=True)


def _requeue_vanished(store: StateStore, resized_dir: Path) -> None:
    """Images marked resized whose file someone deleted go back to the queue."""
    present = {entry.name for entry in resized_dir.iterdir()}
    missing = [number for number in store.resized_numbers() if output_name(number) not in present]
    if missing:
        log.warning("resized_files_missing", count=len(missing), effect="resizing them again")
        store.forget_resized(missing)
