"""The reply reducer on its own: one row per kind of answer, no HTTP, no clock, no database."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ghibli_async.caption.answers import Answer, Blocked, KeyRejected, ModelUnavailable, RateLimited, TransientError
from ghibli_async.caption.buckets import Bucket, Grant, Limits
from ghibli_async.caption.reducer import (
    Accept,
    Attempt,
    CoolDown,
    GiveUp,
    LearnLimit,
    LeavePending,
    NarrowInFlight,
    RetireKey,
    RetireModel,
    Retry,
    Served,
    SpendForToday,
    StopRun,
    reduce_reply,
    when_no_bucket,
)
from ghibli_async.config import CaptionConfig
from ghibli_async.facts import Finding
from ghibli_async.run_end import RunEnd
from ghibli_async.statuses import Status

TOTORO_FINDINGS = (
    Finding("word_count", "3 words (allowed 4-30)", 0.8),
    Finding("banned_words", "banned word: Totoro", 1.0, ("Totoro",)),
    Finding("proper_name", "a name: Totoro", 0.7, ("Totoro",)),
    Finding("generic", "says little: 1 content words", 0.5),
)
RULES = CaptionConfig(min_words=4, max_words=30, banned_words=["Totoro"], blocked_retries=1, max_attempts=3)
GOOD = "Ghibli style, a girl in a red coat walks past a bakery"
B = "p/m1"


LIMITS = Limits(rpm=10, rpd=250, tpm=250_000)
FIRST_TRY = Attempt(7)


def grant(*, strikes: int = 0) -> Grant:
    bucket = Bucket("p", "m1", LIMITS, ["key#1"], day="2026-11-26", strikes=strikes)
    return Grant(bucket, "key#1", 600)


def reduce(
    reply,
    attempt: Attempt = FIRST_TRY,
    *,
    streak: int = 0,
    other: bool = True,
    g: Grant | None = None,
    since: float = 6 * 3600.0,  # 06:00 Pacific unless a case says otherwise
):
    return reduce_reply(
        g or grant(),
        reply,
        attempt,
        RULES,
        failing_streak=streak,
        other_buckets=[("p/other", "other")] if other else [],
        since_reset_s=since,
    )


# (name, reply, attempt so far, failing streak, another bucket free) -> (effects, verdict, proves key, proves model)
CASES = [
    (
        "caption accepted, trigger kept once",
        Answer(GOOD, 370),
        Attempt(7),
        0,
        True,
        [Served(B, 370, 600)],
        Accept(GOOD, 370),
        (True, True),
    ),
    (
        "bad caption: one more opinion from another bucket",
        Answer("Ghibli style, Totoro", 50),
        Attempt(7),
        0,
        True,
        [Served(B, 50, 600)],
        Retry(),
        (True, True),
    ),
    (
        "bad caption and no other bucket: kept for review",
        Answer("Ghibli style, Totoro", 50),
        Attempt(7),
        0,
        False,
        [Served(B, 50, 600)],
        Accept("Ghibli style, Totoro", 50, TOTORO_FINDINGS, needs_review=True),
        (True, True),
    ),
    (
        "bad caption, the other bucket's model had its caption sent back: kept for review",
        Answer("Ghibli style, Totoro", 50),
        Attempt(7, sent_back=frozenset({"other"})),
        0,
        True,
        [Served(B, 50, 600)],
        Accept("Ghibli style, Totoro", 50, TOTORO_FINDINGS, needs_review=True),
        (True, True),
    ),
    (
        "bad caption the second time: kept for review",
        Answer("Ghibli style, Totoro", 50),
        Attempt(7, bad_answers=1),
        0,
        True,
        [Served(B, 50, 600)],
        Accept("Ghibli style, Totoro", 50, TOTORO_FINDINGS, needs_review=True),
        (True, True),
    ),
    (
        "safety block: try another model",
        Blocked("prompt blocked: PROHIBITED_CONTENT", 330),
        Attempt(7),
        0,
        True,
        [Served(B, 330, 600)],
        Retry(),
        (True, True),
    ),
    (
        "a model that refused before refuses again: still one model, retry elsewhere",
        Blocked("SAFETY", None),
        Attempt(7, refused_by=frozenset({"m1"})),
        0,
        True,
        [Served(B, None, 600)],
        Retry(),
        (True, True),
    ),
    (
        "safety block past blocked_retries: blocked",
        Blocked("prompt blocked: PROHIBITED_CONTENT", None),
        Attempt(7, refused_by=frozenset({"m0"})),
        0,
        True,
        [Served(B, None, 600)],
        GiveUp(Status.BLOCKED, "prompt blocked: PROHIBITED_CONTENT"),
        (True, True),
    ),
    (
        "429 per minute with a delay: cool down that long",
        RateLimited("minute", 37.0, 10, "slow down"),
        Attempt(7),
        0,
        True,
        [CoolDown(B, 37.0, "minute")],
        Retry(),
        (True, True),
    ),
    (
        "429 per minute naming a lower limit: learn it",
        RateLimited("minute", 12.0, 5, "slow down"),
        Attempt(7),
        0,
        True,
        [LearnLimit(B, "rpm", 5, 10), CoolDown(B, 12.0, "minute")],
        Retry(),
        (True, True),
    ),
    (
        "429 per minute with no delay: the backoff's first wait",
        RateLimited("minute", None, None, "slow down"),
        Attempt(7),
        0,
        True,
        [CoolDown(B, 5.0, "minute")],
        Retry(),
        (True, True),
    ),
    (
        "429 per token-minute: learn tpm, cool down",
        RateLimited("tokens", 3.0, 100_000, "tokens"),
        Attempt(7),
        0,
        True,
        [LearnLimit(B, "tpm", 100_000, 250_000), CoolDown(B, 3.0, "tokens")],
        Retry(),
        (True, True),
    ),
    (
        "429 per day: spend the bucket for today, learn rpd, retry elsewhere",
        RateLimited("day", 37.0, 20, "daily quota"),
        Attempt(7),
        0,
        True,
        [LearnLimit(B, "rpd", 20, 250), SpendForToday(B)],
        Retry(),
        (True, True),
    ),
    (
        "429 per day at the known limit: spend, learn nothing",
        RateLimited("day", None, 250, "daily quota"),
        Attempt(7),
        0,
        True,
        [SpendForToday(B)],
        Retry(),
        (True, True),
    ),
    (
        "invalid key: retire the key, retry with another",
        KeyRejected("400 INVALID_ARGUMENT: API key not valid"),
        Attempt(7),
        0,
        True,
        [RetireKey("key#1", "400 INVALID_ARGUMENT: API key not valid")],
        Retry(),
        (False, False),
    ),
    (
        "unknown model: retire the model",
        ModelUnavailable("404 not found: models/m1"),
        Attempt(7),
        0,
        True,
        [RetireModel("m1", "404 not found: models/m1")],
        Retry(),
        (True, False),
    ),
    (
        "server error: wait the backoff, retry",
        TransientError("503 UNAVAILABLE"),
        Attempt(7, transient_errors=1),
        2,
        True,
        [],
        Retry(10.0),
        (False, False),
    ),
    (
        "server error for the max_attempts-th time: failed (a rerun tries again)",
        TransientError("503 UNAVAILABLE"),
        Attempt(7, transient_errors=2),
        3,
        True,
        [],
        GiveUp(Status.FAILED, "503 UNAVAILABLE"),
        (False, False),
    ),
    (
        "the service keeps failing for every worker: stop the run",
        TransientError("ClientConnectorError"),
        Attempt(7),
        16,
        True,
        [],
        StopRun("the caption service keeps failing (ClientConnectorError): rerun when it answers again", RunEnd.FAILED),
        (False, False),
    ),
]


@pytest.mark.parametrize(
    ("reply", "attempt", "streak", "other", "effects", "verdict", "proves"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_each_kind_of_answer(reply, attempt, streak, other, effects, verdict, proves) -> None:
    outcome = reduce(reply, attempt, streak=streak, other=other)
    assert list(outcome.effects) == effects
    assert outcome.verdict == verdict
    assert (outcome.key_works, outcome.model_works) == proves
    assert outcome.attempt.requests == attempt.requests + 1


def test_a_full_server_narrows_its_in_flight_cap_and_the_image_waits() -> None:
    full = TransientError("503: the server is busy: no free slot", server_full=True)

    def capped(width: int) -> Grant:
        return Grant(Bucket("p", "m1", Limits(None, None, None, max_in_flight=width), ["local"], day="d"), "local", 0)

    narrowed = reduce(full, Attempt(7, transient_errors=2), g=capped(8))
    assert narrowed.effects == (NarrowInFlight(B),) and narrowed.verdict == Retry()
    assert narrowed.attempt.transient_errors == 2  # not held against the image
    at_one = reduce(full, Attempt(7, transient_errors=2), g=capped(1))  # nothing left to narrow: a server error
    assert at_one.effects == () and at_one.verdict == GiveUp(Status.FAILED, full.reason)
    uncapped = reduce(full, Attempt(7, transient_errors=2))
    assert uncapped.verdict == GiveUp(Status.FAILED, full.reason)


@pytest.mark.parametrize(
    ("since", "strikes", "effects"),
    [
        (600.0, 0, (CoolDown(B, 120.0, "day"),)),  # 00:10: the server's day may not have turned yet
        (1800.0, 2, (CoolDown(B, 480.0, "day"),)),  # asked again after minutes, doubling
        (1800.0, 9, (CoolDown(B, 1200.0, "day"),)),  # never more than 20 minutes
        (3600.0, 0, (SpendForToday(B),)),  # an hour after midnight: spent for today
    ],
)
def test_a_per_day_429_just_after_midnight_is_asked_again_in_minutes(since: float, strikes: int, effects) -> None:
    outcome = reduce(RateLimited("day", None, None, "per day"), g=grant(strikes=strikes), since=since)
    assert outcome.effects == effects and outcome.verdict == Retry()


def test_repeated_minute_limits_back_off_further() -> None:
    """Two 429s in a row already (strikes 2): the third wait is 5 s x 2 x 2, capped at max_s."""
    outcome = reduce(RateLimited("minute", None, None, "slow down"), g=grant(strikes=2))
    assert outcome.effects == (CoolDown(B, 20.0, "minute"),)
    outcome = reduce(RateLimited("minute", None, None, "slow down"), g=grant(strikes=10))
    assert outcome.effects == (CoolDown(B, RULES.backoff.max_s, "minute"),)


def test_the_attempt_remembers_what_to_avoid() -> None:
    blocked = reduce(Blocked("SAFETY", None)).attempt
    assert blocked.avoid_models == {"m1"} and blocked.refused_by == {"m1"}
    bad = reduce(Answer("Ghibli style, Totoro", None)).attempt
    assert bad.avoid_buckets == {B} and bad.bad_answers == 1
    waited = reduce(TransientError("503"), streak=1).attempt
    assert waited.transient_errors == 1 and not waited.avoid_buckets


def test_the_reducer_changes_nothing_it_is_given() -> None:
    g = grant()
    before = replace(g.bucket.limits)
    reduce(RateLimited("day", None, 20, "daily"), g=g)
    reduce(RateLimited("minute", 5.0, 3, "minute"), g=g)
    assert g.bucket.limits == before and g.bucket.spent_day is None and g.bucket.strikes == 0
    assert g.bucket.cooldown_until == float("-inf")


def test_a_refused_image_waits_for_a_model_it_has_not_tried() -> None:
    """The other model is spent for today: the image stays pending, not blocked (it was lost before)."""
    refused = Attempt(1, refused_by=frozenset({"m1"}))
    found = when_no_bucket(refused, any_usable=True, any_key_or_model_left=True, untried_models=True, reset_at="")
    assert found == LeavePending(RunEnd.QUOTA)
    sent_back = Attempt(1, sent_back=frozenset({"m1"}))
    found = when_no_bucket(sent_back, any_usable=True, any_key_or_model_left=True, untried_models=True, reset_at="")
    assert found == LeavePending(RunEnd.QUOTA) and sent_back.avoid_models == {"m1"}


@pytest.mark.parametrize(
    ("attempt", "usable", "left", "verdict"),
    [
        (Attempt(1), False, False, StopRun("no usable key or model is left", RunEnd.NO_KEYS)),
        (Attempt(1), False, True, StopRun("every quota bucket is spent for today", RunEnd.QUOTA)),
        (Attempt(1, refused_by=frozenset({"m1"})), True, True, GiveUp(Status.BLOCKED, "refused by every model: m1")),
        (Attempt(1), True, True, LeavePending()),
        (
            Attempt(1, sent_back=frozenset({"m1"})),
            True,
            True,
            GiveUp(
                Status.FAILED,
                "sent back from the review page, and no model besides m1 is left: "
                "add one to caption.models, or write the caption by hand",
            ),
        ),
    ],
    ids=["all retired", "all spent", "blocked, no other model", "avoided every bucket", "sent back, no other model"],
)
def test_no_bucket_left(attempt: Attempt, usable: bool, left: bool, verdict) -> None:
    found = when_no_bucket(
        attempt, any_usable=usable, any_key_or_model_left=left, untried_models=False, reset_at="2026-11-27 09:00 CET"
    )
    assert type(found) is type(verdict)
    if isinstance(verdict, StopRun) and isinstance(found, StopRun):
        assert found.reason.startswith(verdict.reason) and found.end == verdict.end
    else:
        assert found == verdict


def test_a_limit_of_zero_is_not_learned() -> None:
    outcome = reduce(RateLimited("day", None, 0, "limit: 0"))
    assert outcome.effects == (SpendForToday(B),)
