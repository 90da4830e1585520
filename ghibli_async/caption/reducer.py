"""What an answer means, for the quota books and for the image: pure, no I/O, no clock.

`reduce_reply(grant, reply, attempts, ...)` returns the effects on the books (cool a bucket down,
spend it for today, retire a key or a model, learn a limit, count what was served) and a verdict
for each frame of the request (accept, retry, give up, stop the run) as plain values. The engine
acquires a grant, sends, reduces and applies; a new provider adds a client that returns the same
answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from ghibli_async.backoff import backoff_delay
from ghibli_async.caption.answers import (
    Answer,
    Blocked,
    KeyRejected,
    ModelUnavailable,
    PackRefused,
    RateLimited,
    Reply,
    TransientError,
)
from ghibli_async.caption.buckets import Grant
from ghibli_async.caption.checks import check_caption, doubt
from ghibli_async.caption.packing import MISSES_BEFORE_SINGLE, PackReading, read_pack
from ghibli_async.caption.text import normalize_caption
from ghibli_async.config import CaptionConfig
from ghibli_async.facts import Finding
from ghibli_async.run_end import RunEnd
from ghibli_async.statuses import Status

# A per-day 429 this soon after midnight Pacific may come from a server whose day has not turned
# yet: it is asked again after EARLY_DAY_RETRY_S, doubling (a few requests in that hour).
LATE_RESET_S = 3600.0
EARLY_DAY_RETRY_S = 120.0
# After this many packed answers in a row without one readable caption, a model gets one frame per
# request for the rest of the run (it cannot keep the answer's form).
UNREADABLE_PACKS_BEFORE_SINGLE = 3

# --- one image's way through the buckets ------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """What one image has been through so far in this run."""

    number: int
    requests: int = 0
    transient_errors: int = 0
    bad_answers: int = 0
    refused_by: frozenset[str] = field(default_factory=frozenset)  # models that blocked it, in any run
    avoid_buckets: frozenset[str] = field(default_factory=frozenset)
    missed: int = 0  # packed answers that left it out
    alone: bool = False  # from now on one frame per request (a packed request of it was blocked, or it was missed)
    sent_back: frozenset[str] = field(default_factory=frozenset)  # models whose caption a person sent back

    @property
    def avoid_models(self) -> frozenset[str]:
        return self.refused_by | self.sent_back


# --- effects on the books -----------------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    """The request was served (a caption or a safety block): the bucket works; count its tokens."""

    bucket: str
    tokens: int | None
    reserved: int = 0  # the tokens the scheduler set aside for it, which `tokens` replaces
    frames: int = 1  # the frames the request carried
    sent_at: float = 0.0  # when the request was sent (its tokens count from then)


@dataclass(frozen=True)
class CoolDown:
    """A per-minute (or per-token) 429: no request through `bucket` for `seconds`."""

    bucket: str
    seconds: float
    scope: str


@dataclass(frozen=True)
class SpendForToday:
    """A per-day 429: nothing more from `bucket` until the next quota day."""

    bucket: str


@dataclass(frozen=True)
class LearnLimit:
    """The server named a limit (`rpm`, `rpd`, `tpm`) other than ours: it wins from now on."""

    bucket: str
    kind: str
    value: int
    configured: int


@dataclass(frozen=True)
class NarrowInFlight:
    """A server with an in-flight cap was full (503): keep at most as many requests in flight as it
    holds now, for the rest of the run (its real batch is narrower than `max_in_flight`)."""

    bucket: str


@dataclass(frozen=True)
class OnePerRequest:
    """`model` takes one frame per request for the rest of the run (it refused several, or could not
    answer several in the packed form)."""

    model: str
    reason: str


@dataclass(frozen=True)
class RetireKey:
    key: str
    reason: str


@dataclass(frozen=True)
class RetireModel:
    model: str
    reason: str


Effect = Served | CoolDown | SpendForToday | LearnLimit | NarrowInFlight | OnePerRequest | RetireKey | RetireModel


# --- verdicts for the image -----------------------------------------------------------------------


@dataclass(frozen=True)
class Accept:
    text: str
    tokens: int | None = None
    findings: tuple[Finding, ...] = ()  # the checks that fired, stored with the caption
    needs_review: bool = False  # doubtful enough: stored, but flagged for review and not exported


@dataclass(frozen=True)
class Retry:
    """Ask again (the scheduler picks the bucket) after `after_s` seconds."""

    after_s: float = 0.0


@dataclass(frozen=True)
class GiveUp:
    status: Status  # BLOCKED | FAILED
    reason: str


@dataclass(frozen=True)
class StopRun:
    """Stop taking images: the rest stay pending for the next run."""

    reason: str
    end: RunEnd  # QUOTA, NO_KEYS or FAILED


@dataclass(frozen=True)
class LeavePending:
    """No bucket may take this image now; a later run will (`end`: QUOTA when it waits for a
    spent or cooling model it has not tried)."""

    end: RunEnd = RunEnd.DONE


Verdict = Accept | Retry | GiveUp | StopRun | LeavePending


@dataclass(frozen=True)
class Outcome:
    effects: tuple[Effect, ...]
    verdicts: tuple[tuple[Attempt, Verdict], ...]  # one per frame of the request, in its order
    key_works: bool  # the answer proves the key (and below, the model) can be used
    model_works: bool
    unreadable: bool = False  # a packed answer without one readable caption
    pack_problems: tuple[str, ...] = ()  # what was wrong with a packed answer (ids left out, repeated, unknown)

    @property
    def verdict(self) -> Verdict:
        """The verdict of a one-frame request."""
        return self.verdicts[0][1]

    @property
    def attempt(self) -> Attempt:
        return self.verdicts[0][0]


def reduce_reply(
    grant: Grant,
    reply: Reply,
    attempts: Attempt | tuple[Attempt, ...],
    rules: CaptionConfig,
    *,
    failing_streak: int,
    other_buckets: Sequence[tuple[str, str]],
    since_reset_s: float,
    unreadable_packs: int = 0,
) -> Outcome:
    """What `reply` to the request sent under `grant` for the frames of `attempts` means.
    `failing_streak` counts the transient errors in a row across all workers (this one included);
    `other_buckets`: the (bucket, model) pairs other than this one that could still take a frame
    (for a second opinion on a bad caption); `since_reset_s`: how long ago the quota day began (midnight
    Pacific); `unreadable_packs`: this model's packed answers in a row before this one without a
    readable caption."""
    if isinstance(attempts, Attempt):
        attempts = (attempts,)
    attempts = tuple(replace(attempt, requests=attempt.requests + 1) for attempt in attempts)
    key_works, model_works = _proves(reply)
    if len(attempts) > 1 and isinstance(reply, Answer | Blocked):
        effects, verdicts, reading = _reduce_pack(grant, reply, attempts, rules, other_buckets, unreadable_packs)
        if reading is None:  # blocked
            return Outcome(effects, verdicts, key_works, model_works)
        return Outcome(effects, verdicts, key_works, model_works, not reading.captions, reading.problems)
    reduced = [
        _reduce(grant, reply, attempt, rules, failing_streak, other_buckets, since_reset_s) for attempt in attempts
    ]
    effects = tuple(reduced[0][0])  # what an answer means for the books does not depend on the frame
    verdicts = tuple((attempt, verdict) for _, verdict, attempt in reduced)
    return Outcome(effects, verdicts, key_works, model_works)


def _reduce_pack(
    grant: Grant,
    reply: Answer | Blocked,
    attempts: tuple[Attempt, ...],
    rules: CaptionConfig,
    other_buckets: Sequence[tuple[str, str]],
    unreadable_packs: int,
) -> tuple[tuple[Effect, ...], tuple[tuple[Attempt, Verdict], ...], PackReading | None]:
    """A packed request was served: each frame's caption is judged on its own; a frame the answer
    left out goes back to the queue (alone after a second miss); a safety block sends every frame
    of the pack alone, so one frame cannot block the others. Also returns how the answer read
    (None for a block)."""
    bucket = grant.bucket
    effects: list[Effect] = [Served(bucket.name, reply.tokens, grant.tokens_reserved, len(attempts), grant.sent_at)]
    if isinstance(reply, Blocked):
        return tuple(effects), tuple((replace(attempt, alone=True), Retry()) for attempt in attempts), None
    reading = read_pack(reply.text, [attempt.number for attempt in attempts])
    if not reading.captions and unreadable_packs + 1 >= UNREADABLE_PACKS_BEFORE_SINGLE:
        effects.append(OnePerRequest(bucket.model, f"{unreadable_packs + 1} packed answers in a row unreadable"))
    share = round(reply.tokens / len(attempts)) if reply.tokens else None
    verdicts: list[tuple[Attempt, Verdict]] = []
    for attempt in attempts:
        raw = reading.captions.get(attempt.number)
        if raw is None:
            missed = attempt.missed + 1
            verdicts.append((replace(attempt, missed=missed, alone=missed >= MISSES_BEFORE_SINGLE), Retry()))
            continue
        verdict, judged = _judge(grant, raw, share, attempt, rules, other_buckets)
        verdicts.append((judged, verdict))
    return tuple(effects), tuple(verdicts), reading


def _judge(
    grant: Grant,
    raw: str,
    tokens: int | None,
    attempt: Attempt,
    rules: CaptionConfig,
    other_buckets: Sequence[tuple[str, str]],
) -> tuple[Verdict, Attempt]:
    """One frame's caption through the clean-up and the checks: kept, or asked again elsewhere once."""
    text = normalize_caption(raw, rules.trigger, rules.separator)
    findings = check_caption(text, rules)
    doubtful = doubt(findings) >= rules.review_doubt
    if doubtful and attempt.bad_answers == 0 and _may_go_elsewhere(attempt, other_buckets):
        # a second opinion from another bucket, once
        return Retry(), replace(attempt, bad_answers=1, avoid_buckets=attempt.avoid_buckets | {grant.bucket.name})
    return Accept(text, tokens, findings, doubtful), attempt


