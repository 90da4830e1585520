"""Plain-text tables for the end-of-run summary and the `status` command."""

from __future__ import annotations

import math
from collections import Counter
from datetime import datetime
from pathlib import Path

from ghibli_async.caption.buckets import Bucket, next_quota_reset
from ghibli_async.caption.ledger import QuotaLedger
from ghibli_async.clock import Clock
from ghibli_async.config import ApiKey, Config
from ghibli_async.filter_rules import best_score
from ghibli_async.geometry import bucket_spread
from ghibli_async.pipeline import MAX_PROBLEMS_SHOWN, STAGES, RunReport
from ghibli_async.run_end import RunEnd
from ghibli_async.service import ServiceReport
from ghibli_async.stages.base import plural
from ghibli_async.state import State
from ghibli_async.state.filtering import FilterRow
from ghibli_async.state.progress import Counts, Problem
from ghibli_async.state.quota import BucketEvent
from ghibli_async.state.runs import GONE_AFTER_S, Activity, Doing, RunRecord
from ghibli_async.state.sources import Video
from ghibli_async.statuses import Status

STAGE_LABELS = {stage.name: stage.label for stage in STAGES}


def format_summary(report: RunReport) -> str:
    """The end-of-run table: this run's work stage by stage, then the dataset's totals, failures and notes."""
    input_dir = report.input_dir or Path()
    lines = [f"Summary ({_duration(report.elapsed_s)})", "This run:"]
    for name, stage in report.stages.items():
        if stage.line is not None:
            lines.append(f"  {STAGE_LABELS[name]:<12}{stage.shown:>8}  {stage.line}")
    if report.counts:
        lines.append("Dataset so far:")
        lines += _totals(report.counts, {stage.name: stage.name in report.stages for stage in STAGES})
    lines += _problems(report.problems, input_dir)
    lines += _rejected(*report.rejected, input_dir)
    lines += [f"Note: {note}" for note in report.notes]
    lines.append(describe_end(report))
    return "\n".join(lines)


def format_service_summary(report: ServiceReport, config: Config) -> str:
    """One pass: its summary. Several (`--wait`, `--watch`): what all of them did, then the last one's."""
    if report.last is None:
        return (
            f"Nothing to work on: no frames or videos arrived in {config.paths.input_dir}.\n"
            f"Result: stopped when asked (exit {int(report.end)})."
        )
    text = format_summary(report.last)
    if report.passes == 1:
        return text
    done = ", ".join(f"{STAGE_LABELS[name]} {n}" for name, n in report.shown.items() if n)
    head = f"Service: {report.passes} passes in {_duration(report.elapsed_s)}; in all: {done or 'nothing new'}"
    return head + "\n" + text.replace("This run:", "Last pass:", 1)


def describe_end(report: RunReport) -> str:
    """The summary's last line: how the run ended, in words, with its exit code."""
    counts = report.counts
    waiting = (
        (counts.caption.get(Status.PENDING.value, 0) + counts.caption.get(Status.FAILED.value, 0)) if counts else 0
    )
    end = report.end
    if end == RunEnd.QUOTA:
        resume = next((stage.resume_at for stage in report.stages.values() if stage.resume_at), None)
        when = f"after {resume}" if resume else "after the quota reset"
        text = f"waiting for quota: {plural(waiting, 'image')} still to caption; rerun {when}"
    elif end == RunEnd.NO_KEYS:
        text = (
            f"no usable key or model: {plural(waiting, 'image')} still to caption; fix the keys "
            "(`check-keys`) or caption.models, then rerun"
        )
    elif end in (RunEnd.INTERRUPTED, RunEnd.TERMINATED):
        text = f"stopped when asked: {plural(waiting, 'image')} still to caption; rerun the same command to continue"
    elif end == RunEnd.FAILED and report.problems:
        text = "failed: see the notes and the failed images above; rerun to try them again"
    elif end == RunEnd.FAILED:  # the service kept failing: no image failed, the rest waits
        text = f"failed: see the notes above; {plural(waiting, 'image')} still to caption; rerun when it answers"
    else:
        text = "done: everything this run could do is finished"
    return f"Result: {text} (exit {int(end)})."


def format_status(state: State, config: Config, keys: list[ApiKey], exported: int, clock: Clock) -> str:
    counts, problems = state.progress.counts(), state.progress.problems(limit=MAX_PROBLEMS_SHOWN + 1)
    lines = [f"State: {config.state_path}", _now_line(state.activity.current(), clock.wall())]
    stages_on = _stages_on(config, state.runs.last())
    lines += _totals(counts, stages_on)
    lines.append(f"  {'exported':<12}{exported:>8}  in {config.paths.output_dir}")
    if config.resize.fit == "bucket" and (sizes := state.results.resized_sizes()):
        lines.append(f"  {'buckets':<12}{sum(sizes.values()):>8}  {bucket_spread(sizes)}")
    left = _left_to_do(counts, stages_on)
    lines.append("Left to do: " + (", ".join(f"{stage} {n}" for stage, n in left.items()) if left else "nothing"))
    lines += _problems(problems, config.paths.input_dir)
    lines += _videos(state.sources.videos())
    waiting = counts.caption.get(Status.PENDING.value, 0) + counts.caption.get(Status.FAILED.value, 0)
    lines += _quota_today(state, config, keys, clock, waiting)
    return "\n".join(lines)


