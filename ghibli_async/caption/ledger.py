"""The quota ledger: every bucket, its books in the state, and the waiting for a slot, in one object.

Built from the state's books (today's use, the limits servers taught, the answers of the last
minute, the buckets spent today), it grants slots (`await acquire(...)` waits, as aiolimiter
does, until a bucket has room), takes each answer back (`settle(grant, outcome)`: the buckets,
then the books in one transaction, then the log lines) and tells `status` each bucket's
`condition`. The policy stays where it is: the scheduler says which bucket and when, the reducer
what an answer means; the ledger carries both out, so the engine only reads, acquires, sends,
reduces, settles and finishes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

import structlog

from ghibli_async.caption.buckets import (
    WINDOW_MARGIN_S,
    WINDOW_S,
    Bucket,
    Grant,
    build_buckets,
    next_quota_reset,
    quota_day,
)
from ghibli_async.caption.reducer import (
    Attempt,
    CoolDown,
    Effect,
    LearnLimit,
    NarrowInFlight,
    OnePerRequest,
    Outcome,
    RetireKey,
    RetireModel,
    Served,
    SpendForToday,
    Verdict,
    when_no_bucket,
)
from ghibli_async.caption.scheduler import Exhausted, Scheduler
from ghibli_async.clock import Clock
from ghibli_async.config import ApiKey, CaptionConfig, ModelQuota
from ghibli_async.state.quota import BookWrite, EventWrite, LimitWrite, QuotaBooks, ServedWrite

log = structlog.get_logger(__name__)

OnWait = Callable[[str, float], None]  # (the bucket that frees first, seconds until it does)


class QuotaLedger:
    """The buckets of the configured keys and models as the books have them now (reads only);
    `open` makes one a caption run can spend."""

    def __init__(
        self,
        books: QuotaBooks,
        caption: CaptionConfig,
        keys: list[ApiKey],
        clock: Clock,
        models: Sequence[ModelQuota] | None = None,
    ) -> None:
        self.books = books
        self.clock = clock
        wall = clock.wall()
        self.day = quota_day(wall)
        self.usage = books.usage(self.day)
        self.learned = books.learned_limits()
        self.events = books.events()
        used = {bucket: usage.accepted for bucket, usage in self.usage.items()}
        models = caption.models if models is None else models
        buckets = build_buckets(caption, keys, day=self.day, used_today=used, learned=self.learned, models=models)
        spent = {(e.project, e.model) for e in self.events if e.kind == "spent" and e.until == self.day}
        for bucket in buckets:
            if (bucket.project, bucket.model) in spent:  # the server said so today: do not ask again
                bucket.spent_day = self.day
        self.scheduler = Scheduler(buckets, {model.name: model.images_per_request for model in models})
        self.retired: list[str] = []  # keys and models this run stopped using, and why
        self._said: set[tuple[str, str]] = set()
        self._cooldowns_said: dict[str, str] = {}  # bucket -> the cooldown end last logged
        self._answered = asyncio.Event()  # set (and replaced) whenever a slot may have come free

    @classmethod
    def open(
        cls,
        books: QuotaBooks,
        caption: CaptionConfig,
        keys: list[ApiKey],
        clock: Clock,
        models: Sequence[ModelQuota] | None = None,
    ) -> QuotaLedger:
        """The ledger of a caption run over `models` (default: every configured one): books follow
        keys renumbered in .env, and each bucket starts inside its true one-minute window (the
        answers of the last minute, from before a restart)."""
        for label in books.follow_renumbered_keys({key.label: key.fingerprint for key in keys}):
            log.warning("key_changed", key=label, effect="its quota books follow the key it held before")
        ledger = cls(books, caption, keys, clock, models)
        wall, now = clock.wall().timestamp(), clock.now()
        recent = books.recent_answers(since=wall - WINDOW_S - WINDOW_MARGIN_S)
        for bucket in ledger.buckets:
            times = recent.get((bucket.project, bucket.model), [])
            bucket.restore_window([now - max(0.0, wall - at) for at in times])
        return ledger

    @property
    def buckets(self) -> list[Bucket]:
        return self.scheduler.buckets

    def begin(self) -> None:
        """A new caption run tries every key and model again; what it retires is recorded anew."""
        self.books.clear_retirements()

    # --- slots ---------------------------------------------------------------------------------

    async def acquire(
        self, attempt: Attempt, *, give_up: Callable[[], str | None], on_wait: OnWait
    ) -> Grant | str | None:
        """A slot in the best bucket `attempt` may use, waiting for the earliest one if none has
        room; None when none is left this run; what `give_up` says (asked before every try) when
        it says anything."""
        while (reason := give_up()) is None:
            now = self.clock.now()
            decision = self.scheduler.acquire(
                now,
                quota_day(self.clock.wall()),
                avoid_buckets=attempt.avoid_buckets,
                avoid_models=attempt.avoid_models,
            )
            if isinstance(decision, Grant):
                log.debug("caption_request", image=attempt.number, bucket=decision.bucket.name, key=decision.key)
                return decision
            if isinstance(decision, Exhausted):
                return None
            wait_s = None if decision.until is None else decision.until - now
            if decision.bucket is not None and wait_s is not None and wait_s > 1.0:
                on_wait(decision.bucket, wait_s)
            await self.clock.sleep(wait_s, self._answered)
        return reason

    def wake(self) -> None:
        """A slot may have come free (or the run is stopping): the waiting look again."""
        self._answered.set()
        self._answered = asyncio.Event()

    def count_sent(self, grant: Grant) -> None:
        """Counted before the request goes out, so a crash never under-counts the day."""
        self.books.count_request(grant.bucket.project, grant.bucket.model, grant.bucket.day)

    def release(self, grant: Grant) -> None:
        """A slot that no request used."""
        self.scheduler.release(grant)
        self.wake()

    def settle(self, grant: Grant, outcome: Outcome, *, refused: bool) -> None:
        """The answer to the request sent under `grant` is back: the buckets learn what it meant,
        the books record it in one transaction, and what a person should know is said (once)."""
        now = self.clock.now()
        self.scheduler.answered(
            grant, now, key_works=outcome.key_works, model_works=outcome.model_works, refused=refused
        )
        writes: list[BookWrite] = []
        for effect in outcome.effects:
            self.scheduler.apply(effect, now)
            writes += self._book(effect, grant)
        bucket = grant.bucket
        self.books.settle(bucket.project, bucket.model, self.clock.wall().timestamp(), writes)
        self.wake()

    def _book(self, effect: Effect, grant: Grant) -> list[BookWrite]:
        """What one effect writes to the books, saying it as it goes (warnings once per subject)."""
        bucket = grant.bucket
        if isinstance(effect, Served):
            return [ServedWrite(bucket.day, effect.tokens or 0)]
        if isinstance(effect, SpendForToday):
            self._say_once("bucket_spent_for_today", bucket.name, bucket=bucket.name, used=bucket.used_today)
            return [EventWrite("spent", until=bucket.day)]
        if isinstance(effect, CoolDown):
            until = (self.clock.wall() + timedelta(seconds=effect.seconds)).isoformat(timespec="seconds")
            if self._cooldowns_said.get(bucket.name) == until:  # answers in flight meet the same limit
                return []
            self._cooldowns_said[bucket.name] = until
            log.info("bucket_cooldown", bucket=bucket.name, seconds=round(effect.seconds, 1), scope=effect.scope)
            return [EventWrite("cooldown", until=until, reason=effect.scope)]
        if isinstance(effect, LearnLimit):
            self._say_once(
                "limit_learned",
                f"{bucket.name}/{effect.kind}",
                bucket=bucket.name,
                limit=effect.kind,
                configured=effect.configured,
                server=effect.value,
            )
            return [LimitWrite(effect.kind, effect.value)]
        if isinstance(effect, NarrowInFlight):
            self._say_once(
                "in_flight_narrowed", bucket.name, bucket=bucket.name, max_in_flight=bucket.limits.max_in_flight
            )
        elif isinstance(effect, OnePerRequest):
            self._say_once("model_one_frame_per_request", effect.model, model=effect.model, reason=effect.reason)
        elif isinstance(effect, RetireKey):
            if self._say_once("key_retired", effect.key, key=effect.key, reason=effect.reason):
                self.retired.append(f"key {effect.key} not used for the rest of this run: {effect.reason}")
                return [EventWrite("key_retired", reason=effect.reason, project=effect.key, model="*")]
        elif isinstance(effect, RetireModel):
            if self._say_once("model_retired", effect.model, model=effect.model, reason=effect.reason):
                self.retired.append(f"model {effect.model} not used for the rest of this run: {effect.reason}")
                return [EventWrite("model_retired", reason=effect.reason, project="*", model=effect.model)]
        return []

    def _say_once(self, event: str, subject: str, **fields: object) -> bool:
        """Log a warning the first time only; True when it was the first time."""
        if (event, subject) in self._said:
            return False
        self._said.add((event, subject))
        log.warning(event, **fields)
        return True

    # --- questions -------------------------------------------------------------------------------

    def pack_size(self, model: str) -> int:
        return self.scheduler.pack_size(model)

    def other_buckets(self, grant: Grant) -> list[tuple[str, str]]:
        """The (bucket, model) pairs other than the grant's that could still take a frame (for a
        second opinion)."""
        return self.scheduler.other_buckets(grant.bucket.day, grant)

    def reset_at(self) -> str:
        """The next quota reset, in local time."""
        return next_quota_reset(self.clock.wall()).astimezone().strftime("%Y-%m-%d %H:%M %Z")

    def no_bucket_verdict(self, attempt: Attempt) -> Verdict:
        """No bucket will take `attempt` again this run: what that means for it."""
        return when_no_bucket(
            attempt,
            any_usable=self.scheduler.any_usable(quota_day(self.clock.wall())),
            any_key_or_model_left=self.scheduler.any_key_or_model_left(),
            untried_models=self.scheduler.any_model_left_besides(attempt.avoid_models),
            reset_at=self.reset_at(),
        )

    def condition(self, bucket: Bucket) -> str:
        """As the books have it: open / cooling until T / spent until the reset / key invalid /
        model retired."""
        mine = [e for e in self.events if (e.project, e.model) == (bucket.project, bucket.model)]
        if any(e.kind == "model_retired" and e.model == bucket.model for e in self.events):
            return "model retired in the last run"
        retired_keys = {e.project for e in self.events if e.kind == "key_retired"}
        if bucket.keys and set(bucket.keys) <= retired_keys:
            return "key invalid (last run)"
        if bucket.spent_day == self.day or (bucket.limits.rpd is not None and bucket.used_today >= bucket.limits.rpd):
            return f"spent until {next_quota_reset(self.clock.wall()).astimezone():%H:%M %Z}"
        cooling = [datetime.fromisoformat(e.until) for e in mine if e.kind == "cooldown" and e.until]
        if cooling and max(cooling) > self.clock.wall():
            return f"cooling until {max(cooling).astimezone():%H:%M:%S}"
        return "open"
