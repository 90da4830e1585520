"""`--dry-run`: what a run would do, stage by stage, and what it would trip on; writes nothing.

It reads the input folder and (read-only) the state, and asks each stage for its line (the filter
loads its detectors the way a run would, captioning looks up the keys); it sends no request.
"""

from __future__ import annotations

import os

from ghibli_async.clock import Clock
from ghibli_async.config import Config
from ghibli_async.errors import UserError
from ghibli_async.inputs import list_inputs
from ghibli_async.pipeline import STAGES, refuse_a_lost_state
from ghibli_async.stages.base import PlanContext, RunPlan
from ghibli_async.state import State
from ghibli_async.state.progress import Counts
from ghibli_async.state.sources import KnownSource
from ghibli_async.statuses import VideoStatus


def plan_run(config: Config, clock: Clock, *, limit: int | None = None) -> RunPlan:
    """Every stage's line, from the input folder and the state as they are."""
    plan = RunPlan()
    try:
        inputs = list_inputs(config)
    except UserError as exc:
        plan.blocking.append(str(exc))
        return plan
    try:
        refuse_a_lost_state(config)
    except UserError as exc:
        plan.blocking.append(str(exc))
    known, counts, extracted = _state_now(config)
    fresh = sum(1 for path in inputs.images if _is_new_or_changed(inputs.stats[path], known.get(str(path))))
    context = PlanContext(config, inputs, counts, fresh, extracted, limit, clock, plan)
    for stage in STAGES:
        stage.plan(context)
    return plan


def _state_now(config: Config) -> tuple[dict[str, KnownSource], Counts | None, set[str]]:
    if not config.state_path.exists():
        return {}, None, set()
    with State.open(config.state_path, readonly=True) as state:
        done = {video.path for video in state.sources.videos() if video.status == VideoStatus.DONE}
        return state.sources.known(), state.progress.counts(), done


def _is_new_or_changed(stat: os.stat_result, seen: KnownSource | None) -> bool:
    return seen is None or (seen.size, seen.mtime_ns) != (stat.st_size, stat.st_mtime_ns)
