"""Runs the enabled stages in order over one state store; owns the event loop and the process pool."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from ghibli_async.clock import Clock, SystemClock
from ghibli_async.config import ApiKey, Config, load_api_keys, load_config
from ghibli_async.detect import Detector, load_detectors
from ghibli_async.errors import UserError
from ghibli_async.stages.caption import CaptionEngine, CaptionReport
from ghibli_async.stages.export import ExportResult, export_dataset
from ghibli_async.stages.extract import ExtractReport, run_extract
from ghibli_async.stages.filter import run_filter
from ghibli_async.stages.resize import run_resize
from ghibli_async.stages.scan import ScanResult, list_inputs, scan_inputs
from ghibli_async.state import Counts, Problem, StateStore

log = structlog.get_logger(__name__)

MAX_PROBLEMS_SHOWN = 20


@dataclass
class RunReport:
    """What one run did, and the dataset's totals and problems as the run left them."""

    extracted: ExtractReport | None = None
    scan: ScanResult | None = None
    filtered: Counter[str] = field(default_factory=Counter)
    resized: Counter[str] = field(default_factory=Counter)
    caption: CaptionReport | None = None
    export: ExportResult | None = None
    counts: Counts | None = None
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0


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
        self.keys = load_api_keys(config.base_dir, assignments=config.caption.keys) if keys is None else keys
        self.clock = clock or SystemClock()
        self.detectors = detectors

    async def run(self, *, limit: int | None = None) -> RunReport:
        """Scan, (filter), resize, (caption) and export; every stage resumes where the last run stopped."""
        config = self.config
        started = time.monotonic()
        report = RunReport()
        workers = config.resize.workers or os.cpu_count() or 1
        # Detectors load before any work: a missing package or weights file stops the run at once.
        inputs = list_inputs(config.paths.input_dir, config.extracted_dir)  # nothing to do: say so first
        detectors = self.detectors
        if detectors is None:
            detectors = load_detectors(config.filter) if config.stages.filter else []
        with (
            _exclusive(config.paths.work_dir),
            StateStore.open(config.state_path) as store,
            _process_pool(workers if config.stages.resize or config.stages.filter else 0) as pool,
        ):
            images = inputs.images
            if config.stages.extract and inputs.videos:
                report.extracted = await run_extract(store, config, inputs.videos)
                if report.extracted.frames:  # new frame files on disk: walk the folders once more
                    images = list_inputs(config.paths.input_dir, config.extracted_dir).images
            report.scan = scan_inputs(images, store)
            log.info("scan_done", found=report.scan.found, new=report.scan.new, duplicates=report.scan.duplicates)
            if config.stages.filter:
                report.filtered = await run_filter(store, config, pool, detectors, limit=limit)
            if config.stages.resize:
                report.resized = await run_resize(store, config, pool, workers=workers, limit=limit)
            if config.stages.caption and not self.keys:
                report.notes.append(_no_keys_note(store.caption_pending_count()))
            elif config.stages.caption:
                report.caption = await CaptionEngine(store, config, self.keys, self.clock).run(limit=limit)
                if report.caption.stopped:
                    report.notes.append(report.caption.stopped)
            report.export = export_dataset(store, config)
            report.counts, report.problems = store.counts(), store.problems(limit=MAX_PROBLEMS_SHOWN + 1)
        report.elapsed_s = time.monotonic() - started
        return report

    def run_sync(self, *, limit: int | None = None) -> RunReport:
        job = self.run(limit=limit)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(job)
        with ThreadPoolExecutor(1, thread_name_prefix="ghibli_async") as thread:
            return thread.submit(asyncio.run, job).result()


def run(config: Config | str | os.PathLike[str], *, limit: int | None = None) -> RunReport:
    """Blocking one-liner for scripts and notebooks: `ghibli_async.run("config.yaml")`."""
    return Pipeline(config if isinstance(config, Config) else load_config(config)).run_sync(limit=limit)


def _no_keys_note(waiting: int) -> str:
    return (
        f"captioning needs API keys: set GEMINI_API_KEY_1 (GEMINI_API_KEY_2, …) in the environment "
        f"or in a .env file next to the config; {waiting} image(s) wait for a caption"
    )


@contextmanager
def _process_pool(workers: int) -> Iterator[ProcessPoolExecutor | None]:
    """Worker processes for the CPU-bound stages, started at once so their start-up overlaps the scan."""
    if workers == 0:
        yield None
        return
    # forkserver, not fork: fork()ing a process that already runs threads (tqdm, asyncio) can deadlock.
    context = multiprocessing.get_context("forkserver" if sys.platform.startswith("linux") else None)
    if context.get_start_method() == "forkserver":
        context.set_forkserver_preload(["ghibli_async.imaging"])
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_ignore_sigint)
    for _ in range(workers):
        pool.submit(int)
    try:
        yield pool
    except BrokenProcessPool:
        raise UserError(
            "a worker process died (out of memory, or a decoder crash on a damaged file); "
            "all finished work is kept: rerun to continue"
        ) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _ignore_sigint() -> None:
    """Ctrl-C is the main process's to handle: workers finish their image and stop with the pool."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextmanager
def _exclusive(work_dir: Path) -> Iterator[None]:
    """One run per work dir: two would resize and caption the same images."""
    work_dir.mkdir(parents=True, exist_ok=True)
    with open(work_dir / ".lock", "w") as lock:
        try:
            if sys.platform == "win32":
                import msvcrt

                msvcrt.locking(lock.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # BlockingIOError on POSIX, PermissionError on Windows
            raise UserError(f"another ghibli_async run is using {work_dir}: wait for it or stop it") from None
        yield


@dataclass(frozen=True)
class RunPlan:
    """What a run would do, from the input folder and the state, for `--dry-run`."""

    found: int
    new_or_changed: int
    resize_waiting: int
    caption_waiting: int
    videos_to_extract: int


def plan_run(config: Config) -> RunPlan:
    """Look, do not touch: reads the input folder and (read-only) the state; writes nothing."""
    inputs = list_inputs(config.paths.input_dir, config.extracted_dir)
    files = inputs.images
    videos = len(inputs.videos) if config.stages.extract else 0
    if not config.state_path.exists():
        return RunPlan(len(files), len(files), len(files) if config.stages.resize else 0, 0, videos)
    with StateStore.open(config.state_path, readonly=True) as store:
        known = store.known_sources()
        counts = store.counts()
        finished = {path for path, status, _, _ in store.videos() if status != "pending"}
    videos = sum(1 for video in inputs.videos if str(video) not in finished) if config.stages.extract else 0
    fresh = sum(
        1
        for path in files
        if (seen := known.get(str(path))) is None
        or (seen.size, seen.mtime_ns) != ((stat := path.stat()).st_size, stat.st_mtime_ns)
    )
    resize_waiting = counts.resize.get("pending", 0) + fresh if config.stages.resize else 0
    return RunPlan(len(files), fresh, resize_waiting, counts.caption.get("pending", 0), videos)


def export_only(config: Config) -> ExportResult:
    """Rewrite the output folder from the state, without running any stage."""
    if not config.state_path.exists():
        raise UserError(f"nothing to export: no state at {config.state_path} (run the pipeline first)")
    with _exclusive(config.paths.work_dir), StateStore.open(config.state_path) as store:
        return export_dataset(store, config)


def set_override(config: Config, source_paths: list[str], command: str) -> list[str]:
    """`keep` / `reject` frames by source path; returns the paths the state does not know."""
    if not config.state_path.exists():
        return source_paths
    with _exclusive(config.paths.work_dir), StateStore.open(config.state_path) as store:
        return store.set_filter_override(source_paths, command)