def _now_line(activity: Activity | None, wall: datetime) -> str:
    """What the process working on this dataset does now, if one is alive (heard from lately)."""
    if activity is None or activity.doing == Doing.ENDED or (activity.doing == Doing.FINISHED and not activity.modes):
        return "Now: no run is going."  # (a single pass from a notebook ends at FINISHED)
    since = f"{activity.started_at.astimezone():%Y-%m-%d %H:%M}"
    who = f"{'service (' + activity.modes + ')' if activity.modes else 'run'} pid {activity.pid}, since {since}"
    if activity.known_dead():
        return f"Now: no run is going (the last, {who}, is no longer running: it was killed or crashed)."
    if (wall - activity.heard_at).total_seconds() > GONE_AFTER_S:
        heard = f"{activity.heard_at.astimezone():%Y-%m-%d %H:%M}"
        return f"Now: no run is going (the last, {who}, was last heard from at {heard}: killed or the machine stopped)."
    doing = activity.doing
    if activity.until is not None:
        doing += f" until {activity.until.astimezone():%Y-%m-%d %H:%M %Z}"
    elif doing in STAGE_LABELS:
        doing = f"in the {doing} stage"
    return f"Now: {who}: {doing}."


def _videos(videos: list[Video]) -> list[str]:
    if not videos:
        return []
    lines = ["Videos:"]
    for video in videos:
        reason = f"  ({video.reason})" if video.reason else ""
        lines.append(f"  {Path(video.path).name:<40} {video.status.value:<7} {video.frames:>6} frames{reason}")
    return lines


def _quota_today(state: State, config: Config, keys: list[ApiKey], clock: Clock, waiting: int) -> list[str]:
    """Per bucket: requests the server served today against the daily limit (the server's, once
    learned), and its condition; then what the live buckets can still do."""
    if not keys:
        return ["Quota: no API keys configured (GEMINI_API_KEY_1, … in the environment or .env)."]
    ledger = QuotaLedger(state.quota, config.caption, keys, clock)
    reset = next_quota_reset(clock.wall()).astimezone()
    lines = [f"Quota day {ledger.day} (Pacific; resets {reset:%Y-%m-%d %H:%M %Z}):"]
    live: list[Bucket] = []
    for bucket in ledger.buckets:
        condition = ledger.condition(bucket)
        if condition == "open" or condition.startswith("cooling"):
            live.append(bucket)
        source = "server" if "rpd" in ledger.learned.get((bucket.project, bucket.model), {}) else "table"
        rpd = bucket.limits.rpd
        limit = f"{rpd:<6} requests ({source} limit)" if rpd is not None else f"{'-':<6} requests (no daily limit)"
        usage = ledger.usage.get((bucket.project, bucket.model))
        lines.append(
            f"  {bucket.name:<40} {bucket.used_today:>6}/{limit}, {usage.tokens if usage else 0} tokens  {condition}"
        )
    return lines + _forecast(live, ledger, waiting) + _retirements(ledger.events, config, keys)


def _forecast(live: list[Bucket], ledger: QuotaLedger, waiting: int) -> list[str]:
    """Captions left today from the live buckets only (a request carries a model's frames per
    request), and how many days the rest needs at this quota."""
    if not live:
        return ["  no bucket can take a request today"]
    capped = [
        (bucket.limits.rpd, bucket.used_today, ledger.pack_size(bucket.model))
        for bucket in live
        if bucket.limits.rpd is not None
    ]
    if len(capped) < len(live):
        return ["  a live bucket has no daily limit: the rest goes as fast as that endpoint answers"]
    left = sum(max(0, rpd - used) * k for rpd, used, k in capped)
    packed = " (at each model's frames per request)" if any(k > 1 for *_, k in capped) else ""
    lines = [f"  about {left} more captions today from the live buckets{packed}"]
    per_day = sum(rpd * k for rpd, _, k in capped)
    if waiting > left and per_day:
        days = 1 + math.ceil((waiting - left) / per_day)
        lines.append(
            f"  {plural(waiting, 'image')} wait for a caption: about {plural(days, 'quota day')} at this quota"
        )
    return lines


