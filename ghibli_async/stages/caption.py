"""Caption stage: an async producer-consumer over the quota buckets.

A producer feeds pending frames into a bounded queue; `concurrency` workers each take a frame and
ask the quota ledger for a slot in the best bucket (waiting for the earliest one when none has).
With the slot, a worker fills the request up to the model's frames per request: with frames it
holds, then frames other workers wait with (the lobby), then the queue's. It sends, has the
reducer say what the answer means, settles it in the ledger, stores each frame's verdict and keeps
the frames to ask again. A frame is in one request at a time, and the state is written the moment
an answer is accepted, so a crash costs at most the frames in flight.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import aiofiles
import structlog

from ghibli_async.caption.answers import Answer, Blocked, RateLimited, Reply, TransientError
from ghibli_async.caption.buckets import Grant, build_buckets, quota_day, seconds_into_quota_day
from ghibli_async.caption.checks import doubt
from ghibli_async.caption.clients import CaptionClients
from ghibli_async.caption.ledger import QuotaLedger
from ghibli_async.caption.packing import Frame
from ghibli_async.caption.progress import CaptionProgress
from ghibli_async.caption.reducer import (
    Accept,
    Attempt,
    GiveUp,
    LeavePending,
    Retry,
    StopRun,
    Verdict,
    reduce_reply,
)
from ghibli_async.caption.verify import Verifier
from ghibli_async.caption_report import refresh_caption_checks_aside
from ghibli_async.clock import Clock
from ghibli_async.config import ApiKey, Config, load_caption_keys
from ghibli_async.facts import Finding
from ghibli_async.run_end import RunEnd, worst
from ghibli_async.stages.base import PlanContext, RunContext, StageReport, capped, counts_line, plural
from ghibli_async.state import State
from ghibli_async.state.results import CaptionJob
from ghibli_async.statuses import Status
from ghibli_async.workdir import output_name

log = structlog.get_logger(__name__)

LEFT = "left"  # the outcome of an image this run did not get to: pending for the next run
WITHDRAWN = "withdrawn"  # captioned by hand or rejected on the review page before its request went out
TAKEN = "taken"  # a frame that waited for a slot went out with another worker's request
STOPPED = "stopped"  # the run stops taking new work: a frame waiting for a slot stays pending


class CaptionStage:
    name = "caption"
    label = "captioned"
    uses_pool = False
    after_stop = False
    status_column: str | None = "caption_status"
    skip: str | None = "caption"

    def plan(self, context: PlanContext) -> None:
        config, counts = context.config, context.counts
        if not config.stages.caption:
            context.says(self.name, "off")
            return
        keys = load_caption_keys(config)
        statuses = counts.of(self.status_column) if counts else {}
        waiting = statuses.get(Status.PENDING.value, 0) + statuses.get(Status.FAILED.value, 0)
        day, captioners = quota_day(context.clock.wall()), config.caption.captioners
        buckets = build_buckets(config.caption, keys, day=day, used_today={}, learned={}, models=captioners)
        names = ", ".join(bucket.name for bucket in buckets[:4]) + (", …" if len(buckets) > 4 else "")
        verify = config.caption.verify
        judged = f"; {verify.share:.0%} of the captions judged by {verify.model}" if verify else ""
        context.says(
            self.name,
            f"{capped(waiting, context.limit)} resized frames wait (plus those resized now); "
            f"{plural(len(buckets), 'bucket')}: {names or 'none'}{judged}",
        )
        context.plan.warnings += _caption_warnings(config, keys)

    def enabled(self, config: Config) -> bool:
        return config.stages.caption

    async def run(self, context: RunContext) -> StageReport:
        if not context.keys:
            waiting = context.state.results.caption_pending_count()
            end = RunEnd.NO_KEYS if waiting else RunEnd.DONE
            note = _no_keys_note(context.config, waiting)
            if waiting:
                log.warning("caption_skipped", reason=note)  # a library run that shows no summary says it too
            return StageReport(notes=[note], end=end)
        engine = CaptionEngine(context.state, context.config, context.keys, context.clock)
        with context.stop.listening(engine.stop_politely):
            caption = await engine.run(limit=context.limit)
        verified = await _verify(context) if context.config.caption.verify and not context.stop.requested else None
        if caption.outcomes["done"] or caption.outcomes["review"] or verified:
            await refresh_caption_checks_aside(context.config)  # every caption again, and over the dataset
        notes = [*caption.retired, *([caption.stopped] if caption.stopped else []), *([verified] if verified else [])]
        return StageReport(
            caption.outcomes,
            shown=caption.outcomes["done"],
            line=caption_line(caption),
            notes=notes,
            end=caption.end,
            resume_at=caption.resume_at,
        )


async def _verify(context: RunContext) -> str | None:
    """caption.verify's pass over the captions sampled and not judged yet: its summary line, if it
    asked anything."""
    verifier = Verifier(context.state, context.config, context.keys, context.clock)
    with context.stop.listening(verifier.stop_politely):
        report = await verifier.run()
    return report.line(verifier.rules.model) if report.requests else None


def caption_line(caption: CaptionReport) -> str:
    """`done 10, review 1, blocked 1; 7 left for the next run (quota); 23 requests`."""
    finished = Counter({word: n for word, n in caption.outcomes.items() if word != LEFT})
    parts = [counts_line(finished, empty="none finished")]
    if caption.outcomes[LEFT]:
        why = {RunEnd.QUOTA: "quota spent", RunEnd.NO_KEYS: "no usable key or model"}.get(caption.end, "stopped")
        parts.append(f"{caption.outcomes[LEFT]} left for the next run ({why})")
    parts.append(plural(caption.requests, "request"))
    return "; ".join(parts)


def _caption_warnings(config: Config, keys: list[ApiKey]) -> list[str]:
    if not keys:
        return ["no API keys found: captioning would stop at once (exit 4); set GEMINI_API_KEY_1 in .env"]
    providers = {key.provider for key in keys}
    return [
        f"model {model.name} has no key of its provider '{model.provider}': it would not be used"
        for model in config.caption.models
        if model.provider not in providers
    ]


def _no_keys_note(config: Config, waiting: int) -> str:
    names = ["GEMINI_API_KEY_1 (GEMINI_API_KEY_2, …)"] + [
        name for provider in config.caption.providers.values() for name in provider.api_key_env
    ]
    return (
        f"captioning needs API keys: set {' or '.join(names)} in the environment "
        f"or in a .env file next to the config; {waiting} image(s) wait for a caption"
    )


class CaptionResults(Protocol):
    """Where the engine puts each frame's end: the state's results, or a calibration's sample."""

    def still_wants_caption(self, number: int) -> bool: ...

    def record_caption(
        self,
        number: int,
        caption: str,
        *,
        model: str,
        key_label: str,
        attempts: int = 1,
        tokens: int | None = None,
        needs_review: bool = False,
        findings: Sequence[Finding] = (),
        doubt: float = 0.0,
    ) -> None: ...

    def record_caption_failure(
        self, number: int, status: Status, reason: str, *, attempts: int, refused_by: Collection[str] = ()
    ) -> None: ...

    def record_refusals(self, number: int, refused_by: Collection[str]) -> None: ...


