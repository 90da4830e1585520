"""The scheduling policy: which bucket serves the next request, and when. Pure: buckets, limits and
the time come in; a decision comes out. The engine does the waiting and the I/O."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass

from ghibli_async.caption.buckets import Bucket
from ghibli_async.config import BackoffConfig

_INITIAL_TOKEN_ESTIMATE = 600  # a 512x512 image (258 tokens) + prompt + answer, before any reply says


@dataclass(frozen=True)
class Grant:
    """Send the request now through `bucket` with `key`; the slot is already counted."""

    bucket: Bucket
    key: str
    tokens_reserved: int


@dataclass(frozen=True)
class Wait:
    """No allowed bucket has room now; the first one will at `until`, or (None) once a request in
    flight comes back."""

    until: float | None


@dataclass(frozen=True)
class Exhausted:
    """No allowed bucket can take a request again this run (spent for the day, or retired)."""


Decision = Grant | Wait | Exhausted


class Scheduler:
    """Routes each request to the highest-priority bucket with capacity now (buckets come in
    priority order) and keeps the buckets' books as replies come back."""

    def __init__(self, buckets: list[Bucket], backoff: BackoffConfig) -> None:
        self.buckets = buckets
        self.backoff = backoff
        self.token_estimate = _INITIAL_TOKEN_ESTIMATE
        # A key or model that has not answered yet gets one request at a time: an invalid key or
        # a retired model then costs one request, not one per worker.
        self.proven: set[str] = set()
        self._in_flight: Counter[str] = Counter()

    def acquire(
        self, now: float, day: str, *, avoid_buckets: Collection[str] = (), avoid_models: Collection[str] = ()
    ) -> Decision:
        """Take a slot in the best bucket free now (recording it in the same step), or say when to retry."""
        allowed = [
            bucket
            for bucket in self.buckets
            if bucket.usable(day) and bucket.name not in avoid_buckets and bucket.model not in avoid_models
        ]
        if not allowed:
            return Exhausted()
        next_free: list[float] = []
        for bucket in allowed:
            at = bucket.free_at(now, self.token_estimate)
            if at > now:
                next_free.append(at)
                continue
            key = next((k for k in bucket.keys_in_turn() if self._may_send(k, bucket.model)), None)
            if key is not None:
                bucket.take(now, key, self.token_estimate)
                self._in_flight.update((key, bucket.model))
                return Grant(bucket, key, self.token_estimate)
        return Wait(min(next_free) if next_free else None)

    def _may_send(self, key: str, model: str) -> bool:
        return all(name in self.proven or not self._in_flight[name] for name in (key, model))

    def answered(self, grant: Grant, now: float, *, key_works: bool, model_works: bool) -> None:
        """A request came back: settle it in its bucket, free its probe slot, note what it proved."""
        grant.bucket.settle(now)
        self._in_flight.subtract((grant.key, grant.bucket.model))
        if key_works:
            self.proven.add(grant.key)
        if model_works:
            self.proven.add(grant.bucket.model)

    def any_usable(self, day: str) -> bool:
        return any(bucket.usable(day) for bucket in self.buckets)

    def succeeded(self, grant: Grant, now: float, tokens_used: int | None) -> None:
        grant.bucket.strikes = 0
        if tokens_used:
            grant.bucket.correct_tokens(now, tokens_used - grant.tokens_reserved)
            self.token_estimate = round(0.8 * self.token_estimate + 0.2 * tokens_used)

    def cool_down(self, bucket: Bucket, now: float, retry_after: float | None) -> float:
        """A per-minute 429: rest the bucket for the server's delay, else 5 s, 10 s, 20 s … (capped)."""
        bucket.strikes += 1
        if retry_after is None:
            retry_after = min(
                self.backoff.initial_s * self.backoff.multiplier ** (bucket.strikes - 1), self.backoff.max_s
            )
        bucket.cooldown_until = max(bucket.cooldown_until, now + retry_after)
        return retry_after

    def spend_for_today(self, bucket: Bucket, day: str) -> None:
        """A per-day 429: nothing more from this bucket until the next quota day, whatever the delay says."""
        bucket.spent_day = day

    def retire_key(self, label: str) -> list[Bucket]:
        """An invalid key: no bucket uses it again this run. Returns the buckets it served."""
        served = [bucket for bucket in self.buckets if label in bucket.keys]
        for bucket in served:
            bucket.keys.remove(label)
        return served

    def retire_model(self, model: str, reason: str) -> None:
        """A model that is gone (404) or refuses our requests: no bucket uses it again this run."""
        for bucket in self.buckets:
            if bucket.model == model:
                bucket.retired = reason
