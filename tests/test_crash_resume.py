"""kill -9 in the middle of a resize run loses nothing and leaves no partial file."""

from __future__ import annotations

import os
import signal
import sqlite3
import time

from conftest import Project, save_frame

FRAMES = 120


def resized_count(state: os.PathLike[str]) -> int:
    try:
        with sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("SELECT COUNT(*) FROM images WHERE resize_status = 'done'").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def test_sigkill_mid_resize_then_rerun_gives_every_image_once(project: Project) -> None:
    for i in range(1, FRAMES + 1):
        save_frame(project.frames / f"frame{i}.jpg", seed=i)
    project.write_config("resize:\n  workers: 1\n")
    state = project.root / "work" / "state.sqlite"

    run = project.subprocess(start_new_session=True)
    deadline = time.monotonic() + 60
    while resized_count(state) < 10 and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(run.pid, signal.SIGKILL)  # the CLI, its forkserver and its resize worker
    run.wait()
    assert 10 <= resized_count(state) < FRAMES, "the kill must land in the middle of the run"

    rerun = project.subprocess()
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
