"""kill -9 in the middle of a run loses nothing, leaves no partial file, pays for little twice."""

from __future__ import annotations

import json
import os
import select
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import Project, make_frames, save_frame
from fake_gemini import FakeGemini, ModelLimits
from watchfiles import watch

from ghibli_async.clock import SystemClock

FRAMES = 60


def resized_count(state: os.PathLike[str]) -> int:
    try:
        with sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("SELECT COUNT(*) FROM images WHERE resize_status = 'done'").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def wait_for_resized(project: Project, run: subprocess.Popen, count: int, within_s: float = 60.0) -> None:
    """Until the run has resized `count` frames (or ended): looked at each time its work dir changes
    (file events, no polling loop), so the kill lands as soon as the work is that far."""
    work = project.root / "work"
    work.mkdir(exist_ok=True)
    state, deadline = work / "state.sqlite", time.monotonic() + within_s
    if resized_count(state) >= count:
        return
    for _ in watch(work, debounce=0, step=10, rust_timeout=500, yield_on_timeout=True):
        if resized_count(state) >= count or run.poll() is not None or time.monotonic() > deadline:
            return


def test_sigkill_mid_resize_then_rerun_gives_every_image_once(project: Project) -> None:
    for i in range(1, FRAMES + 1):
        save_frame(project.frames / f"frame{i}.jpg", seed=i)
    project.write_config("resize:\n  workers: 1\n")
    state = project.root / "work" / "state.sqlite"

    run = project.subprocess(start_new_session=True)
    wait_for_resized(project, run, 10)
    os.killpg(run.pid, signal.SIGKILL)  # the CLI, its forkserver and its resize worker
    run.wait()
    assert 10 <= resized_count(state) < FRAMES, "the kill must land in the middle of the run"

    rerun = project.subprocess("--skip-caption")
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err

    resized_dir = project.root / "work" / "resized"
    names = sorted(p.name for p in resized_dir.iterdir())
    assert names == sorted(f"{n}.jpg" for n in range(1, FRAMES + 1))
    assert resized_count(state) == FRAMES
    with sqlite3.connect(state) as db:
        numbers = [n for (n,) in db.execute("SELECT number FROM images")]
    assert sorted(numbers) == list(range(1, FRAMES + 1))
    for path in resized_dir.iterdir():
        with path.open("rb") as jpeg:
            jpeg.seek(-2, os.SEEK_END)
            assert jpeg.read() == b"\xff\xd9", f"{path.name} is not a whole JPEG"


