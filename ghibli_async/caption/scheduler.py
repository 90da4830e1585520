"""The scheduling policy: which bucket serves the next request, and when. Pure: buckets, limits and
the time come in; a decision comes out. The engine does the waiting and the I/O."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, replace

from ghibli_async.caption.buckets import Bucket, Grant
from ghibli_async.caption.reducer import (
    CoolDown,
    Effect,
    LearnLimit,
    NarrowInFlight,
    OnePerRequest,
    RetireKey,
    RetireModel,
    Served,
    SpendForToday,
)

# Window times restored from wall-clock timestamps carry float rounding (a free time 3e-11 s
# ahead); a wait shorter than the event loop's clock resolution would never let time move.
CLOCK_SLACK_S = 1e-6
_INITIAL_TOKEN_ESTIMATE = 600  # per frame: a 512x512 image (258 tokens) + prompt + answer, before any reply says


@dataclass(frozen=True)
class Wait:
    """No allowed bucket has room now; the first one will at `until`, or (None) once a request in
    flight comes back."""

    until: float | None
    bucket: str | None = None  # the bucket that frees first (None with `until`)


@dataclass(frozen=True)
class Exhausted:
    """No allowed bucket can take a request again this run (spent for the day, or retired)."""


Decision = Grant | Wait | Exhausted


class Scheduler:
    """Routes each request to the highest-priority bucket with capacity now (buckets come in
    priority order) and keeps the buckets' books as replies come back."""

    def __init__(self, buckets: list[Bucket], frames_per_request: dict[str, int] | None = None) -> None:
        self.buckets = buckets
        self._by_name = {bucket.name: bucket for bucket in buckets}
        self.token_estimate = _INITIAL_TOKEN_ESTIMATE  # per frame
        self.frames_per_request = dict(frames_per_request or {})  # model -> frames one request carries
        # A key or model that has not answered yet gets one request at a time: an invalid key or
        # a retired model then costs one request, not one per worker.
        self.proven: set[str] = set()
        self._in_flight: Counter[str] = Counter()

    def acquire(
        self, now: float, day: str, *, avoid_buckets: Collection[str] = (), avoid_models: Collection[str] = ()
    ) -> Decision:
        """Take a slot in the best bucket free now (recording it in the same step), or say when to retry."""
        for bucket in self.buckets:
            bucket.start_day(day)
        allowed = [
            bucket
            for bucket in self.buckets
            if bucket.usable(day) and bucket.name not in avoid_buckets and bucket.model not in avoid_models
        ]
        if not allowed:
            return Exhausted()
        next_free: list[tuple[float, str]] = []
        for bucket in allowed:
            tokens = self.token_estimate * self.pack_size(bucket.model)
            at = bucket.free_at(now, tokens)
            if at > now + CLOCK_SLACK_S:
                if at != math.inf:  # infinity: full of requests in flight; an answer wakes the caller
                    next_free.append((at, bucket.name))
                continue
            key = next((k for k in bucket.keys_in_turn() if self._may_send(k, bucket.model)), None)
            if key is None:
                # The bucket has room but its key or model is still being probed: wait one round
                # trip for that answer rather than hand the image to a worse bucket.
                break
            bucket.take(now, key, tokens)
            self._in_flight.update((key, bucket.model))
            return Grant(bucket, key, tokens, now)
        return Wait(*min(next_free)) if next_free else Wait(None)

    def release(self, grant: Grant) -> None:
        """A slot taken but not used (no request went out): it is free again."""
        grant.bucket.untake(grant.sent_at, grant.tokens_reserved)
        self._in_flight.subtract((grant.key, grant.bucket.model))

    def pack_size(self, model: str) -> int:
        """How many frames a request to `model` carries (at most)."""
        return self.frames_per_request.get(model, 1)

    def _may_send(self, key: str, model: str) -> bool:
        return all(name in self.proven or not self._in_flight[name] for name in (key, model))

    def answered(self, grant: Grant, now: float, *, key_works: bool, model_works: bool, refused: bool = False) -> None:
        """A request came back: settle it in its bucket, free its probe slot, note what it proved."""
        grant.bucket.settle(now, refused=refused)
        self._in_flight.subtract((grant.key, grant.bucket.model))
        if key_works:
            self.proven.add(grant.key)
        if model_works:
            self.proven.add(grant.bucket.model)

    def apply(self, effect: Effect, now: float) -> None:
        """Carry out one of the reducer's effects on the buckets."""
        if isinstance(effect, RetireKey):
            for bucket in self.buckets:
                if effect.key in bucket.keys:
                    bucket.keys.remove(effect.key)
            return
        if isinstance(effect, RetireModel):
            for bucket in self.buckets:
                if bucket.model == effect.model:
                    bucket.retired = effect.reason
            return
        if isinstance(effect, OnePerRequest):
            self.frames_per_request[effect.model] = 1
            return
        bucket = self._by_name[effect.bucket]
        if isinstance(effect, Served):
            bucket.strikes = 0
            if effect.tokens:
                bucket.correct_tokens(effect.sent_at, effect.tokens - effect.reserved)
                self.token_estimate = round(0.8 * self.token_estimate + 0.2 * effect.tokens / effect.frames)
        elif isinstance(effect, CoolDown):
            bucket.strikes += 1
            bucket.cooldown_until = max(bucket.cooldown_until, now + effect.seconds)
        elif isinstance(effect, SpendForToday):
            bucket.spent_day = bucket.day
        elif isinstance(effect, LearnLimit):
            bucket.limits = replace(bucket.limits, **{effect.kind: effect.value})
        elif isinstance(effect, NarrowInFlight):
            bucket.limits = replace(bucket.limits, max_in_flight=max(1, bucket.in_flight))

    # --- questions (read only) --------------------------------------------------------------

    def any_usable(self, day: str) -> bool:
        return any(bucket.usable(day) for bucket in self.buckets)

    def any_key_or_model_left(self) -> bool:
        """Some bucket still has a working key and a model not retired (spent or not)."""
        return any(bucket.retired is None and bucket.keys for bucket in self.buckets)

    def any_model_left_besides(self, models: Collection[str]) -> bool:
        """Some bucket of a model not in `models` still has a working key (spent or cooling or not)."""
        return any(bucket.retired is None and bucket.keys and bucket.model not in models for bucket in self.buckets)

    def other_buckets(self, day: str, grant: Grant) -> list[tuple[str, str]]:
        return [(b.name, b.model) for b in self.buckets if b.usable(day) and b.name != grant.bucket.name]
