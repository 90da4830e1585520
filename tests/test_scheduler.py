"""The scheduling policy on its own: buckets and a clock in, decisions out (no I/O, no waiting)."""

from __future__ import annotations

from datetime import datetime, timezone

from ghibli_async.caption.buckets import WINDOW_S, Bucket, Grant, Limits, build_buckets, next_quota_reset, quota_day
from ghibli_async.caption.reducer import CoolDown, LearnLimit, RetireKey, RetireModel, Served, SpendForToday
from ghibli_async.caption.scheduler import Exhausted, Scheduler, Wait
from ghibli_async.config import ApiKey, CaptionConfig, KeyAssignment, ModelQuota

DAY = "2026-11-25"


def bucket(
    model: str = "m", project: str = "p", *, rpm: int = 10, rpd: int = 1000, tpm: int = 10**7, keys=("key#1",)
) -> Bucket:
    return Bucket(project, model, Limits(rpm, rpd, tpm), list(keys), day=DAY)


def granted(policy: Scheduler, now: float, day: str = DAY) -> Grant:
    """The policy's decision at `now`, which the test expects to be a grant."""
    decision = policy.acquire(now, day)
    assert isinstance(decision, Grant), decision
    return decision


def scheduler(*buckets: Bucket) -> Scheduler:
    policy = Scheduler(list(buckets))
    policy.proven.update({"key#1", "key#2", "key#3", *(b.model for b in buckets)})
    return policy


def drive(policy: Scheduler, *, seconds: float, latency: float = 2.0) -> list[float]:
    """Take every slot the policy grants over `seconds`, each request answered after `latency`;
    returns the send times. Time jumps straight to each next decision (no real waiting)."""
    now = 0.0
    sent: list[float] = []
    answers: list[tuple[float, Grant]] = []
    while now < seconds:
        for at, grant in [a for a in answers if a[0] <= now]:
            policy.answered(grant, at, key_works=True, model_works=True)
            answers.remove((at, grant))
        decision = policy.acquire(now, DAY)
        if isinstance(decision, Grant):
            sent.append(now)
            answers.append((now + latency, decision))
            continue
        assert isinstance(decision, Wait)
        candidates = [at for at, _ in answers] + ([decision.until] if decision.until is not None else [])
        now = min(candidates)
    return sent


def most_in_a_window(times: list[float]) -> int:
    return max(sum(1 for t in times if start <= t < start + WINDOW_S) for start in times)


def test_never_more_than_rpm_in_any_sliding_minute() -> None:
    sent = drive(scheduler(bucket(rpm=10)), seconds=600)
    assert most_in_a_window(sent) == 10
    assert len(sent) >= 10 * 600 / 62 - 10  # and it still uses nearly all of it


def test_model_first_uses_the_best_model_of_every_project_first() -> None:
    keys = [ApiKey("key#1", "E1", "s1", "a"), ApiKey("key#2", "E2", "s2", "b")]
    models = [ModelQuota(name="best", rpm=1, rpd=9, tpm=10**6), ModelQuota(name="worse", rpm=1, rpd=9, tpm=10**6)]

    def order(route: str) -> list[str]:
        caption = CaptionConfig(models=models, route=route)
        return [b.name for b in build_buckets(caption, keys, day=DAY, used_today={}, learned={})]

    assert order("model_first") == ["a/best", "b/best", "a/worse", "b/worse"]
    assert order("key_first") == ["a/best", "a/worse", "b/best", "b/worse"]


def test_full_bucket_hands_over_to_the_next_and_waits_for_the_earliest() -> None:
    first, second = bucket("m1", rpm=1), bucket("m2", rpm=1)
    policy = scheduler(first, second)

    a = granted(policy, 0.0)
    b = granted(policy, 0.0)
    assert (a.bucket.model, b.bucket.model) == ("m1", "m2")
    policy.answered(a, 1.0, key_works=True, model_works=True)
    policy.answered(b, 3.0, key_works=True, model_works=True)
    wait = policy.acquire(5.0, DAY)
    assert isinstance(wait, Wait) and wait.until is not None
    assert 61.0 <= wait.until <= 61.5  # m1 frees first: 60 s after its answer