@dataclass
class CaptionReport:
    """What the caption stage did in this run; `stopped` says why it ended early, if it did."""

    outcomes: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    stopped: str | None = None
    end: RunEnd = RunEnd.DONE
    retired: list[str] = field(default_factory=list)  # keys and models this run stopped using, and why
    resume_at: str | None = None  # the quota reset, local time, when the run stopped on quota


class CaptionEngine:
    """Acquire a grant, send, reduce the answer, apply the effects: the policy itself lives in
    the scheduler (which bucket, when) and the reducer (what an answer means)."""

    def __init__(
        self, state: State, config: Config, keys: list[ApiKey], clock: Clock, *, results: CaptionResults | None = None
    ) -> None:
        self.state = state
        self.results: CaptionResults = results or state.results
        self.caption = config.caption
        self.clock = clock
        self.images_dir = config.resized_dir
        self.ledger = QuotaLedger.open(state.quota, self.caption, keys, clock, self.caption.captioners)
        self.client = CaptionClients(self.caption, keys)
        self.report = CaptionReport(retired=self.ledger.retired)
        self._failing_streak = 0  # server errors and lost connections in a row, across workers
        self._unreadable_packs: Counter[str] = Counter()  # model -> packed answers in a row without a caption
        self._lobby: list[_Held] = []  # frames whose workers wait for a slot: another request may take them
        self._asked_to_stop = False

    async def run(self, *, limit: int | None = None, jobs: list[CaptionJob] | None = None) -> CaptionReport:
        """Caption the frames waiting for a caption (at most `limit`), or those of `jobs`."""
        if jobs is None:
            jobs = self.state.results.caption_jobs([model.name for model in self.caption.captioners], limit=limit)
        if not jobs:
            return self.report
        self.ledger.begin()
        workers = min(self.caption.concurrency, len(jobs))
        log.info("caption_start", images=len(jobs), buckets=len(self.ledger.buckets), workers=workers)
        queue: asyncio.Queue[CaptionJob | None] = asyncio.Queue(maxsize=workers * 2 * self._widest_pack())
        self._progress = CaptionProgress(len(jobs), self.clock)
        tasks = [asyncio.create_task(self._produce(queue, jobs, workers))]
        tasks += [asyncio.create_task(self._work(queue)) for _ in range(workers)]
        try:
            await asyncio.gather(*tasks)  # the first failure (or Ctrl-C) ends them all
        finally:
            for task in tasks:
                task.cancel()
            self._progress.close()
            await self.client.aclose()
        self.report.outcomes[LEFT] += len(jobs) - self.report.outcomes.total()  # never taken: a stop came first
        if not self.report.outcomes[LEFT]:
            del self.report.outcomes[LEFT]
        return self.report

    def _widest_pack(self) -> int:
        return max(self.ledger.pack_size(model.name) for model in self.caption.captioners)

    async def _produce(self, queue: asyncio.Queue[CaptionJob | None], jobs: list[CaptionJob], workers: int) -> None:
        for job in jobs:
            if self._no_new_work():
                break
            await queue.put(job)
        for _ in range(workers):
            await queue.put(None)

    async def _work(self, queue: asyncio.Queue[CaptionJob | None]) -> None:
        tray = _Tray(queue)
        while (lead := await tray.next()) is not None:
            if self._no_new_work():
                self._tally(self._finish(lead.attempt, LeavePending(), None))
                continue
            self._lobby.append(lead)
            grant = await self.ledger.acquire(
                lead.attempt, give_up=lambda: self._give_up(lead), on_wait=self._progress.waiting_for
            )
            if grant == TAKEN:
                continue  # it went out with another worker's request
            self._lobby.remove(lead)
            if grant is None or grant == STOPPED:
                self._tally(self._finish(lead.attempt, self._no_bucket_verdict(lead.attempt), None))
            elif grant == WITHDRAWN:
                self._tally(grant)
            elif isinstance(grant, Grant):
                self._progress.working()
                pack = await self._load([lead, *self._fill(grant, lead, tray)])
                if pack:
                    await self._send(grant, pack, tray)
                else:  # not one image could be read: the slot goes back unused
                    self.ledger.release(grant)

    def _give_up(self, lead: _Held) -> str | None:
        """Why `lead` should stop waiting for a slot, if it should (asked before each try, so a frame
        captioned by hand or rejected on the review page, even during a long wait, is not sent)."""
        if not any(frame is lead for frame in self._lobby):
            return TAKEN
        if self._no_new_work():
            return STOPPED
        if not self.results.still_wants_caption(lead.attempt.number):
            return WITHDRAWN
        return None

    def _fill(self, grant: Grant, lead: _Held, tray: _Tray) -> list[_Held]:
        """The other frames of a request under `grant`: this worker's own, then frames other
        workers hold while they wait for a slot (they stop waiting), then the queue's. No await
        here: a frame is in exactly one worker's hands, the lobby or the queue at any moment."""
        room = 0 if lead.attempt.alone else self.ledger.pack_size(grant.bucket.model) - 1
        fits = _fits(grant)
        taken = tray.take(room, fits)
        waiting = [frame for frame in self._lobby if fits(frame)][: room - len(taken)]
        if waiting:
            self._lobby = [frame for frame in self._lobby if frame not in waiting]
            self.ledger.wake()  # their workers find their frame gone and take another
        taken += waiting
        taken += tray.fill(room - len(taken), fits)
        return [frame for frame in taken if self._still_wanted(frame)]

    async def _load(self, pack: list[_Held]) -> list[_Held]:
        """The frames of `pack` with their images read (once per frame); a frame whose image cannot
        be read is failed and left out."""
        loaded = []
        for frame in pack:
            if frame.image is not None:
                loaded.append(frame)
                continue
            path = self.images_dir / output_name(frame.attempt.number)
            try:
                async with aiofiles.open(path, "rb") as stream:
                    loaded.append(_Held(frame.attempt, await stream.read()))
            except OSError as exc:
                failed = GiveUp(Status.FAILED, f"cannot read {path.name}: {exc.strerror}")
                self._tally(self._finish(frame.attempt, failed, None))
        return loaded

    def _still_wanted(self, frame: _Held) -> bool:
        """A frame added to a request is asked the question `_give_up` asks its lead."""
        if self.results.still_wants_caption(frame.attempt.number):
            return True
        self._tally(WITHDRAWN)
        return False

    async def _send(self, grant: Grant, pack: list[_Held], tray: _Tray) -> None:
        """One request for the frames of `pack`; each frame's verdict is stored, or it goes back to
        the tray for another request."""
        model = grant.bucket.model
        self.ledger.count_sent(grant)
        self.report.requests += 1
        reply = await self.client.generate(grant.key, model, [Frame(f.attempt.number, f.image or b"") for f in pack])
        self._failing_streak = self._failing_streak + 1 if isinstance(reply, TransientError) else 0
        outcome = reduce_reply(
            grant,
            reply,
            tuple(frame.attempt for frame in pack),
            self.caption,
            failing_streak=self._failing_streak,
            other_buckets=self.ledger.other_buckets(grant),
            since_reset_s=seconds_into_quota_day(self.clock.wall()),
            unreadable_packs=self._unreadable_packs[model],
        )
        if len(pack) > 1 and isinstance(reply, Answer):
            self._unreadable_packs[model] = self._unreadable_packs[model] + 1 if outcome.unreadable else 0
        if outcome.pack_problems:
            log.info("caption_pack_answer_flawed", model=model, problems=list(outcome.pack_problems))
        self.ledger.settle(grant, outcome, refused=isinstance(reply, RateLimited))
        pause = 0.0
        for frame, (attempt, verdict) in zip(pack, outcome.verdicts):
            if isinstance(verdict, Retry):
                self._note_retry(attempt, frame.attempt, grant, reply)
                tray.hold(_Held(attempt, frame.image))
                pause = max(pause, verdict.after_s)
            else:
                self._tally(self._finish(attempt, verdict, grant))
        if pause:
            await self.clock.sleep(pause * random.uniform(0.5, 1.5))

    def _tally(self, outcome: str) -> None:
        self.report.outcomes[outcome] += 1
        self._progress.finished(outcome)

    def _no_new_work(self) -> bool:
        """Stopped on quota or errors, or asked to stop: no new request; those in flight land."""
        return self.report.stopped is not None or self._asked_to_stop

    def stop_politely(self) -> None:
        self._asked_to_stop = True
        self.ledger.wake()  # a worker waiting for a bucket gives its image back at once

    def _no_bucket_verdict(self, attempt: Attempt) -> Verdict:
        if self._no_new_work():
            return LeavePending()
        self.report.resume_at = self.ledger.reset_at()
        return self.ledger.no_bucket_verdict(attempt)

    # --- verdicts (the only writes of the results, and their log lines) -------------------------

    def _note_retry(self, attempt: Attempt, before: Attempt, grant: Grant, reply: Reply) -> None:
        if isinstance(reply, Blocked):
            log.info("caption_blocked_retry", image=attempt.number, model=grant.bucket.model, reason=reply.reason)
        elif isinstance(reply, Answer) and attempt.missed > before.missed:
            log.info("caption_missing_from_answer", image=attempt.number, bucket=grant.bucket.name, alone=attempt.alone)
        elif isinstance(reply, Answer):
            log.info("caption_rejected_retry", image=attempt.number, bucket=grant.bucket.name)

    def _finish(self, attempt: Attempt, verdict: Verdict, grant: Grant | None) -> str:
        """Store the image's end for this run; returns its outcome word."""
        if isinstance(verdict, Accept) and grant is not None:
            self.results.record_caption(
                attempt.number,
                verdict.text,
                model=grant.bucket.model,
                key_label=grant.key,
                attempts=attempt.requests,
                tokens=verdict.tokens,
                needs_review=verdict.needs_review,
                findings=verdict.findings,
                doubt=doubt(verdict.findings),
            )
            return "review" if verdict.needs_review else "done"
        if isinstance(verdict, GiveUp):
            if verdict.status == Status.FAILED:
                self.report.end = worst([self.report.end, RunEnd.FAILED])
            self.results.record_caption_failure(
                attempt.number, verdict.status, verdict.reason, attempts=attempt.requests, refused_by=attempt.refused_by
            )
            log.warning(f"caption_{verdict.status}", image=output_name(attempt.number), reason=verdict.reason)
            return verdict.status.value
        if isinstance(verdict, LeavePending) and attempt.refused_by:
            self.results.record_refusals(attempt.number, attempt.refused_by)  # a model it has not tried will
            self.report.end = worst([self.report.end, verdict.end])
            log.info("caption_waits_for_another_model", image=attempt.number, refused_by=sorted(attempt.refused_by))
        if isinstance(verdict, StopRun) and not self.report.stopped:
            self.report.stopped = verdict.reason  # images not captioned stay pending for the next run
            self.report.end = worst([self.report.end, verdict.end])
            log.warning("caption_stopped", reason=verdict.reason)
        return LEFT