def _retirements(events: list[BucketEvent], config: Config, keys: list[ApiKey]) -> list[str]:
    """What the last caption run stopped using, for the models and keys still configured."""
    models = {model.name for model in config.caption.models}
    labels = {key.label for key in keys}
    lines = []
    for event in events:
        if event.kind == "model_retired" and event.model in models:
            lines.append(f"  model {event.model}: retired on {event.at[:10]} ({event.reason}); see check-keys")
        elif event.kind == "key_retired" and event.project in labels:
            lines.append(f"  {event.project}: refused on {event.at[:10]} ({event.reason}); see `check-keys`")
    return lines


def _totals(counts: Counts, stages_on: dict[str, bool]) -> list[str]:
    """Per stage, images by status; a stage that was off is said to be off, not pending."""

    def row(stage: str, statuses: dict[str, int]) -> str:
        if stages_on.get(stage, True):
            shown = ", ".join(f"{status} {n}" for status, n in sorted(statuses.items())) or "nothing yet"
            return f"  {stage:<12}{sum(statuses.values()):>8}  {shown}"
        untouched = statuses.get(Status.PENDING.value, 0)
        done = {status: n for status, n in statuses.items() if status != Status.PENDING.value}
        before = f" (earlier runs: {', '.join(f'{s} {n}' for s, n in sorted(done.items()))})" if done else ""
        return f"  {stage:<12}{'':>8}  off ({plural(untouched, 'frame')} not through it){before}"

    lines = [
        f"  {'frames':<12}{counts.sources - counts.duplicates:>8}  "
        f"unique ({counts.duplicates} exact duplicate(s) skipped)"
    ]
    lines += [row(stage.name, counts.of(stage.status_column)) for stage in STAGES if stage.status_column]
    if counts.rejected_by_reason:
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(counts.rejected_by_reason.items()))
        lines.append(f"  {'rejected':<12}{sum(counts.rejected_by_reason.values()):>8}  {reasons}")
    return lines


def _stages_on(config: Config, last: RunRecord | None) -> dict[str, bool]:
    """On in the config, and not switched off (`--skip-…`) by the last run."""
    stages = {stage.name for stage in STAGES}
    ran = last.stages if last else {}
    return {name: getattr(config.stages, name, True) and ran.get(name, True) for name in stages}


def _left_to_do(counts: Counts, stages_on: dict[str, bool]) -> dict[str, int]:
    left = {
        stage.name: counts.of(stage.status_column).get(Status.PENDING.value, 0)
        for stage in STAGES
        if stage.status_column and stages_on[stage.name]
    }
    return {stage: n for stage, n in left.items() if n}


def _problems(problems: list[Problem], input_dir: Path) -> list[str]:
    if not problems:
        return []
    lines = ["Failed or blocked:"]
    for problem in problems[:MAX_PROBLEMS_SHOWN]:
        lines.append(
            f"  {_relative(problem.source_path, input_dir)}  [{problem.stage} {problem.status}] {problem.reason}"
        )
    if len(problems) > MAX_PROBLEMS_SHOWN:
        lines.append("  … and more (the state's images table has every reason)")
    return lines


def _rejected(total: int, first: list[Problem], input_dir: Path) -> list[str]:
    if not total:
        return []
    lines = [f"Rejected ({total}, never deleted; `keep PATH` brings one back, upscaled if too small):"]
    lines += [f"  {_relative(problem.source_path, input_dir)}  [{problem.stage}] {problem.reason}" for problem in first]
    if total > len(first):
        lines.append(f"  … and {total - len(first)} more: `filter-report --json` lists every frame's decision")
    return lines


def _relative(path: str, base: Path) -> str:
    try:
        return str(Path(path).relative_to(base))
    except ValueError:
        return path


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds, 1), 60)
    return f"{int(minutes)} min {secs:.1f} s" if minutes else f"{secs:.1f} s"


def format_filter_report(rows: list[FilterRow], config: Config) -> str:
    """Counts per decision and reason, then where to look further."""
    by_reason = Counter(
        (row.status, "duplicate" if (row.reason or "").startswith("duplicate_of:") else row.reason or "")
        for row in rows
    )
    lines = [f"Filter decisions for {len(rows)} frames:"]
    for (status, reason), count in sorted(by_reason.items()):
        lines.append(f"  {status:<10}{reason or '-':<14}{count:>8}")
    overrides = sum(1 for row in rows if row.override)
    lines.append(f"{overrides} set by hand (keep/reject). One line per frame: filter-report --json")
    return "\n".join(lines)


def filter_row_json(row: FilterRow) -> dict[str, object]:
    return {
        "source": row.source_path,
        "decision": row.status,
        "reason": row.reason,
        "override": row.override,
        "number": row.number,
        "scores": {name: round(best_score(boxes), 4) for name, boxes in row.boxes.items()},
    }