def captioned_count(state: os.PathLike[str]) -> int:
    try:
        with sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("SELECT COUNT(*) FROM images WHERE caption_status = 'done'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def write_caption_config(project: Project, base_url: str, concurrency: int, frames_per_request: int = 1) -> None:
    project.write_config(
        f"resize:\n  size: 64\ncaption:\n  base_url: {base_url}\n  concurrency: {concurrency}\n"
        f"  models: [{{name: m, rpm: 10000, rpd: 100000, tpm: 100000000, images_per_request: {frames_per_request}}}]\n"
    )


def start_until_served(project: Project, fake: FakeGemini, count: int) -> subprocess.Popen:
    """A run in its own process group, returned once the server has served `count` requests."""
    run = project.subprocess(start_new_session=True)
    assert fake.wait_for_successes(count), "the run never got that far"
    return run


@pytest.mark.parametrize("frames_per_request", [1, 4])
def test_sigkill_mid_caption_then_rerun_loses_nothing(project: Project, frames_per_request: int) -> None:
    images, concurrency = 40, 8
    make_frames(project, images)
    (project.root / ".env").write_text("GEMINI_API_KEY_1=k1\n")
    fake = FakeGemini(SystemClock(), keys={"k1": "p"}, models={"m": ModelLimits()}, latency=lambda: 0.15)
    state = project.root / "work" / "state.sqlite"

    with fake.serving_in_thread():
        write_caption_config(project, fake.base_url, concurrency, frames_per_request)
        run = start_until_served(project, fake, 10 // frames_per_request)
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
        assert captioned_count(state) < images, "the kill must land in the middle of captioning"

        rerun = project.subprocess()
        _, err = rerun.communicate(timeout=120)
        assert rerun.returncode == 0, err

    assert captioned_count(state) == images
    paid = Counter(image for seen in fake.successes() for image in seen.images)
    assert len(paid) == images
    assert sum(1 for n in paid.values() if n > 1) <= concurrency * frames_per_request  # the frames in flight
    lines = (project.root / "out" / "train" / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    assert sorted(row["file_name"] for row in rows) == sorted(f"{n}.jpg" for n in range(1, images + 1))
    assert all((project.root / "out" / "train" / row["file_name"]).exists() for row in rows)


def group_is_gone(pgid: int, within_s: float = 10.0) -> bool:
    """No process is left alive in the process group `pgid` started (the run, its forkserver,
    workers, tracker): each member's exit is awaited through a pidfd, no polling."""
    deadline = time.monotonic() + within_s
    for pid in group_members(pgid):
        try:
            handle = os.pidfd_open(pid)
        except ProcessLookupError:
            continue  # gone between the listing and now
        try:
            if not select.select([handle], [], [], max(0.0, deadline - time.monotonic()))[0]:
                return False
        finally:
            os.close(handle)
    return not group_members(pgid)


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of the process group, from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited while we looked
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def stop_mid_caption(project: Project, fake: FakeGemini, signum: int, images: int) -> subprocess.CompletedProcess:
    """Run, send `signum` once a few captions are in, let the run finish stopping; then run again."""
    state = project.root / "work" / "state.sqlite"
    with fake.serving_in_thread():
        write_caption_config(project, fake.base_url, 8)
        run = start_until_served(project, fake, 3)
        run.send_signal(signum)
        out, err = run.communicate(timeout=60)
        assert group_is_gone(run.pid)
        assert 3 <= captioned_count(state) < images, "the signal must land in the middle of captioning"
        rerun = project.subprocess()
        rerun.communicate(timeout=120)
        assert rerun.returncode == 0
    return subprocess.CompletedProcess(run.args, run.returncode, out, err)


def test_ctrl_c_lets_the_requests_in_flight_land_so_none_is_paid_twice(project: Project) -> None:
    make_frames(project, 24)
    (project.root / ".env").write_text("GEMINI_API_KEY_1=k1\n")
    fake = FakeGemini(SystemClock(), keys={"k1": "p"}, models={"m": ModelLimits()}, latency=lambda: 0.2)
    stopped = stop_mid_caption(project, fake, signal.SIGINT, 24)
    assert stopped.returncode == 130 and "stopping:" in stopped.stderr and "Traceback" not in stopped.stderr
    assert stopped.stdout.strip().splitlines()[-1].startswith("Result: stopped when asked")
    paid = Counter(seen.image for seen in fake.successes())
    assert len(paid) == 24 and set(paid.values()) == {1}, "a request in flight at Ctrl-C was paid again"


def test_sigterm_stops_like_ctrl_c_and_leaves_no_process(project: Project) -> None:
    make_frames(project, 24)
    (project.root / ".env").write_text("GEMINI_API_KEY_1=k1\n")
    fake = FakeGemini(SystemClock(), keys={"k1": "p"}, models={"m": ModelLimits()}, latency=lambda: 0.2)
    stopped = stop_mid_caption(project, fake, signal.SIGTERM, 24)
    assert stopped.returncode == 143 and "Traceback" not in stopped.stderr
    assert "(exit 143)" in stopped.stdout


def test_workers_end_when_the_run_is_killed(project: Project) -> None:
    for i in range(1, 25):
        save_frame(project.frames / f"frame{i}.jpg", seed=i)
    project.write_config("resize:\n  workers: 2\n")
    run = project.subprocess("--skip-caption", start_new_session=True)
    wait_for_resized(project, run, 2)
    assert run.poll() is None, "the run ended before the kill"
    run.kill()  # the run only: its workers must not live on (they held ~260 MB before)
    run.wait()
    assert group_is_gone(run.pid), "a worker, the forkserver or the resource tracker outlived the run"


def test_a_sigkill_campaign_loses_no_image_and_repays_at_most_the_requests_in_flight(project: Project) -> None:
    """Killed three times during captioning (after 4, 13 and 22 captions), then run to the end:
    every input is accounted for, and each kill repaid at most `concurrency` requests."""
    images, concurrency, kills = 36, 4, (4, 13, 22)
    make_frames(project, images - 2)
    (project.frames / "frame1-copy.png").write_bytes((project.frames / "frame1.png").read_bytes())  # a duplicate
    (project.frames / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")  # a file of its own failure
    (project.root / ".env").write_text("GEMINI_API_KEY_1=k1\n")
    fake = FakeGemini(SystemClock(), keys={"k1": "p"}, models={"m": ModelLimits()}, latency=lambda: 0.05)
    state = project.root / "work" / "state.sqlite"
    with fake.serving_in_thread():
        write_caption_config(project, fake.base_url, concurrency)
        for at in kills:
            run = start_until_served(project, fake, at)
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
        final = project.subprocess()
        final.communicate(timeout=120)
        assert final.returncode == 0

    with sqlite3.connect(state) as db:
        rows = db.execute("SELECT source_path, duplicate_of, resize_status, caption_status FROM images").fetchall()
    assert len(rows) == images
    accounted = Counter(
        "duplicate" if duplicate else "failed: its own file" if resize == "failed" else caption
        for _, duplicate, resize, caption in rows
    )
    assert accounted == {"done": images - 2, "duplicate": 1, "failed: its own file": 1}
    repaid = sum(n - 1 for n in Counter(seen.image for seen in fake.successes()).values())
    assert repaid <= concurrency * len(kills)
    exported = (project.root / "out" / "train" / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(exported) == images - 2