@dataclass(frozen=True, eq=False)  # compared by identity: two tries of one frame are not the same
class _Held:
    """A frame in a worker's hands: where it is in this run, and its image."""

    attempt: Attempt
    image: bytes | None  # None until the frame goes out in a request


def _fits(grant: Grant) -> Callable[[_Held], bool]:
    """Whether a frame may join a request under `grant` as one of several."""
    bucket = grant.bucket
    return lambda frame: (
        not (
            frame.attempt.alone
            or bucket.name in frame.attempt.avoid_buckets
            or bucket.model in frame.attempt.avoid_models
        )
    )


class _Tray:
    """The frames one worker holds: taken from the queue, or given back by an answer (a frame a
    packed answer left out, a second opinion, a retry) to go out again with the next request."""

    def __init__(self, queue: asyncio.Queue[CaptionJob | None]):
        self._queue = queue
        self._held: deque[_Held] = deque()
        self._open = True  # the queue may still give this worker frames

    async def next(self) -> _Held | None:
        """The frame to lead the next request: one held, else the queue's next; None: no more."""
        if not self._held and self._open:
            job = await self._queue.get()
            if job is None:
                self._open = False
            else:
                self._held.append(_unread(job))
        return self._held.popleft() if self._held else None

    def take(self, room: int, fits: Callable[[_Held], bool]) -> list[_Held]:
        """Up to `room` of the frames held that fit a request."""
        taken = [frame for frame in self._held if fits(frame)][:room]
        for frame in taken:
            self._held.remove(frame)
        return taken

    def fill(self, room: int, fits: Callable[[_Held], bool]) -> list[_Held]:
        """Up to `room` frames from the queue that fit a request (without waiting for it); frames
        that do not fit are held."""
        taken: list[_Held] = []
        while len(taken) < room and self._open:
            try:
                job = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            if job is None:
                self._open = False
            else:
                frame = _unread(job)
                (taken if fits(frame) else self._held).append(frame)
        return taken

    def hold(self, frame: _Held) -> None:
        self._held.append(frame)


def _unread(job: CaptionJob) -> _Held:
    return _Held(Attempt(job.number, refused_by=job.refused_by, sent_back=job.sent_back), None)
