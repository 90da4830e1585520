"""The exit code says how a run ended, so a script or cron can act on it; the summary's last line
says the same in words. The real CLI against the fake Gemini server."""

from __future__ import annotations

import pytest
from caption_harness import write_caption_config, write_env
from conftest import Project, make_frames
from fake_gemini import FakeGemini, ModelLimits
from virtual_time import SteadyClock

MODEL = "{name: m, rpm: 600, rpd: 1000, tpm: 1000000}"


def run_cli(
    project: Project, fake: FakeGemini, models: list[str], capsys: pytest.CaptureFixture[str]
) -> tuple[int, str]:
    with fake.serving_in_thread():
        write_caption_config(project, fake.base_url, models)
        code = project.cli(clock=fake.clock)
    return code, capsys.readouterr().out.strip().splitlines()[-1]


def test_success_exits_0(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    make_frames(project, 4)
    write_env(project, GEMINI_API_KEY_1="k1")
    code, last = run_cli(project, FakeGemini(SteadyClock(), {"k1": "p"}, {"m": ModelLimits()}), [MODEL], capsys)
    assert code == 0 and last.startswith("Result: done")


def test_every_key_invalid_exits_4(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    make_frames(project, 4)
    write_env(project, GEMINI_API_KEY_1="bad1", GEMINI_API_KEY_2="bad2")
    fake = FakeGemini(SteadyClock(), {"k1": "p"}, {"m": ModelLimits()})
    code, last = run_cli(project, fake, [MODEL], capsys)
    assert code == 4 and last.startswith("Result: no usable key or model: 4 images still to caption")
    assert len(fake.seen) == 2  # one request per key


def test_every_model_gone_exits_4(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    make_frames(project, 4)
    write_env(project, GEMINI_API_KEY_1="k1")
    fake = FakeGemini(SteadyClock(), {"k1": "p"}, {"m": ModelLimits()})
    code, last = run_cli(
        project,
        fake,
        ["{name: old-1, rpm: 60, rpd: 100, tpm: 1000000}", "{name: old-2, rpm: 60, rpd: 100, tpm: 1000000}"],
        capsys,
    )
    assert code == 4 and "no usable key or model" in last
    assert sorted(s.model for s in fake.seen) == ["old-1", "old-2"]


def test_quota_spent_with_images_left_exits_3(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    make_frames(project, 5)
    write_env(project, GEMINI_API_KEY_1="k1")
    fake = FakeGemini(SteadyClock(), {"k1": "p"}, {"m": ModelLimits(rpd=2)})
    code, last = run_cli(project, fake, [MODEL], capsys)
    assert code == 3
    assert last.startswith("Result: waiting for quota: 3 images still to caption; rerun after ")
