"""Caption stage: an async producer-consumer over the quota buckets.

A producer feeds pending images into a bounded queue; `concurrency` workers each take an image,
ask the scheduler for the best bucket with room now (waiting for the earliest one when none has),
send one request, and act on what the service answered. Only one request per image is ever in
flight, and the state is written the moment an answer is accepted, so a crash costs at most the
requests in flight.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta

import aiofiles
import structlog
from tqdm.auto import tqdm

from ghibli_async.caption.buckets import Bucket, build_buckets, next_quota_reset, quota_day
from ghibli_async.caption.gemini import (
    Answer,
    Blocked,
    GeminiClient,
    KeyRejected,
    ModelUnavailable,
    RateLimited,
    Reply,
    TransientError,
)
from ghibli_async.caption.scheduler import Grant, Scheduler, Wait
from ghibli_async.caption.text import build_prompt, caption_problems, normalize_caption
from ghibli_async.clock import Clock
from ghibli_async.config import ApiKey, Config
from ghibli_async.stages.resize import output_name
from ghibli_async.state import CaptionJob, StateStore

log = structlog.get_logger(__name__)


@dataclass
class CaptionReport:
    """What the caption stage did in this run; `stopped` says why it ended early, if it did."""

    outcomes: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    stopped: str | None = None


@dataclass
class _ImageTry:
    """One image's way through the buckets: what to avoid, and how often each kind of retry ran."""

    job: CaptionJob
    avoid_buckets: set[str] = field(default_factory=set)
    avoid_models: set[str] = field(default_factory=set)
    requests: int = 0
    transient_errors: int = 0
    blocks: int = 0
    bad_answers: int = 0


