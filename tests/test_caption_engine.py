"""The caption engine against the fake Gemini server, through the real google-genai client."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections import Counter, defaultdict

from caption_harness import run_pipeline, serving, write_caption_config, write_env
from conftest import Project, make_frames
from fake_gemini import FakeGemini, ModelLimits, Seen

from ghibli_async.clock import ScaledClock

SPEED = 20  # emulated seconds per real second


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
    limits = {"m1": ModelLimits(rpm=10, rpd=60), "m2": ModelLimits(rpm=15, rpd=60),
              "m3": ModelLimits(rpm=20, rpd=60), "m4": ModelLimits(rpm=30, rpd=80)}
    clock = ScaledClock(SPEED)
    fake = FakeGemini(clock, keys={"secret-a1": "a", "secret-a2": "a", "secret-b": "b"}, models=limits)

    async def scenario() -> None:
        async with serving(fake):
            write_caption_config(
                project,
                fake.base_url,
                [f"{{name: {name}, rpm: {m.rpm}, rpd: {m.rpd}, tpm: 1000000}}" for name, m in limits.items()],
                keys=["{env: GEMINI_API_KEY_1, project: a}", "{env: GEMINI_API_KEY_2, project: a}",
                      "{env: GEMINI_API_KEY_3, project: b}"],
            )
            report = await run_pipeline(project, clock)
            assert report.caption.outcomes == {"done": 300}

    asyncio.run(scenario())

    rows = captions(project)
    assert len(rows) == 300 and all(status == "done" for status, *_ in rows.values())
    assert all(text.startswith("Ghibli style ") for _, text, *_ in rows.values())
    per_image = Counter(seen.image for seen in fake.successes())
    assert len(per_image) == 300 and set(per_image.values()) == {1}, "an image was paid for twice"
    assert not [s for s in fake.seen if s.kind == "minute"], "the engine went over a per-minute limit"
    by_bucket: dict[tuple[str, str], list[float]] = defaultdict(list)
    for seen in fake.seen:
        by_bucket[(seen.project, seen.model)].append(seen.at)
    for (project_name, model), times in by_bucket.items():
        assert max_in_any_window(times) <= limits[model].rpm, (project_name, model)
        assert len(times) <= limits[model].rpd
    keys_of_a = {s.key for s in fake.seen if s.project == "a"}
    assert keys_of_a == {"secret-a1", "secret-a2"}  # both keys of project a used, one shared budget
    exported = (project.root / "out" / "train" / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(exported) == 300 and all(json.loads(line)["text"] for line in exported)