def _may_go_elsewhere(attempt: Attempt, other_buckets: Sequence[tuple[str, str]]) -> bool:
    """Some other bucket could take the frame: one it has not been sent away from, of a model
    that neither refused it nor had its caption sent back."""
    return any(
        bucket not in attempt.avoid_buckets and model not in attempt.avoid_models for bucket, model in other_buckets
    )


def _reduce(
    grant: Grant,
    reply: Reply,
    attempt: Attempt,
    rules: CaptionConfig,
    streak: int,
    other_buckets: Sequence[tuple[str, str]],
    since_reset_s: float,
) -> tuple[list[Effect], Verdict, Attempt]:
    effects = book_effects(grant, reply, rules, since_reset_s)
    if isinstance(reply, Answer):
        judged, attempt = _judge(grant, reply.text, reply.tokens, attempt, rules, other_buckets)
        return effects, judged, attempt
    if isinstance(reply, Blocked):
        attempt = replace(attempt, refused_by=attempt.refused_by | {grant.bucket.model})
        enough = len(attempt.refused_by) > rules.blocked_retries  # distinct models, this run and earlier ones
        verdict: Verdict = GiveUp(Status.BLOCKED, reply.reason) if enough else Retry()
        return effects, verdict, attempt
    if effects or not isinstance(reply, TransientError):  # a limit, a key or model retired, a full server
        return effects, Retry(), attempt
    attempt = replace(attempt, transient_errors=attempt.transient_errors + 1)
    if streak >= max(10, 2 * rules.concurrency):
        stop = StopRun(
            f"the caption service keeps failing ({reply.reason}): rerun when it answers again", RunEnd.FAILED
        )
        return [], stop, attempt
    if attempt.transient_errors >= rules.max_attempts:
        return [], GiveUp(Status.FAILED, reply.reason), attempt
    return [], Retry(backoff_delay(rules.backoff, attempt.transient_errors)), attempt


