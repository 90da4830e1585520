"""The caption engine against the fake Gemini server, through the real google-genai client."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections import Counter, defaultdict
from datetime import timedelta

from caption_harness import run_pipeline, serving, write_caption_config, write_env
from conftest import Project, make_frames
from fake_gemini import FakeGemini, ModelLimits
from virtual_time import START, VirtualClock, run_virtual

from ghibli_async.config import load_config, with_stages
from ghibli_async.pipeline import Pipeline
from ghibli_async.run_end import RunEnd


def max_in_any_window(times: list[float], window: float = 60.0) -> int:
    """The most requests inside any sliding `window` seconds."""
    times = sorted(times)
    best, start = 0, 0
    for end, at in enumerate(times):
        while at - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def captions(project: Project) -> dict[int, tuple[str, str, str, int]]:
    with sqlite3.connect(project.root / "work" / "state.sqlite") as db:
        rows = db.execute(
            "SELECT number, caption_status, caption, caption_key, needs_review FROM images WHERE number IS NOT NULL"
        )
        return {number: (status, text, key, review) for number, status, text, key, review in rows}


def test_three_keys_four_models_300_images(project: Project) -> None:
    make_frames(project, 300)
    write_env(project, GEMINI_API_KEY_1="secret-a1", GEMINI_API_KEY_2="secret-a2", GEMINI_API_KEY_3="secret-b")
    limits = {
        "m1": ModelLimits(rpm=10, rpd=60),
        "m2": ModelLimits(rpm=15, rpd=60),
        "m3": ModelLimits(rpm=20, rpd=60),
        "m4": ModelLimits(rpm=30, rpd=80),
    }
    clock = VirtualClock()
    fake = FakeGemini(clock, keys={"secret-a1": "a", "secret-a2": "a", "secret-b": "b"}, models=limits)

    async def scenario() -> None:
        async with serving(fake):
            write_caption_config(
                project,
                fake.base_url,
                [f"{{name: {name}, rpm: {m.rpm}, rpd: {m.rpd}, tpm: 1000000}}" for name, m in limits.items()],
                keys=[
                    "{env: GEMINI_API_KEY_1, project: a}",
                    "{env: GEMINI_API_KEY_2, project: a}",
                    "{env: GEMINI_API_KEY_3, project: b}",
                ],
            )
            report = await run_pipeline(project, clock)
            assert report.outcomes("caption") == {"done": 300}

    run_virtual(scenario())

    rows = captions(project)
    assert len(rows) == 300 and all(status == "done" for status, *_ in rows.values())
    assert all(text.startswith("Ghibli style, ") for _, text, *_ in rows.values())
    per_image = Counter(seen.image for seen in fake.successes())
    assert len(per_image) == 300 and set(per_image.values()) == {1}, "an image was paid for twice"
    assert not [s for s in fake.seen if s.kind == "minute"], "the engine went over a per-minute limit"
    by_bucket: dict[tuple[str, str], list[float]] = defaultdict(list)
    for seen in fake.seen:
        by_bucket[(seen.project or "", seen.model)].append(seen.at)
    for (project_name, model), times in by_bucket.items():
        assert max_in_any_window(times) <= limits[model].rpm, (project_name, model)
        assert len(times) <= limits[model].rpd
    keys_of_a = {s.key for s in fake.seen if s.project == "a"}
    assert keys_of_a == {"secret-a1", "secret-a2"}  # both keys of project a used, one shared budget
    exported = (project.root / "out" / "train" / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(exported) == 300 and all(json.loads(line)["text"] for line in exported)


def one_key_run(project: Project, fake: FakeGemini, clock: VirtualClock, models: list[str], extra: str = ""):
    """Run once with GEMINI_API_KEY_1 = `k1` against `fake`; returns the run report."""
    write_env(project, GEMINI_API_KEY_1="k1")

    async def scenario():
        async with serving(fake):
            write_caption_config(project, fake.base_url, models, extra=extra)
            return await run_pipeline(project, clock)

    return run_virtual(scenario())


def test_server_daily_limit_is_learned_and_remembered(project: Project) -> None:
    make_frames(project, 60)  # paced, m1 and m2 share the work: m1 reaches the server's 20
    clock = VirtualClock()
    fake = FakeGemini(clock, keys={"k1": "p"}, models={"m1": ModelLimits(rpm=30, rpd=20), "m2": ModelLimits(rpm=30)})
    table = ["{name: m1, rpm: 30, rpd: 250, tpm: 1000000}", "{name: m2, rpm: 30, rpd: 1000, tpm: 1000000}"]

    report = one_key_run(project, fake, clock, table)

    assert report.outcomes("caption") == {"done": 60}
    day_429 = [s for s in fake.seen if s.kind == "day"]
    assert {s.model for s in day_429} == {"m1"} and len(day_429) <= 8  # only those already in flight
    assert all(s.at <= day_429[0].at for s in fake.seen if s.model == "m1"), "m1 was asked again"
    assert len([s for s in fake.seen if s.model == "m1" and s.kind == "ok"]) == 20
    with sqlite3.connect(project.root / "work" / "state.sqlite") as db:
        assert db.execute("SELECT value FROM learned_limits WHERE model = 'm1' AND kind = 'rpd'").fetchone() == (20,)

    make_frames(project, 70)  # ten more frames, same quota day: m1 must not be asked again
    fake.seen.clear()
    one_key_run(project, fake, clock, table)
    assert {s.model for s in fake.seen} == {"m2"} and len(fake.successes()) == 10


def test_spent_key_moves_work_to_other_buckets_at_once(project: Project) -> None:
    make_frames(project, 30)
    write_env(project, GEMINI_API_KEY_1="k1", GEMINI_API_KEY_2="k2")
    clock = VirtualClock()
    fake = FakeGemini(clock, keys={"k1": "p1", "k2": "p2"}, models={"m1": ModelLimits(rpm=60, rpd=5)})

    async def scenario():
        async with serving(fake):
            write_caption_config(project, fake.base_url, ["{name: m1, rpm: 60, rpd: 100, tpm: 1000000}"])
            return await run_pipeline(project, clock)

    report = run_virtual(scenario())
    assert Counter(status for status, *_ in captions(project).values()) == {"done": 10, "pending": 20}
    assert any("quotas reset at midnight Pacific" in note for note in report.stages["caption"].notes)
    for spent in (s for s in fake.seen if s.kind == "day"):
        following = [s for s in fake.seen if s.image == spent.image and s.at > spent.at]
        if following:
            assert following[0].at == spent.at, "the image waited after a per-day 429"
    for spent_project in ("p1", "p2"):
        first = min(s.at for s in fake.seen if s.kind == "day" and s.project == spent_project)
        assert all(s.at <= first for s in fake.seen if s.project == spent_project), "a spent bucket was asked again"


def test_invalid_key_and_missing_model_are_retired_after_one_request(project: Project) -> None:
    make_frames(project, 20)
    write_env(project, GEMINI_API_KEY_1="wrong", GEMINI_API_KEY_2="k2")
    clock = VirtualClock()
    fake = FakeGemini(clock, keys={"k2": "p2"}, models={"m2": ModelLimits(rpm=60)})

    async def scenario():
        async with serving(fake):
            write_caption_config(
                project,
                fake.base_url,
                ["{name: gone-model, rpm: 60, rpd: 100, tpm: 1000000}", "{name: m2, rpm: 60, rpd: 100, tpm: 1000000}"],
            )
            return await run_pipeline(project, clock)

    report = run_virtual(scenario())
    assert report.outcomes("caption") == {"done": 20}
    assert len([s for s in fake.seen if s.key == "wrong"]) == 1
    assert len([s for s in fake.seen if s.model == "gone-model" and s.key == "k2"]) == 1


def test_blocked_image_tries_another_model_then_ends_blocked_and_unexported(project: Project) -> None:
    make_frames(project, 5)
    clock = VirtualClock()
    fake = FakeGemini(clock, keys={"k1": "p"}, models={"m1": ModelLimits(rpm=60), "m2": ModelLimits(rpm=60)})

    async def scenario():
        async with serving(fake):
            write_caption_config(
                project,
                fake.base_url,
                ["{name: m1, rpm: 60, rpd: 100, tpm: 1000000}", "{name: m2, rpm: 60, rpd: 100, tpm: 1000000}"],
            )
            await resize_only(project)  # the blocked image is resized/3.jpg: block its bytes
            fake.blocked_images.add(hashlib.sha256((project.root / "work/resized/3.jpg").read_bytes()).hexdigest())
            return await run_pipeline(project, clock)

    write_env(project, GEMINI_API_KEY_1="k1")
    report = run_virtual(scenario())
    assert report.outcomes("caption") == {"done": 4, "blocked": 1}
    blocked = [s for s in fake.seen if s.kind == "blocked"]
    assert sorted(s.model for s in blocked) == ["m1", "m2"]  # one other model tried, once (paced: either first)
    assert captions(project)[3][0] == "blocked"
    names = {
        json.loads(line)["file_name"] for line in (project.root / "out/train/metadata.jsonl").read_text().splitlines()
    }
    assert names == {"1.jpg", "2.jpg", "4.jpg", "5.jpg"}
    assert not (project.root / "out/train/3.jpg").exists()


async def resize_only(project: Project) -> None:
    await Pipeline(with_stages(load_config(project.config_path), caption=False), keys=[]).run()


def test_server_errors_are_retried(project: Project) -> None:
    make_frames(project, 6)
    clock = VirtualClock()
    fake = FakeGemini(clock, keys={"k1": "p"}, models={"m1": ModelLimits(rpm=60)}, unavailable_first=4)

    report = one_key_run(project, fake, clock, ["{name: m1, rpm: 60, rpd: 100, tpm: 1000000}"])

    assert report.outcomes("caption") == {"done": 6}
    assert len([s for s in fake.seen if s.kind == "unavailable"]) == 4
    assert len(fake.successes()) == 6


def test_persistent_server_errors_mark_the_image_failed_and_rerun_retries(project: Project) -> None:
    make_frames(project, 1)
    clock = VirtualClock()
    fake = FakeGemini(clock, keys={"k1": "p"}, models={"m1": ModelLimits(rpm=600)}, unavailable_first=5)
    model = ["{name: m1, rpm: 600, rpd: 100, tpm: 1000000}"]

    report = one_key_run(project, fake, clock, model, extra="  max_attempts: 5\n")
    assert report.outcomes("caption") == {"failed": 1}
    assert captions(project)[1][0] == "failed"

    report = one_key_run(project, fake, clock, model, extra="  max_attempts: 5\n")
    assert report.outcomes("caption") == {"done": 1}


def test_bad_answer_is_asked_again_once_then_flagged_for_review(project: Project) -> None:
    make_frames(project, 2)
    clock = VirtualClock()
    fake = FakeGemini(
        clock, keys={"k1": "p"}, models={"m1": ModelLimits(rpm=60), "m2": ModelLimits(rpm=60)}, caption_words=5
    )
    models = ["{name: m1, rpm: 60, rpd: 100, tpm: 1000000}", "{name: m2, rpm: 60, rpd: 100, tpm: 1000000}"]

    report = one_key_run(project, fake, clock, models, extra="  min_words: 8\n")

    assert report.outcomes("caption") == {"review": 2}
    assert sorted(s.model for s in fake.seen) == ["m1", "m1", "m2", "m2"]
    assert all(review == 1 for *_, review in captions(project).values())
    assert not (project.root / "out/train/metadata.jsonl").exists()


def resized_digest(project: Project, number: int) -> str:
    return hashlib.sha256((project.root / f"work/resized/{number}.jpg").read_bytes()).hexdigest()


def run_day(project: Project, fake: FakeGemini, clock: VirtualClock, models: list[str], *, block: int | None = None):
    async def scenario():
        async with serving(fake):
            write_caption_config(project, fake.base_url, models)
            if block is not None:
                await resize_only(project)
                fake.blocked_images.add(resized_digest(project, block))
            return await run_pipeline(project, clock)

    return run_virtual(scenario())


def table(*names: str) -> list[str]:
    return [f"{{name: {name}, rpm: 60, rpd: 100, tpm: 1000000}}" for name in names]


def test_a_refused_image_waits_for_a_spent_model_instead_of_being_lost(project: Project) -> None:
    """Refused by m1 while m2 had spent its day: pending, not blocked; m2 captions it the next day."""
    make_frames(project, 4)
    write_env(project, GEMINI_API_KEY_1="k1")
    day1 = VirtualClock()
    fake = FakeGemini(day1, {"k1": "p"}, {"m1": ModelLimits(), "m2": ModelLimits(rpd=0)}, blocking_models={"m1"})

    report = run_day(project, fake, day1, table("m1", "m2"), block=3)
    assert captions(project)[3][0] == "pending"
    assert report.outcomes("caption") == {"done": 3, "left": 1} and report.end == RunEnd.QUOTA

    fake.clock, fake.models["m2"] = VirtualClock(START + timedelta(days=1)), ModelLimits()
    fake.seen.clear()
    run_day(project, fake, fake.clock, table("m1", "m2"))
    assert captions(project)[3][:1] == ("done",)
    assert [(s.model, s.kind) for s in fake.seen] == [("m2", "ok")]  # m1, which refused it, is not asked again


def test_a_blocked_image_is_offered_to_a_model_added_later(project: Project) -> None:
    make_frames(project, 2)
    write_env(project, GEMINI_API_KEY_1="k1")
    clock = VirtualClock()
    fake = FakeGemini(clock, {"k1": "p"}, {n: ModelLimits() for n in ("m1", "m2", "m3")}, blocking_models={"m1", "m2"})

    run_day(project, fake, clock, table("m1", "m2"), block=2)
    assert captions(project)[2][0] == "blocked"
    fake.seen.clear()
    run_day(project, fake, clock, table("m1", "m2"))  # nothing new to try: blocked it stays
    assert fake.seen == [] and captions(project)[2][0] == "blocked"

    run_day(project, fake, clock, table("m1", "m2", "m3"))
    assert [(s.model, s.kind) for s in fake.seen] == [("m3", "ok")]
    assert captions(project)[2][0] == "done"


def test_a_restart_starts_inside_the_servers_minute_not_an_empty_one(project: Project) -> None:
    """Two captions at rpm 2, a stop, a restart at once: the restart waits for the window, meets no 429."""
    make_frames(project, 4)
    write_env(project, GEMINI_API_KEY_1="k1")
    clock = VirtualClock()
    fake = FakeGemini(clock, {"k1": "p"}, {"m": ModelLimits(rpm=2)}, latency=lambda: 1.0)
    model = ["{name: m, rpm: 2, rpd: 100, tpm: 1000000}"]

    async def run(limit: int | None):
        async with serving(fake):
            write_caption_config(project, fake.base_url, model)
            return await run_pipeline(project, clock, limit=limit)

    run_virtual(run(2))  # a new loop: its clock starts again at the same wall time, as a restart would
    run_virtual(run(None))
    assert not [s for s in fake.seen if s.kind == "minute"], "the restart forgot the last minute's requests"
    assert len(fake.successes()) == 4


def test_even_pacing_spreads_a_buckets_requests_across_its_minute(project: Project) -> None:
    """rpm 10: about one request every 6 s (never closer than 90% of it), never a burst of ten at
    the start of a window (free-tier projects have been suspended after bursts); the run still
    takes about 1 minute per 10."""
    make_frames(project, 40)
    write_env(project, GEMINI_API_KEY_1="k1")
    clock = VirtualClock()
    fake = FakeGemini(clock, {"k1": "p"}, {"m": ModelLimits(rpm=10)}, latency=lambda: 2.0)

    async def scenario() -> None:
        async with serving(fake):
            write_caption_config(project, fake.base_url, ["{name: m, rpm: 10, rpd: 1000, tpm: 1000000}"])
            report = await run_pipeline(project, clock)
            assert report.outcomes("caption") == {"done": 40}

    run_virtual(scenario())
    sent = sorted(s.at for s in fake.seen)
    gaps = [later - earlier for earlier, later in zip(sent, sent[1:])]
    assert min(gaps) >= 0.9 * 6.0 - 1e-6, "two requests closer than 90% of 60 s / rpm"
    assert sent[-1] - sent[0] <= 4 * 60 + 15  # 40 requests at 10 a minute, as before
