"""The quota ledger on its own: opened from the books, granting and settling on a virtual clock,
and telling `status` (another ledger over the same books) each bucket's condition."""

from __future__ import annotations

from pathlib import Path

from virtual_time import VirtualClock, run_virtual

from ghibli_async.caption.answers import Answer, RateLimited
from ghibli_async.caption.buckets import Grant
from ghibli_async.caption.ledger import QuotaLedger
from ghibli_async.caption.reducer import Attempt, reduce_reply
from ghibli_async.config import ApiKey, CaptionConfig, ModelQuota
from ghibli_async.state import State

GOOD = "Ghibli style, a girl in a red coat walks past a bakery"
KEY = ApiKey("key#1", "GEMINI_API_KEY_1", "secret", "p")
CAPTION = CaptionConfig(
    models=[ModelQuota(name="m1", rpm=2, rpd=100, tpm=10**6), ModelQuota(name="m2", rpm=60, rpd=5, tpm=10**6)]
)


def settle(ledger: QuotaLedger, grant: Grant, reply) -> None:
    outcome = reduce_reply(
        grant,
        reply,
        Attempt(1),
        CAPTION,
        failing_streak=0,
        other_buckets=[("p/other", "other")],
        since_reset_s=6 * 3600.0,
    )
    ledger.settle(grant, outcome, refused=isinstance(reply, RateLimited))


def test_what_an_answer_meant_is_in_the_books_for_the_next_ledger(tmp_path: Path) -> None:
    clock = VirtualClock()

    async def run() -> None:
        with State.open(tmp_path / "state.sqlite") as state:
            ledger = QuotaLedger.open(state.quota, CAPTION, [KEY], clock)
            grant = await ledger.acquire(Attempt(1), give_up=lambda: None, on_wait=lambda bucket, s: None)
            assert isinstance(grant, Grant) and grant.bucket.model == "m1"
            ledger.count_sent(grant)
            settle(ledger, grant, RateLimited("minute", 40.0, 1, "slow down"))  # the server's rpm: 1, not 2
            status = QuotaLedger(state.quota, CAPTION, [KEY], clock)  # what `status` reads
            (m1, m2) = status.buckets
            assert status.condition(m1).startswith("cooling until") and status.condition(m2) == "open"
            assert m1.limits.rpm == 1 and status.learned == {("p", "m1"): {"rpm": 1}}
            assert status.usage[("p", "m1")].sent == 1 and status.usage[("p", "m1")].accepted == 0

    run_virtual(run())


def test_acquire_waits_for_the_first_slot_and_hears_a_reason_to_give_up(tmp_path: Path) -> None:
    clock = VirtualClock()
    waits: list[tuple[str, float]] = []

    async def run() -> None:
        with State.open(tmp_path / "state.sqlite") as state:
            only_m1 = CAPTION.model_copy(update={"models": CAPTION.models[:1]})
            ledger = QuotaLedger.open(state.quota, only_m1, [KEY], clock)
            first = await ledger.acquire(Attempt(1), give_up=lambda: None, on_wait=lambda b, s: None)
            assert isinstance(first, Grant)
            settle(ledger, first, Answer(GOOD, 300))
            second = await ledger.acquire(Attempt(2), give_up=lambda: None, on_wait=lambda b, s: waits.append((b, s)))
            assert isinstance(second, Grant)
            assert clock.now() >= 27.0  # paced: 90% of 60 s / rpm 2 after the first
            assert waits == [("p/m1", 27.0)]  # the progress line hears which bucket and how long
            stopping = await ledger.acquire(Attempt(3), give_up=lambda: "stopped", on_wait=lambda b, s: None)
            assert stopping == "stopped"

    run_virtual(run())


def test_a_bucket_spent_today_stays_spent_after_a_restart(tmp_path: Path) -> None:
    clock = VirtualClock()

    async def run() -> None:
        with State.open(tmp_path / "state.sqlite") as state:
            ledger = QuotaLedger.open(state.quota, CAPTION, [KEY], clock)
            grant = await ledger.acquire(Attempt(1), give_up=lambda: None, on_wait=lambda b, s: None)
            assert isinstance(grant, Grant)
            settle(ledger, grant, RateLimited("day", None, None, "per day"))
            again = QuotaLedger.open(state.quota, CAPTION, [KEY], clock)
            assert again.condition(again.buckets[0]).startswith("spent until")
            regrant = await again.acquire(Attempt(2), give_up=lambda: None, on_wait=lambda b, s: None)
            assert isinstance(regrant, Grant) and regrant.bucket.model == "m2"

    run_virtual(run())
