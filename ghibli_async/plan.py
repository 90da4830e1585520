"""`--dry-run`: what a run would do, stage by stage, and what it would trip on; writes nothing.

It reads the input folder and (read-only) the state, loads the detectors the way a run would, and
looks up the keys; it sends no request.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ghibli_async.caption.buckets import build_buckets, quota_day
from ghibli_async.clock import Clock
from ghibli_async.config import ApiKey, Config, load_caption_keys
from ghibli_async.detect import load_detectors
from ghibli_async.errors import UserError
from ghibli_async.inputs import InputFiles, list_inputs
from ghibli_async.pipeline import refuse_a_lost_state
from ghibli_async.stages.base import plural
from ghibli_async.state import State
from ghibli_async.state.progress import Counts
from ghibli_async.state.sources import KnownSource
from ghibli_async.statuses import Status, VideoStatus


@dataclass
class RunPlan:
    stages: list[tuple[str, str]] = field(default_factory=list)  # (stage, what it would do)
    blocking: list[str] = field(default_factory=list)  # what would stop the run before any work
    warnings: list[str] = field(default_factory=list)  # what would stop a stage, or leave work undone

    def text(self) -> str:
        lines = ["Dry run, nothing written:"]
        lines += [f"  {stage:<9} {what}" for stage, what in self.stages]
        lines += [f"Would stop the run: {problem}" for problem in self.blocking]
        lines += [f"Warning: {warning}" for warning in self.warnings]
        return "\n".join(lines)


def plan_run(config: Config, clock: Clock, *, limit: int | None = None) -> RunPlan:
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
    fresh = [path for path in inputs.images if _is_new_or_changed(inputs.stats[path], known.get(str(path)))]
    _plan_extract(plan, config, inputs, extracted)
    plan.stages.append(
        ("scan", f"{plural(len(inputs.images), 'frame')} in {config.paths.input_dir}: {len(fresh)} new or changed")
    )
    _plan_filter(plan, config, counts, len(fresh), limit)
    _plan_resize(plan, config, counts, len(fresh), limit)
    _plan_caption(plan, config, counts, limit, clock)
    plan.stages.append(("export", f"{config.paths.output_dir} rebuilt from the state"))
    return plan


def _state_now(config: Config) -> tuple[dict[str, KnownSource], Counts | None, set[str]]:
    if not config.state_path.exists():
        return {}, None, set()
    with State.open(config.state_path, readonly=True) as state:
        done = {video.path for video in state.sources.videos() if video.status == VideoStatus.DONE}
        return state.sources.known(), state.progress.counts(), done


def _is_new_or_changed(stat: os.stat_result, seen: KnownSource | None) -> bool:
    return seen is None or (seen.size, seen.mtime_ns) != (stat.st_size, stat.st_mtime_ns)


def _capped(count: int, limit: int | None) -> str:
    return f"{min(count, limit)} (--limit {limit} of {count})" if limit is not None and count > limit else str(count)


def _plan_extract(plan: RunPlan, config: Config, inputs: InputFiles, extracted: set[str]) -> None:
    if not config.stages.extract:
        plan.stages.append(("extract", "off"))
        return
    todo = [video for video in inputs.videos if str(video) not in extracted]
    plan.stages.append(
        ("extract", f"{plural(len(todo), 'video')} to extract frames from (their frames are not counted below)")
    )


def _plan_filter(plan: RunPlan, config: Config, counts: Counts | None, fresh: int, limit: int | None) -> None:
    if not config.stages.filter:
        plan.stages.append(("filter", "off: every frame goes on to resize"))
        return
    try:
        detectors = load_detectors(config.filter)
    except UserError as exc:
        plan.blocking.append(str(exc))
        plan.stages.append(("filter", "cannot run: its detector does not load"))
        return
    unmeasured = fresh + (counts.filter.get(Status.PENDING.value, 0) if counts else 0)
    names = ", ".join(detector.signature for detector in detectors)
    plan.stages.append(("filter", f"about {_capped(unmeasured, limit)} frames to look at with {names} (loaded)"))


def _plan_resize(plan: RunPlan, config: Config, counts: Counts | None, fresh: int, limit: int | None) -> None:
    if not config.stages.resize:
        plan.stages.append(("resize", "off"))
        return
    waiting = fresh + (counts.resize.get(Status.PENDING.value, 0) if counts else 0)
    kept = " (those the filter keeps)" if config.stages.filter else ""
    plan.stages.append(("resize", f"up to {_capped(waiting, limit)} frames to resize{kept}"))


def _plan_caption(plan: RunPlan, config: Config, counts: Counts | None, limit: int | None, clock: Clock) -> None:
    if not config.stages.caption:
        plan.stages.append(("caption", "off"))
        return
    keys = load_caption_keys(config)
    waiting = counts.caption.get(Status.PENDING.value, 0) + counts.caption.get(Status.FAILED.value, 0) if counts else 0
    buckets = build_buckets(config.caption, keys, day=quota_day(clock.wall()), used_today={}, learned={})
    names = ", ".join(bucket.name for bucket in buckets[:4]) + (", …" if len(buckets) > 4 else "")
    plan.stages.append(
        ("caption", f"{_capped(waiting, limit)} resized frames wait (plus those resized now); "
         f"{plural(len(buckets), 'bucket')}: {names or 'none'}")
    )  # fmt: skip
    plan.warnings += _caption_warnings(config, keys)


def _caption_warnings(config: Config, keys: list[ApiKey]) -> list[str]:
    if not keys:
        return ["no API keys found: captioning would stop at once (exit 4); set GEMINI_API_KEY_1 in .env"]
    providers = {key.provider for key in keys}
    return [
        f"model {model.name} has no key of its provider '{model.provider}': it would not be used"
        for model in config.caption.models
        if model.provider not in providers
    ]
