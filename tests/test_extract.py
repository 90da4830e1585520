"""Frames straight from video files: sampling, cropping, black frames, resuming, damaged files."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest
from caption_harness import run_pipeline, serving, write_caption_config
from conftest import Project
from fake_gemini import FakeGemini, ModelLimits
from PIL import Image
from video_builder import THREE_SHOTS, make_video
from virtual_time import VirtualClock, run_virtual

from ghibli_async.config import load_config, with_stages
from ghibli_async.pipeline import Pipeline
from ghibli_async.stages.extract import run_extract
from ghibli_async.state import State
from ghibli_async.video import crop, seconds_of


def at_s(name: str) -> float:
    """The time in the film that an extracted frame's name gives."""
    seconds = seconds_of(name)
    assert seconds is not None, name
    return seconds


def extract_only(project: Project, extra: str = ""):
    project.write_config("resize:\n  size: 128\n" + extra)
    config = with_stages(load_config(project.config_path), filter=False, resize=False, caption=False)
    return asyncio.run(Pipeline(config, keys=[]).run())


def extracted(project: Project) -> list[Path]:
    return sorted((project.root / "work" / "extracted").rglob("*.png"))


def test_interval_takes_one_frame_every_n_seconds_and_skips_black(project: Project) -> None:
    make_video(project.frames / "clip.mp4", THREE_SHOTS)

    report = extract_only(project, "extract:\n  every_s: 1.0\n")

    times = [at_s(p.name) for p in extracted(project)]
    assert times == [0, 1, 2, 3, 5, 6, 7, 8, 10, 11, 12, 13]  # 4 s and 9 s are black
    assert report.outcomes("extract")["frames"] == 12 and report.outcomes("scan")["new"] == 12
    assert extracted(project)[0].name == "clip_00-00-00.000.png"


def test_shots_mode_finds_the_three_shots(project: Project) -> None:
    make_video(project.frames / "clip.mp4", THREE_SHOTS)

    extract_only(project, "extract:\n  mode: shots\n")

    times = [at_s(p.name) for p in extracted(project)]
    assert len(times) == 3
    assert 0 <= times[0] < 4 and 5 <= times[1] < 9 and 10 <= times[2] < 14


def test_crops(project: Project) -> None:
    make_video(project.frames / "wide.mp4", [(1, 2.0)])
    make_video(project.frames / "letterboxed.mp4", [(2, 2.0)], bars=20)

    extract_only(project, "extract:\n  every_s: 1.0\n")  # the default: whole frames, bars cut

    sizes = {p.name.split("_")[0]: Image.open(p).size for p in extracted(project)}
    assert sizes == {"wide": (320, 180), "letterboxed": (320, 140)}

    frame = Image.open(next(p for p in extracted(project) if p.name.startswith("wide")))
    assert crop(frame, "center_square").size == (180, 180)  # the original capture tool's square


def test_rerun_extracts_nothing_and_interrupted_video_resumes(project: Project) -> None:
    make_video(project.frames / "clip.mp4", THREE_SHOTS)
    extract_only(project, "extract:\n  every_s: 1.0\n")
    first = {p.name: p.stat().st_mtime_ns for p in extracted(project)}

    assert extract_only(project, "extract:\n  every_s: 1.0\n").outcomes("extract")["frames"] == 0

    # As if killed after the frame at 7 s: the video is not done, the later frames are missing.
    with sqlite3.connect(project.root / "work" / "state.sqlite") as db:
        db.execute("DELETE FROM videos")
    for path in extracted(project):
        if at_s(path.name) > 7:
            path.unlink()
    extract_only(project, "extract:\n  every_s: 1.0\n")
    after = {p.name: p.stat().st_mtime_ns for p in extracted(project)}
    assert set(after) == set(first)
    assert all(after[name] == first[name] for name in first if at_s(name) <= 7)


def test_damaged_video_is_reported_and_the_rest_goes_on(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    good = make_video(project.frames / "good.mp4", [(1, 3.0)])
    broken = project.frames / "broken.mp4"
    broken.write_bytes(good.read_bytes()[:600])

    report = extract_only(project, "extract:\n  every_s: 1.0\n")

    assert report.outcomes("extract")["failed"] == 1 and report.stages["extract"].line.endswith("failed: broken.mp4")
    assert {p.name.split("_")[0] for p in extracted(project)} == {"good"}
    with sqlite3.connect(project.root / "work" / "state.sqlite") as db:
        status, reason = db.execute("SELECT status, reason FROM videos WHERE path LIKE '%broken.mp4'").fetchone()
    assert status == "failed" and reason.startswith("cannot decode")


def test_video_frames_reach_the_dataset_through_captioning(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    make_video(project.frames / "film.mp4", THREE_SHOTS)
    (project.root / ".env").write_text("GEMINI_API_KEY_1=k1\n")
    clock = VirtualClock()
    fake = FakeGemini(clock, keys={"k1": "p"}, models={"m": ModelLimits(rpm=100)})

    async def scenario():
        async with serving(fake):
            write_caption_config(
                project,
                fake.base_url,
                ["{name: m, rpm: 100, rpd: 1000, tpm: 1000000}"],
                extra="extract:\n  every_s: 2.0\n",
            )
            return await run_pipeline(project, clock)

    report = run_virtual(scenario())
    assert report.outcomes("extract")["frames"] == 6 and report.outcomes("caption") == {"done": 6}  # 0,2,6,8,10,12 s
    lines = (project.root / "out" / "train" / "metadata.jsonl").read_text().splitlines()
    assert len(lines) == 6
    assert project.cli("status") == 0
    assert "film.mp4" in capsys.readouterr().out


def test_keyframe_mode_takes_each_keyframe_once(project: Project) -> None:
    make_video(project.frames / "clip.mp4", THREE_SHOTS)  # a keyframe every 2 s

    extract_only(project, "extract:\n  every_s: 1.0\n  exact: false\n")

    times = [at_s(p.name) for p in extracted(project)]
    assert times == [0, 2, 6, 8, 10, 12]  # 4 s is black


def test_credits_are_skipped_at_both_ends(project: Project) -> None:
    make_video(project.frames / "clip.mp4", THREE_SHOTS)

    extract_only(project, "extract:\n  every_s: 1.0\n  skip_start_s: 5.0\n  skip_end_s: 4.5\n")

    assert [at_s(p.name) for p in extracted(project)] == [5, 6, 7, 8]  # 9 s is black; the end is cut


def test_a_stop_ends_a_video_at_its_next_frame_and_it_resumes_later(project: Project) -> None:
    """Ctrl-C used to wait for whole videos (minutes on a film): now the next frame ends it."""
    video = make_video(project.frames / "clip.mp4", THREE_SHOTS)
    project.write_config("extract:\n  every_s: 1.0\n")
    config = project.config

    class PressedAfterThreeFrames(threading.Event):
        """Ctrl-C lands once three frames are on disk (asked by the decoding thread before each frame)."""

        def is_set(self) -> bool:
            return len(extracted(project)) >= 3 or super().is_set()

    async def stopped_after_three_frames():
        with State.open(config.state_path) as state:
            report = await run_extract(state, config, [video], PressedAfterThreeFrames())
            return report, state.sources.video_status(str(video))

    report, status = asyncio.run(stopped_after_three_frames())
    assert status is None and report.videos_done == 0  # not recorded done: the next run resumes it
    assert len(extracted(project)) == 3  # the frame after the stop was never written
    extract_only(project, "extract:\n  every_s: 1.0\n")
    assert [at_s(p.name) for p in extracted(project)] == [0, 1, 2, 3, 5, 6, 7, 8, 10, 11, 12, 13]
