"""Filter stage: keep the frames that show people; drop black, blurred and near-duplicate frames.

Worker processes decode each frame once into one shared downscaled copy and its junk-frame
numbers; the detectors (loaded once) look at those copies in batches. Everything measured is
stored, then every frame is decided from the stored facts alone, so a changed threshold re-decides
without decoding or detecting again. Rejected frames are never moved or deleted.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Executor
from pathlib import Path

import structlog
from tqdm.auto import tqdm

from ghibli_async.config import Config
from ghibli_async.detect import Detector, load_detectors
from ghibli_async.errors import MachineError, UserError
from ghibli_async.facts import Box
from ghibli_async.filter_rules import decide_all
from ghibli_async.imaging import FrameLook, look_at_frame
from ghibli_async.stages.base import PlanContext, RunContext, StageReport, StopRequest, capped, counts_line
from ghibli_async.state import State
from ghibli_async.state.filtering import FilterJob
from ghibli_async.statuses import Status

log = structlog.get_logger(__name__)


class FilterStage:
    name = "filter"
    label = "filter"
    uses_pool = True
    after_stop = False
    status_column: str | None = "filter_status"
    skip: str | None = "run the person filter"

    def plan(self, context: PlanContext) -> None:
        if not context.config.stages.filter:
            context.says(self.name, "off: every frame goes on to resize")
            return
        try:
            detectors = load_detectors(context.config.filter)
        except UserError as exc:
            context.plan.blocking.append(str(exc))
            context.says(self.name, "cannot run: its detector does not load")
            return
        counts = context.counts
        unmeasured = context.fresh + (counts.of(self.status_column).get(Status.PENDING.value, 0) if counts else 0)
        names = ", ".join(detector.signature for detector in detectors)
        context.says(self.name, f"about {capped(unmeasured, context.limit)} frames to look at with {names} (loaded)")

    def enabled(self, config: Config) -> bool:
        return config.stages.filter

    async def run(self, context: RunContext) -> StageReport:
        counts = await run_filter(context, context.detectors)
        line = f"frames decided: {counts_line(counts)}" if counts else None
        return StageReport(counts, shown=counts.total(), line=line)


async def run_filter(context: RunContext, detectors: Sequence[Detector]) -> Counter[str]:
    """Measure and detect what is new, then (re)decide every frame; returns kept/rejected counts."""
    state, config = context.state, context.config
    signatures = {detector.key: detector.signature for detector in detectors}
    jobs = state.filter.jobs(signatures, limit=context.limit)
    if jobs:
        await _measure(state, config, context.pool.executor(), detectors, jobs, signatures, context.stop)
    changed = state.filter.apply_decisions(decide_all(state.filter.facts(), config.filter))
    counts = state.progress.counts()
    log.info("filter_done", measured=len(jobs), decisions_changed=changed, **counts.filter)
    return Counter(counts.filter)


async def _measure(
    state: State,
    config: Config,
    pool: Executor,
    detectors: Sequence[Detector],
    jobs: list[FilterJob],
    signatures: dict[str, str],
    stop: StopRequest,
) -> None:
    """Decode and detect batch by batch; a stop ends it after the batch in hand (one detector pass:
    lower `batch_size` to stop sooner), and the frames not looked at stay pending."""
    loop = asyncio.get_running_loop()
    size = max(detector_config.image_size for detector_config in config.filter.detectors)
    batch = max(detector_config.batch_size for detector_config in config.filter.detectors)
    log.info("filter_start", frames=len(jobs), detectors=[d.signature for d in detectors])
    with tqdm(total=len(jobs), desc="filter", unit="frame") as bar:
        # Decoding the next batch (worker processes) overlaps detecting this one (a thread).
        pending = [loop.run_in_executor(pool, look_at_frame, job.source_path, size) for job in jobs[:batch]]
        for start in range(0, len(jobs), batch):
            if stop.requested:
                for future in pending:
                    future.cancel()
                return
            chunk = jobs[start : start + batch]
            looks = await asyncio.gather(*pending)
            upcoming = jobs[start + batch : start + 2 * batch]
            pending = [loop.run_in_executor(pool, look_at_frame, job.source_path, size) for job in upcoming]
            boxes = await asyncio.to_thread(_detect, detectors, chunk, looks)
            for job, look, found in zip(chunk, looks, boxes):
                if look.machine:
                    raise MachineError(
                        f"filter stopped: {look.error} (with {Path(job.source_path).name}); fix the machine's "
                        "problem, then rerun: the frames not looked at stay pending"
                    )
                if look.error:
                    state.filter.record_failure(job.image_id, look.error)
                    log.warning("filter_failed", path=job.source_path, reason=look.error)
                else:
                    state.filter.record_look(job.image_id, look.measurements, found, signatures)
            bar.update(len(chunk))


def _detect(detectors: Sequence[Detector], jobs: list[FilterJob], looks: list[FrameLook]) -> list[dict[str, list[Box]]]:
    """Each detector sees, in one batch, the readable frames it has not seen yet."""
    found: list[dict[str, list[Box]]] = [{} for _ in jobs]
    for detector in detectors:
        wanted = [
            (i, look.pixels)
            for i, (job, look) in enumerate(zip(jobs, looks))
            if look.pixels is not None and detector.key in job.detectors
        ]
        if wanted:
            for (i, _), boxes in zip(wanted, detector.detect([pixels for _, pixels in wanted])):
                found[i][detector.key] = boxes
    return found
