"""`run --wait` / `--watch`: one invocation that sleeps through quota resets and takes new frames,
against the fake Gemini server on virtual time (quota days pass at once)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from caption_harness import serving, write_caption_config, write_env
from conftest import Project, make_frames, save_frame
from fake_gemini import FakeGemini, ModelLimits
from virtual_time import START, VirtualClock, run_virtual

from ghibli_async.config import load_config, with_stages
from ghibli_async.pipeline import Pipeline
from ghibli_async.run_end import RunEnd
from ghibli_async.service import Service, ServiceReport, Step, next_step
from ghibli_async.state import State
from ghibli_async.state.runs import Doing

PACIFIC = ZoneInfo("America/Los_Angeles")


@pytest.mark.parametrize(
    ("end", "wait", "watch", "changed", "waiting", "step"),
    [
        (RunEnd.DONE, False, False, False, 0, Step.END),
        (RunEnd.QUOTA, False, False, False, 5, Step.END),  # a plain run stops and says when to rerun
        (RunEnd.QUOTA, True, False, False, 5, Step.WAIT_FOR_QUOTA),
        (RunEnd.DONE, True, False, False, 0, Step.END),  # --wait ends when everything is done
        (RunEnd.FAILED, True, False, False, 3, Step.RETRY_LATER),  # the service kept failing: try later
        (RunEnd.FAILED, True, False, False, 0, Step.END),  # only frames failed: nothing to wait for
        (RunEnd.DONE, True, True, False, 0, Step.WATCH),
        (RunEnd.FAILED, True, True, False, 0, Step.WATCH),
        (RunEnd.QUOTA, True, True, True, 5, Step.RUN_AGAIN),  # new frames: filter and resize them now
        (RunEnd.QUOTA, True, True, False, 5, Step.WAIT_FOR_QUOTA),
        (RunEnd.NO_KEYS, True, True, True, 5, Step.END),  # nothing can caption until the keys are fixed
        (RunEnd.INTERRUPTED, True, True, True, 5, Step.END),
        (RunEnd.TERMINATED, True, False, False, 5, Step.END),
    ],
)
def test_what_a_service_does_after_a_pass(
    end: RunEnd, wait: bool, watch: bool, changed: bool, waiting: int, step: Step
) -> None:
    assert next_step(end, wait=wait, watch=watch, input_changed=changed, captions_waiting=waiting) == step


def quota_day_of(clock_start: datetime, at: float) -> str:
    return (clock_start + timedelta(seconds=at)).astimezone(PACIFIC).date().isoformat()


def serve_for_days(project: Project, fake: FakeGemini, clock: VirtualClock, **options: Any) -> ServiceReport:
    async def scenario() -> ServiceReport:
        async with serving(fake):
            write_caption_config(project, fake.base_url, ["{name: m, rpm: 60, rpd: 5, tpm: 1000000}"])
            pipeline = Pipeline(load_config(project.config_path), clock=clock)
            return await Service(pipeline, **options).run()

    return run_virtual(scenario())


def test_wait_captions_everything_over_three_quota_days(project: Project) -> None:
    """The server allows 4 a day (the config believes 5): day one learns it from one 429, the next
    days send exactly 4 and meet none; the one invocation ends with exit 0 on day three."""
    make_frames(project, 10, size=(64, 64))
    write_env(project, GEMINI_API_KEY_1="k1")
    clock = VirtualClock()
    fake = FakeGemini(clock, {"k1": "p"}, {"m": ModelLimits(rpm=60, rpd=4)}, latency=lambda: 1.0)
    report = serve_for_days(project, fake, clock, wait=True)

    assert report.end == RunEnd.DONE and report.passes == 3
    served = Counter(quota_day_of(START, s.at) for s in fake.seen if s.kind == "ok")
    refused = Counter(quota_day_of(START, s.at) for s in fake.seen if s.kind == "day")
    assert list(served.values()) == [4, 4, 2]
    assert list(refused.items()) == [(quota_day_of(START, 0), 1)]  # the day the server's limit was learned
    lines = (project.root / "out" / "train" / "metadata.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["file_name"] for line in lines) == sorted(f"{n}.jpg" for n in range(1, 11))
    # Each new day's first request goes out a minute after midnight Pacific, not a day late.
    firsts = [min(s.at for s in fake.seen if quota_day_of(START, s.at) == day) for day in list(served)[1:]]
    for at in firsts:
        local = (START + timedelta(seconds=at)).astimezone(PACIFIC)
        assert (local.hour, local.minute) == (0, 1)


def test_a_server_day_that_turns_late_costs_minutes_not_a_day(project: Project) -> None:
    """The server's quota day turns 10 minutes after midnight Pacific: the first requests of our new
    day meet its per-day 429; they are asked again within minutes (a few 429s), not the next day."""
    make_frames(project, 8, size=(64, 64))
    write_env(project, GEMINI_API_KEY_1="k1")
    clock = VirtualClock()
    fake = FakeGemini(clock, {"k1": "p"}, {"m": ModelLimits(rpm=60, rpd=4)}, day_turns_late_s=600)
    report = serve_for_days(project, fake, clock, wait=True)

    assert report.end == RunEnd.DONE
    served = Counter(quota_day_of(START, s.at) for s in fake.seen if s.kind == "ok")
    first, second = quota_day_of(START, 0), quota_day_of(START, 24 * 3600)
    assert served == {first: 4, second: 4}, "the second day's frames waited for a third day"
    first_served = min(s.at for s in fake.seen if s.kind == "ok" and quota_day_of(START, s.at) == second)
    local = (START + timedelta(seconds=first_served)).astimezone(PACIFIC)
    assert local.hour == 0 and 10 <= local.minute < 30, local
    early_refusals = [s for s in fake.seen if s.kind == "day" and quota_day_of(START, s.at) == second]
    assert 1 <= len(early_refusals) <= 5


class JumpingClock(VirtualClock):
    """The wall clock leaps `jump` ahead at virtual second `at` (a laptop lid closed overnight: the
    monotonic clock did not move, the wall clock did)."""

    def __init__(self, at: float, jump: timedelta) -> None:
        super().__init__()
        self.at, self.jump = at, jump

    def wall(self) -> datetime:
        return super().wall() + (self.jump if self.now() >= self.at else timedelta(0))


def test_a_wait_ends_on_time_when_the_wall_clock_jumps(project: Project) -> None:
    make_frames(project, 3, size=(64, 64))
    write_env(project, GEMINI_API_KEY_1="k1")
    clock = JumpingClock(at=600.0, jump=timedelta(hours=22, minutes=30))  # 01:10 -> 23:40 the same day
    fake = FakeGemini(clock, {"k1": "p"}, {"m": ModelLimits(rpm=60, rpd=2)})
    report = serve_for_days(project, fake, clock, wait=True)

    assert report.end == RunEnd.DONE and report.passes == 2
    second_day = [s.at for s in fake.seen if s.kind == "ok"][2]
    # Midnight plus the margin is 20 min after the jump on the wall clock: the wait re-reads the wall
    # clock every minute, so it ends then (within a slice), not 23 hours of monotonic time later.
    assert 600 + 21 * 60 <= second_day <= 600 + 22 * 60


def test_watch_takes_frames_copied_in_while_it_runs(project: Project) -> None:
    make_frames(project, 3, size=(64, 64))
    write_env(project, GEMINI_API_KEY_1="k1")
    clock = VirtualClock()
    fake = FakeGemini(clock, {"k1": "p"}, {"m": ModelLimits()})

    async def scenario() -> tuple[ServiceReport, list[str]]:
        idle: asyncio.Queue[int] = asyncio.Queue()
        async with serving(fake):
            write_caption_config(project, fake.base_url, ["{name: m, rpm: 600, rpd: 1000, tpm: 1000000}"])
            pipeline = Pipeline(load_config(project.config_path), clock=clock)
            service = Service(pipeline, watch=True, settle_s=0.5, on_idle=idle.put_nowait)
            running = asyncio.create_task(service.run())
            assert await idle.get() == 1
            for i in (4, 5):
                save_frame(project.frames / "later" / f"frame{i}.png", (64, 64), seed=i)
            assert await idle.get() == 2
            with State.open(project.config.state_path, readonly=True) as state:
                doing = state.activity.current()
            pipeline.stop.request()
            report = await running
            metadata = (project.root / "out" / "train" / "metadata.jsonl").read_text().splitlines()
        assert doing is not None and doing.doing == Doing.WATCHING and doing.modes == "wait, watch"
        return report, metadata

    (project.frames / "later").mkdir()
    report, metadata = run_virtual(scenario())
    assert report.passes == 2 and report.end == RunEnd.INTERRUPTED
    assert sorted(json.loads(line)["file_name"] for line in metadata) == [f"{n}.jpg" for n in range(1, 6)]
    assert report.shown["caption"] == 5


def test_watch_waits_for_the_first_frames(project: Project) -> None:
    """An empty input folder is not an error for a service that watches it."""
    write_env(project, GEMINI_API_KEY_1="k1")
    clock = VirtualClock()
    fake = FakeGemini(clock, {"k1": "p"}, {"m": ModelLimits()})

    async def scenario() -> ServiceReport:
        idle: asyncio.Queue[int] = asyncio.Queue()
        async with serving(fake):
            write_caption_config(project, fake.base_url, ["{name: m, rpm: 600, rpd: 1000, tpm: 1000000}"])
            pipeline = Pipeline(load_config(project.config_path), clock=clock)
            running = asyncio.create_task(Service(pipeline, watch=True, settle_s=0.5, on_idle=idle.put_nowait).run())
            assert await idle.get() == 0
            save_frame(project.frames / "frame1.png", (64, 64), seed=1)
            assert await idle.get() == 1
            pipeline.stop.request()
            return await running

    report = run_virtual(scenario())
    assert report.passes == 1 and report.shown["caption"] == 1


def status_now_line(project: Project, capsys: pytest.CaptureFixture[str]) -> str:
    assert project.cli("status") == 0
    return next(line for line in capsys.readouterr().out.splitlines() if line.startswith("Now:"))


def test_status_tells_a_waiting_service_from_a_gone_one(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    make_frames(project, 1, size=(64, 64))
    project.cli("--skip-caption")
    assert status_now_line(project, capsys) == "Now: no run is going."

    now, alive = datetime.now(timezone.utc), os.getpid()  # a service that is still running: this process
    until = now + timedelta(hours=5)
    with State.open(project.config.state_path) as state:
        state.activity.claim(alive, "wait, watch", now - timedelta(hours=2))
        state.activity.doing(alive, Doing.WAITING_FOR_QUOTA, now, until=until)
    line = status_now_line(project, capsys)
    assert line.startswith(f"Now: service (wait, watch) pid {alive}, since ")
    assert line.endswith(f"waiting for quota until {until.astimezone():%Y-%m-%d %H:%M %Z}.")

    with State.open(project.config.state_path) as state:
        state.activity.heard(alive, now - timedelta(minutes=10))
    assert f"no run is going (the last, service (wait, watch) pid {alive}" in status_now_line(project, capsys)


def test_status_knows_at_once_a_killed_service_is_gone(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    """SIGKILLed a second ago, heartbeat still fresh: on the same machine its pid says it is gone."""
    make_frames(project, 1, size=(64, 64))
    project.cli("--skip-caption")
    killed = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    killed.kill()
    killed.wait()
    now = datetime.now(timezone.utc)
    with State.open(project.config.state_path) as state:
        state.activity.claim(killed.pid, "wait", now)
        state.activity.doing(killed.pid, Doing.WAITING_FOR_QUOTA, now, until=now + timedelta(hours=5))
    line = status_now_line(project, capsys)
    assert line.startswith(f"Now: no run is going (the last, service (wait) pid {killed.pid}")
    assert line.endswith("is no longer running: it was killed or crashed).")


def test_a_run_leaves_its_log_in_the_work_dir_as_json_lines(project: Project) -> None:
    make_frames(project, 2, size=(64, 64))
    assert project.cli("--skip-caption") == 0
    assert project.cli("--skip-caption") == 0
    events = [json.loads(line) for line in (project.root / "work" / "logs" / "run.jsonl").read_text().splitlines()]
    assert [e["new"] for e in events if e["event"] == "scan_done"] == [2, 0]  # appended, run after run
    assert all(datetime.fromisoformat(e["timestamp"]).tzinfo is not None and "level" in e for e in events)


def test_status_after_a_single_pass_from_a_notebook(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    """`Pipeline.run` alone (no service around it) leaves its row at `finished`: no run is going."""
    make_frames(project, 1, size=(64, 64))
    asyncio.run(Pipeline(with_stages(project.config, caption=False)).run())
    assert status_now_line(project, capsys) == "Now: no run is going."
