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

import structlog
from tqdm.auto import tqdm

from ghibli_async.config import Config
from ghibli_async.detect import Box, Detector
from ghibli_async.filter_rules import decide_all
from ghibli_async.imaging import FrameLook, look_at_frame
from ghibli_async.state import FilterJob, StateStore

log = structlog.get_logger(__name__)


async def run_filter(
    store: StateStore, config: Config, pool: Executor, detectors: Sequence[Detector], *, limit: int | None
) -> Counter[str]:
    """Measure and detect what is new, then (re)decide every frame; returns kept/rejected counts."""
    signatures = {detector.key: detector.signature for detector in detectors}
    jobs = store.filter_jobs(signatures, limit=limit)
    if jobs:
        await _measure(store, config, pool, detectors, jobs, signatures)
    changed = store.apply_filter_decisions(decide_all(store.filter_facts(), config.filter))
    counts = store.counts()
    log.info("filter_done", measured=len(jobs), decisions_changed=changed, **counts.filter)
    return Counter(counts.filter)


async def _measure(
    store: StateStore,
    config: Config,
    pool: Executor,
    detectors: Sequence[Detector],
    jobs: list[FilterJob],
    signatures: dict[str, str],
) -> None:
    loop = asyncio.get_running_loop()
    size = max(detector_config.image_size for detector_config in config.filter.detectors)
    batch = max(detector_config.batch_size for detector_config in config.filter.detectors)
    log.info("filter_start", frames=len(jobs), detectors=[d.signature for d in detectors])
    with tqdm(total=len(jobs), desc="filter", unit="frame") as bar:
        # Decoding the next batch (worker processes) overlaps detecting this one (a thread).
        pending = [loop.run_in_executor(pool, look_at_frame, job.source_path, size) for job in jobs[:batch]]
        for start in range(0, len(jobs), batch):
            chunk = jobs[start : start + batch]
            looks = await asyncio.gather(*pending)
            upcoming = jobs[start + batch : start + 2 * batch]
            pending = [loop.run_in_executor(pool, look_at_frame, job.source_path, size) for job in upcoming]
            boxes = await asyncio.to_thread(_detect, detectors, chunk, looks)
            for job, look, found in zip(chunk, looks, boxes):
                if look.error:
                    store.record_filter_failure(job.image_id, look.error)
                    log.warning("filter_failed", path=job.source_path, reason=look.error)
                else:
                    store.record_look(job.image_id, look, found, signatures)
            bar.update(len(chunk))


def _detect(detectors: Sequence[Detector], jobs: list[FilterJob], looks: list[FrameLook]) -> list[dict[str, list[Box]]]:
    """Each detector sees, in one batch, the readable frames it has not seen yet."""
    found: list[dict[str, list[Box]]] = [{} for _ in jobs]
    for detector in detectors:
        wanted = [
            i for i, (job, look) in enumerate(zip(jobs, looks)) if look.error is None and detector.key in job.detectors
        ]
        if wanted:
            for i, boxes in zip(wanted, detector.detect([looks[i].pixels for i in wanted])):
                found[i][detector.key] = boxes
    return found
