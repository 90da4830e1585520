"""The caption progress line tells the truth: captions done (not images taken), the other
outcomes apart, and while the run waits for quota, which bucket and until when."""

from __future__ import annotations

import re
import sqlite3

import pytest
from caption_harness import run_pipeline, serving, write_caption_config, write_env
from conftest import Project, make_frames
from fake_gemini import FakeGemini, ModelLimits
from virtual_time import VirtualClock, run_virtual


def test_progress_counts_captions_and_names_the_quota_wait(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    make_frames(project, 6)
    write_env(project, GEMINI_API_KEY_1="k1")
    clock = VirtualClock()
    fake = FakeGemini(clock, {"k1": "p"}, {"m": ModelLimits(rpm=2, rpd=4)}, latency=lambda: 1.0)

    async def scenario():
        async with serving(fake):
            write_caption_config(project, fake.base_url, ["{name: m, rpm: 2, rpd: 100, tpm: 1000000}"])
            return await run_pipeline(project, clock)

    report = run_virtual(scenario())

    progress = [line for line in re.split(r"[\r\n]", capsys.readouterr().err) if line.startswith("caption: ")]
    with sqlite3.connect(project.root / "work" / "state.sqlite") as db:
        (captioned,) = db.execute("SELECT COUNT(*) FROM images WHERE caption_status = 'done'").fetchone()
    assert captioned == 4 and report.outcomes("caption") == {"done": 4, "left": 2}
    assert progress[-1].startswith(f"caption: {captioned}/6 captioned")
    assert "left 2" in progress[-1]
    waits = [line for line in progress if "waiting for quota: key#1/m until" in line]
    assert waits, "the minute's wait was never shown"
    assert not any("min left" in line for line in waits)  # no ETA while the quota sets the pace


def test_no_rate_or_estimate_before_a_minute_has_passed(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    """A run of a few seconds once said "about 21 min left" (its captions divided by a whole minute)."""
    make_frames(project, 40)
    write_env(project, GEMINI_API_KEY_1="k1")
    clock = VirtualClock()
    fake = FakeGemini(clock, {"k1": "p"}, {"m": ModelLimits(rpm=600)}, latency=lambda: 1.0)

    async def scenario():
        async with serving(fake):
            write_caption_config(project, fake.base_url, ["{name: m, rpm: 600, rpd: 1000, tpm: 1000000}"])
            return await run_pipeline(project, clock)

    report = run_virtual(scenario())

    assert report.outcomes("caption") == {"done": 40}
    progress = [line for line in re.split(r"[\r\n]", capsys.readouterr().err) if line.startswith("caption: ")]
    assert progress and not any("min left" in line or "/min" in line for line in progress), progress
