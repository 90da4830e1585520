"""Today's free sources for one project, with the shipped config.yaml: Flash (5/min, 20/day),
Flash-Lite (15/min, 500/day) and the hosted Gemma 3 (30/min, 14,400/day), which refuses a system
instruction, JSON mode and a thinking config. The real google-genai SDK against the fake server."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import yaml
from caption_harness import run_pipeline, serving, write_env
from conftest import Project, make_frames
from fake_gemini import FakeGemini, ModelLimits
from virtual_time import VirtualClock, run_virtual

from ghibli_async.pipeline import RunReport

REPO = Path(__file__).resolve().parents[1]
FREE_TIER = {
    "gemini-flash-latest": ModelLimits(rpm=5, rpd=20),
    "gemini-flash-lite-latest": ModelLimits(rpm=15, rpd=500),
    "gemma-3-27b-it": ModelLimits(rpm=30, rpd=14_400, tpm=15_000, plain=True),
}


@pytest.mark.parametrize("frames_per_request", [1, 4])
def test_the_shipped_config_captions_with_every_free_model_and_retires_none(
    project: Project, frames_per_request: int
) -> None:
    """At 4 frames per request, Gemma's JSON mode is refused once (two features in all, each
    learned once) and its packed answers are read from a ```json fence."""
    make_frames(project, 90)
    write_env(project, GEMINI_API_KEY_1="k1")
    clock = VirtualClock()
    fake = FakeGemini(clock, {"k1": "p"}, FREE_TIER, latency=lambda: 2.0)

    async def scenario() -> RunReport:
        async with serving(fake):
            shipped = yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))
            shipped["paths"] = {"input_dir": "frames", "output_dir": "out/train", "work_dir": "work"}
            shipped["stages"]["filter"] = False
            shipped["resize"]["size"] = 64
            shipped["caption"]["base_url"] = fake.base_url
            shipped["caption"]["thinking_budget"] = 0  # a setting Gemma refuses: left out for it, not fatal
            for model in shipped["caption"]["models"]:
                model["images_per_request"] = frames_per_request
            project.config_path.write_text(yaml.safe_dump(shipped), encoding="utf-8")
            return await run_pipeline(project, clock)

    report = run_virtual(scenario())

    assert report.outcomes("caption") == {"done": 90}
    assert not report.notes, report.notes  # nothing retired
    by_model = Counter(s.model for s in fake.successes() for _ in s.images)
    assert set(by_model) == set(FREE_TIER) and sum(by_model.values()) == 90  # each frame paid for once
    refused = ["feature"] * (1 if frames_per_request == 1 else 2)
    assert [s.kind for s in fake.seen if s.kind not in ("ok",)] == refused  # each learned once, no 429