def test_daily_limit_and_pacific_midnight() -> None:
    spent = bucket(rpd=2)
    policy = scheduler(spent)
    for _ in range(2):
        grant = granted(policy, 0.0)
        policy.answered(grant, 0.5, key_works=True, model_works=True)
    assert isinstance(policy.acquire(100.0, DAY), Exhausted)
    assert isinstance(policy.acquire(100.0, "2026-11-26"), Grant)

    before = datetime(2026, 11, 26, 7, 59, tzinfo=timezone.utc)  # 23:59 in Los Angeles (PST)
    after = datetime(2026, 11, 26, 8, 1, tzinfo=timezone.utc)
    assert (quota_day(before), quota_day(after)) == ("2026-11-25", "2026-11-26")
    assert next_quota_reset(before).astimezone(timezone.utc) == datetime(2026, 11, 26, 8, 0, tzinfo=timezone.utc)
    summer = datetime(2026, 7, 1, 6, 59, tzinfo=timezone.utc)  # 23:59 PDT
    assert quota_day(summer) == "2026-06-30"


def test_per_day_429_spends_the_bucket_whatever_the_delay() -> None:
    first, second = bucket("m1"), bucket("m2")
    policy = scheduler(first, second)
    policy.apply(SpendForToday(first.name), 0.0)
    grant = granted(policy, 0.0)
    assert grant.bucket.model == "m2"


def test_cooldown_rests_the_bucket_and_counts_strikes_until_served() -> None:
    cooling = bucket()
    policy = scheduler(cooling)
    policy.apply(CoolDown(cooling.name, 37.0, "minute"), 0.0)
    policy.apply(CoolDown(cooling.name, 10.0, "minute"), 0.0)  # a shorter one does not cut the first short
    assert cooling.strikes == 2
    assert policy.acquire(36.0, DAY) == Wait(37.0, cooling.name)
    grant = granted(policy, 37.0)
    policy.answered(grant, 38.0, key_works=True, model_works=True)
    policy.apply(Served(cooling.name, 700, grant.tokens_reserved), 38.0)
    assert cooling.strikes == 0


def test_a_refused_request_does_not_count_against_the_day() -> None:
    day_bucket = bucket(rpd=2)
    policy = scheduler(day_bucket)
    refused = granted(policy, 0.0)
    policy.answered(refused, 0.5, key_works=True, model_works=True, refused=True)  # a 429
    for at in (1.0, 2.0):
        policy.answered(granted(policy, at), at + 0.5, key_works=True, model_works=True)
    assert day_bucket.used_today == 2 and isinstance(policy.acquire(10.0, DAY), Exhausted)


def test_learned_limit_replaces_the_table_value() -> None:
    learning = bucket(rpm=10)
    policy = scheduler(learning)
    policy.apply(LearnLimit(learning.name, "rpm", 2, 10), 0.0)
    grants = [policy.acquire(0.0, DAY) for _ in range(3)]
    assert [isinstance(g, Grant) for g in grants] == [True, True, False]


def test_unproven_key_gets_one_request_at_a_time() -> None:
    policy = Scheduler([bucket(rpm=100, keys=("key#1", "key#2"))])
    policy.proven.add("m")
    first = granted(policy, 0.0)
    second = granted(policy, 0.0)
    assert (first.key, second.key) == ("key#1", "key#2")
    assert policy.acquire(0.0, DAY) == Wait(None)  # both keys have a probe out
    policy.answered(first, 1.0, key_works=False, model_works=True)
    policy.apply(RetireKey("key#1", "invalid"), 1.0)
    assert policy.acquire(1.0, DAY) == Wait(None)
    policy.answered(second, 1.5, key_works=True, model_works=True)
    assert {granted(policy, 2.0).key for _ in range(3)} == {"key#2"}