def book_effects(grant: Grant, reply: Reply, rules: CaptionConfig, since_reset_s: float) -> list[Effect]:
    """What any answer under `grant` means for the quota books, whatever the request asked."""
    bucket = grant.bucket
    if isinstance(reply, Answer | Blocked):
        return [Served(bucket.name, reply.tokens, grant.tokens_reserved, sent_at=grant.sent_at)]
    if isinstance(reply, RateLimited):
        return _rate_limited(grant, reply, rules, since_reset_s)
    if isinstance(reply, KeyRejected):
        return [RetireKey(grant.key, reply.reason)]
    if isinstance(reply, ModelUnavailable):
        return [RetireModel(bucket.model, reply.reason)]
    if isinstance(reply, PackRefused):
        return [OnePerRequest(bucket.model, reply.reason)]
    if reply.server_full and (bucket.limits.max_in_flight or 0) > 1:
        return [NarrowInFlight(bucket.name)]  # it waits for a slot
    return []


def reduce_question(grant: Grant, reply: Reply, rules: CaptionConfig, *, since_reset_s: float) -> Outcome:
    """A request that asked something other than a caption (`caption.verify`): only what the
    answer means for the books; the asker reads the answer itself."""
    key_works, model_works = _proves(reply)
    return Outcome(tuple(book_effects(grant, reply, rules, since_reset_s)), (), key_works, model_works)