class CaptionEngine:
    def __init__(self, store: StateStore, config: Config, keys: list[ApiKey], clock: Clock) -> None:
        self.store = store
        self.caption = config.caption
        self.clock = clock
        self.images_dir = config.resized_dir
        day = quota_day(clock.wall())
        used = {bucket: requests for bucket, (requests, _) in store.quota_usage(day).items()}
        buckets = build_buckets(self.caption, keys, day=day, used_today=used, learned=store.learned_limits())
        self.scheduler = Scheduler(buckets, self.caption.backoff)
        self.client = GeminiClient(self.caption, keys)
        self.prompt = build_prompt(self.caption)
        self.report = CaptionReport()
        self._said: set[tuple[str, str]] = set()
        self._answered = asyncio.Event()  # set (and replaced) whenever a request comes back
        self._failing_streak = 0  # server errors and lost connections in a row, across workers

    async def run(self, *, limit: int | None = None) -> CaptionReport:
        jobs = self.store.caption_jobs(limit=limit)
        if not jobs:
            return self.report
        workers = min(self.caption.concurrency, len(jobs))
        log.info("caption_start", images=len(jobs), buckets=len(self.scheduler.buckets), workers=workers)
        queue: asyncio.Queue[CaptionJob | None] = asyncio.Queue(maxsize=workers * 2)
        with tqdm(total=len(jobs), desc="caption", unit="img") as bar:
            tasks = [asyncio.create_task(self._produce(queue, jobs, workers))]
            tasks += [asyncio.create_task(self._work(queue, bar)) for _ in range(workers)]
            try:
                await asyncio.gather(*tasks)  # the first failure (or Ctrl-C) ends them all
            finally:
                for task in tasks:
                    task.cancel()
                await self.client.aclose()
        return self.report

    async def _produce(self, queue: asyncio.Queue[CaptionJob | None], jobs: list[CaptionJob], workers: int) -> None:
        for job in jobs:
            if self.report.stopped:
                break
            await queue.put(job)
        for _ in range(workers):
            await queue.put(None)

    async def _work(self, queue: asyncio.Queue[CaptionJob | None], bar: tqdm) -> None:
        started = self.clock.now()
        while (job := await queue.get()) is not None:
            if self.report.stopped:
                continue  # leave it pending for the next run
            outcome = await self._caption(_ImageTry(job))
            self.report.outcomes[outcome] += 1
            bar.update()
            bar.set_postfix_str(self._progress_note(started), refresh=False)

    async def _caption(self, attempt: _ImageTry) -> str:
        """Caption one image; returns its outcome (done, review, blocked, failed, waiting)."""
        path = self.images_dir / output_name(attempt.job.number)
        try:
            async with aiofiles.open(path, "rb") as stream:
                image = await stream.read()
        except OSError as exc:
            return self._give_up(attempt, "failed", f"cannot read {path.name}: {exc.strerror}")
        while True:
            grant = await self._acquire(attempt)
            if grant is None:
                return self._no_bucket_left(attempt)
            reply = await self.client.generate(grant.key, grant.bucket.model, image, self.prompt)
            attempt.requests += 1
            self._note_answer(grant, reply)
            outcome = await self._handle(reply, grant, attempt)
            if outcome is not None:
                return outcome

    async def _acquire(self, attempt: _ImageTry) -> Grant | None:
        """The best bucket with room, waiting for the earliest one if none has; None if none is left."""
        while not self.report.stopped:
            day = quota_day(self.clock.wall())
            now = self.clock.now()
            decision = self.scheduler.acquire(
                now, day, avoid_buckets=attempt.avoid_buckets, avoid_models=attempt.avoid_models
            )
            if isinstance(decision, Grant):
                bucket = decision.bucket
                self.store.count_request(bucket.project, bucket.model, day)
                self.report.requests += 1
                return decision
            if not isinstance(decision, Wait):
                return None
            await self.clock.sleep(None if decision.until is None else decision.until - now, self._answered)
        return None

    def _note_answer(self, grant: Grant, reply: Reply) -> None:
        """Free the request's probe slot and wake the workers waiting for one."""
        reached = not isinstance(reply, TransientError)
        self.scheduler.answered(
            grant,
            self.clock.now(),
            key_works=reached and not isinstance(reply, KeyRejected),
            model_works=reached and not isinstance(reply, ModelUnavailable | KeyRejected),
        )
        self._answered.set()
        self._answered = asyncio.Event()
        self._failing_streak = self._failing_streak + 1 if not reached else 0

    async def _handle(self, reply: Reply, grant: Grant, attempt: _ImageTry) -> str | None:
        """Act on one answer; returns the image's final outcome, or None to try again."""
        bucket, now = grant.bucket, self.clock.now()
        if isinstance(reply, Answer | Blocked):
            self.scheduler.succeeded(grant, now, reply.tokens)
            if reply.tokens:
                self.store.count_request(bucket.project, bucket.model, bucket.day, tokens=reply.tokens, requests=0)
        if isinstance(reply, Answer):
            return self._accept(reply, grant, attempt)
        if isinstance(reply, Blocked):
            attempt.blocks += 1
            attempt.avoid_models.add(bucket.model)
            if attempt.blocks > self.caption.blocked_retries:
                return self._give_up(attempt, "blocked", reply.reason)
            log.info("caption_blocked_retry", image=attempt.job.number, model=bucket.model, reason=reply.reason)
            return None
        if isinstance(reply, RateLimited):
            self._rate_limited(reply, grant, now)
        elif isinstance(reply, KeyRejected):
            self.scheduler.retire_key(grant.key)
            if self._say_once("key_retired", grant.key, key=grant.key, reason=reply.reason):
                self.store.note_bucket_event(grant.key, "*", "key_retired", reason=reply.reason)
        elif isinstance(reply, ModelUnavailable):
            self.scheduler.retire_model(bucket.model, reply.reason)
            if self._say_once("model_retired", bucket.model, model=bucket.model, reason=reply.reason):
                self.store.note_bucket_event("*", bucket.model, "model_retired", reason=reply.reason)
        elif isinstance(reply, TransientError):
            attempt.transient_errors += 1
            if self._failing_streak >= max(10, 2 * self.caption.concurrency):
                self._stop(f"the Gemini API keeps failing ({reply.reason}): rerun when it answers again")
                return "waiting"
            if attempt.transient_errors >= self.caption.max_attempts:
                return self._give_up(attempt, "failed", reply.reason)
            await self.clock.sleep(self._transient_delay(attempt.transient_errors))
        return None

    def _accept(self, reply: Answer, grant: Grant, attempt: _ImageTry) -> str | None:
        text = normalize_caption(reply.text, self.caption.trigger)
        problems = caption_problems(text, self.caption)
        if problems and attempt.bad_answers == 0 and self._other_bucket_exists(attempt, grant):
            attempt.bad_answers += 1
            attempt.avoid_buckets.add(grant.bucket.name)
            log.info("caption_rejected_retry", image=attempt.job.number, problems=problems)
            return None
        self.store.record_caption(
            attempt.job.number,
            text,
            model=grant.bucket.model,
            key_label=grant.key,
            attempts=attempt.requests,
            tokens=reply.tokens,
            needs_review=bool(problems),
        )
        return "review" if problems else "done"

    def _rate_limited(self, reply: RateLimited, grant: Grant, now: float) -> None:
        bucket = grant.bucket
        if reply.scope == "day":
            self._learn(bucket, "rpd", reply.quota_value)
            self.scheduler.spend_for_today(bucket, bucket.day)
            self.store.mark_day_spent(bucket.project, bucket.model, bucket.day, bucket.limits.rpd)
            self._say_once("bucket_spent_for_today", bucket.name, bucket=bucket.name, used=bucket.used_today)
            return
        self._learn(bucket, "tpm" if reply.scope == "tokens" else "rpm", reply.quota_value)
        delay = self.scheduler.cool_down(bucket, now, reply.retry_after)
        until = (self.clock.wall() + timedelta(seconds=delay)).isoformat(timespec="seconds")
        self.store.note_bucket_event(bucket.project, bucket.model, "cooldown", until=until, reason=reply.scope)
        log.info("bucket_cooldown", bucket=bucket.name, seconds=round(delay, 1), scope=reply.scope)

    def _learn(self, bucket: Bucket, kind: str, value: int | None) -> None:
        """The server's number for a limit wins over the table; persist it and say so once."""
        if value is None or value == getattr(bucket.limits, kind):
            return
        configured = getattr(bucket.limits, kind)
        setattr(bucket.limits, kind, value)
        self.store.save_learned_limit(bucket.project, bucket.model, kind, value)
        self._say_once(
            "limit_learned",
            f"{bucket.name}/{kind}",
            bucket=bucket.name,
            limit=kind,
            configured=configured,
            server=value,
        )

    def _no_bucket_left(self, attempt: _ImageTry) -> str:
        day = quota_day(self.clock.wall())
        if not self.scheduler.any_usable(day):
            self._stop_for_quota()
            return "waiting"
        if attempt.blocks:  # no other model to try after a safety block
            return self._give_up(attempt, "blocked", "blocked, and no other model to try")
        return "waiting"

    def _other_bucket_exists(self, attempt: _ImageTry, grant: Grant) -> bool:
        day = grant.bucket.day
        return any(
            b.usable(day) and b.name != grant.bucket.name and b.name not in attempt.avoid_buckets
            for b in self.scheduler.buckets
        )

    def _stop_for_quota(self) -> None:
        if all(bucket.retired or not bucket.keys for bucket in self.scheduler.buckets):
            self._stop("no usable key or model is left: check the keys (`check-keys`) and the model list")
        else:
            reset = next_quota_reset(self.clock.wall())
            self._stop(
                f"every quota bucket is spent for today; quotas reset at midnight Pacific time "
                f"({reset.astimezone().strftime('%Y-%m-%d %H:%M %Z')}): rerun then to continue"
            )

    def _stop(self, reason: str) -> None:
        """End the stage early; images not captioned stay pending for the next run."""
        if not self.report.stopped:
            self.report.stopped = reason
            log.warning("caption_stopped", reason=reason)

    def _give_up(self, attempt: _ImageTry, status: str, reason: str) -> str:
        self.store.record_caption_failure(attempt.job.number, status, reason, attempts=attempt.requests)
        log.warning(f"caption_{status}", image=output_name(attempt.job.number), reason=reason)
        return status

    def _transient_delay(self, failures: int) -> float:
        backoff = self.caption.backoff
        base = min(backoff.initial_s * backoff.multiplier ** (failures - 1), backoff.max_s)
        return base * random.uniform(0.5, 1.5)

    def _say_once(self, event: str, subject: str, **fields: object) -> bool:
        """Log a warning the first time only; True when it was the first time."""
        if (event, subject) in self._said:
            return False
        self._said.add((event, subject))
        log.warning(event, **fields)
        return True

    def _progress_note(self, started: float) -> str:
        minutes = max((self.clock.now() - started) / 60, 1e-9)
        done = self.report.outcomes["done"] + self.report.outcomes["review"]
        day, now = quota_day(self.clock.wall()), self.clock.now()
        states = Counter(
            "spent" if not b.usable(day) else "cooling" if b.cooldown_until > now else "active"
            for b in self.scheduler.buckets
        )
        return f"{done / minutes:.1f}/min, buckets " + " ".join(f"{k} {v}" for k, v in sorted(states.items()))