def test_retired_model_and_keys_leave_nothing() -> None:
    policy = scheduler(bucket("m1"), bucket("m2"))
    policy.apply(RetireModel("m1", "404"), 0.0)
    assert granted(policy, 0.0).bucket.model == "m2"
    policy.apply(RetireKey("key#1", "invalid"), 0.0)
    assert isinstance(policy.acquire(0.0, DAY), Exhausted)


def test_token_budget_limits_too() -> None:
    policy = scheduler(bucket(rpm=100, tpm=1500))
    grants = [policy.acquire(0.0, DAY) for _ in range(3)]
    assert [isinstance(g, Grant) for g in grants] == [True, True, False]  # 600 tokens each, 1500 per minute


def test_project_limits_and_learned_limits_override_the_table() -> None:
    keys = [ApiKey("key#1", "E1", "s1", "paid"), ApiKey("key#2", "E2", "s2", "free")]
    caption = CaptionConfig(
        models=[ModelQuota(name="m", rpm=10, rpd=250, tpm=10**6)],
        keys=[KeyAssignment(env="E1", project="paid"), KeyAssignment(env="E2", project="free")],
        project_limits={"paid": [ModelQuota(name="m", rpm=1000, rpd=10_000, tpm=10**7)]},
    )
    buckets = build_buckets(caption, keys, day=DAY, used_today={("free", "m"): 7}, learned={("free", "m"): {"rpd": 20}})
    paid, free = buckets
    assert (paid.limits.rpm, paid.limits.rpd) == (1000, 10_000)
    assert (free.limits.rpm, free.limits.rpd, free.used_today) == (10, 20, 7)


def test_a_better_bucket_being_probed_is_waited_for_not_skipped() -> None:
    """Short runs used the weaker model: the second worker must wait for the probe's answer."""
    best, worse = bucket("best", rpm=100), bucket("worse", rpm=100)
    policy = Scheduler([best, worse])
    probe = granted(policy, 0.0)
    assert probe.bucket is best
    assert policy.acquire(0.0, DAY) == Wait(None)  # not `worse`
    policy.answered(probe, 2.0, key_works=True, model_works=True)
    assert [granted(policy, 2.0).bucket.model for _ in range(3)] == ["best"] * 3


def test_a_full_local_server_is_waited_for_until_an_answer() -> None:
    local = Bucket("p", "vl", Limits(None, None, None, max_in_flight=2), ["local"], day=DAY)
    policy = scheduler(local)
    policy.proven.add("local")
    grants = [granted(policy, 0.0) for _ in range(2)]
    assert policy.acquire(0.0, DAY) == Wait(None)  # no timer: only an answer frees a place
    policy.answered(grants[0], 0.5, key_works=True, model_works=True)
    assert isinstance(policy.acquire(0.5, DAY), Grant)


def test_a_slot_free_a_rounding_error_from_now_is_free_now() -> None:
    """Window times restored after a restart come from wall-clock arithmetic: a slot that frees
    3e-11 s from now must be granted, not waited for (a wait the loop's clock cannot measure)."""
    full = bucket(rpm=2)
    now = 83168.0
    full.restore_window([now - 60.1 + 3e-11, now - 1.0])  # the first frees at 83168.00000000003
    assert isinstance(scheduler(full).acquire(now, DAY), Grant)


def test_a_token_correction_counts_from_the_send_as_the_server_does() -> None:
    """The engine reserved 2,400 tokens for a request (its first guess) that used 1,100: when the
    request leaves the window, the correction must leave with it, or the engine would believe it
    had 1,300 tokens of room the server does not give (a 429 per minute on Gemma's 15,000 TPM)."""
    bucket = Bucket("p", "m", Limits(rpm=None, rpd=None, tpm=3000), ["key#1"], day="d")
    scheduler = Scheduler([bucket])
    bucket.take(0.0, "key#1", 2400)
    scheduler.apply(Served("p/m", 1100, 2400, sent_at=0.0), 2.0)
    bucket.take(30.0, "key#1", 1100)
    scheduler.apply(Served("p/m", 1100, 1100, sent_at=30.0), 32.0)
    assert bucket.free_at(60.5, 2000) >= 90.0  # the second request's 1,100 still fill the window