def _proves(reply: Reply) -> tuple[bool, bool]:
    """Whether the answer proves the key works, and the model with it."""
    key_works = not isinstance(reply, TransientError | KeyRejected)
    return key_works, key_works and not isinstance(reply, ModelUnavailable)


def _rate_limited(grant: Grant, reply: RateLimited, rules: CaptionConfig, since_reset_s: float) -> list[Effect]:
    bucket = grant.bucket
    kind = {"day": "rpd", "tokens": "tpm"}.get(reply.scope, "rpm")
    configured = getattr(bucket.limits, kind)
    effects: list[Effect] = []
    # A limit of 0 (a model outside the free tier) is not learned: spent for today says enough, and
    # the next day asks once more.
    if reply.quota_value and reply.quota_value != configured:
        effects.append(LearnLimit(bucket.name, kind, reply.quota_value, configured))
    if reply.scope == "day" and since_reset_s < LATE_RESET_S:
        # The server's day may turn a little after midnight Pacific: ask again in minutes, not tomorrow.
        return [*effects, CoolDown(bucket.name, min(EARLY_DAY_RETRY_S * 2**bucket.strikes, LATE_RESET_S / 3), "day")]
    if reply.scope == "day":
        return [*effects, SpendForToday(bucket.name)]
    seconds = reply.retry_after if reply.retry_after is not None else backoff_delay(rules.backoff, bucket.strikes + 1)
    return [*effects, CoolDown(bucket.name, seconds, reply.scope)]


def when_no_bucket(
    attempt: Attempt, *, any_usable: bool, any_key_or_model_left: bool, untried_models: bool, reset_at: str
) -> Verdict:
    """The scheduler has no bucket this image may use, now or later in this run. `untried_models`:
    a configured model that has neither refused this image nor had its caption sent back still has
    a working key (spent or not)."""
    if not any_usable and not any_key_or_model_left:
        return StopRun(
            "no usable key or model is left: check the keys (`check-keys`) and the model list", RunEnd.NO_KEYS
        )
    if not any_usable:
        return StopRun(
            f"every quota bucket is spent for today; quotas reset at midnight Pacific time ({reset_at}): "
            "rerun then to continue",
            RunEnd.QUOTA,
        )
    if attempt.avoid_models and untried_models:  # another model may take it once its quota is back
        return LeavePending(RunEnd.QUOTA)
    if attempt.refused_by:
        return GiveUp(Status.BLOCKED, f"refused by every model: {', '.join(sorted(attempt.refused_by))}")
    if attempt.sent_back:
        return GiveUp(
            Status.FAILED,
            f"sent back from the review page, and no model besides {', '.join(sorted(attempt.sent_back))} is left: "
            "add one to caption.models, or write the caption by hand",
        )
    return LeavePending()
