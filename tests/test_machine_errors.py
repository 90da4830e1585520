"""A full disk (or a permission or I/O error) is the machine's fault, not the frame's: the stage
stops with one line, exit 1, and the frames stay pending for the rerun."""

from __future__ import annotations

import errno
import sqlite3
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import Project, make_frames, save_frame
from filelock import FileLock

import ghibli_async.imaging
import ghibli_async.state.database
from ghibli_async.errors import MachineError
from ghibli_async.pool import LazyPool
from ghibli_async.state import State
from ghibli_async.state.sources import SourceFile


@pytest.fixture
def in_process_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker threads instead of processes, so a patched disk reaches the workers."""

    def threads(self: LazyPool) -> Executor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(2)
        return self._pool

    monkeypatch.setattr(LazyPool, "executor", threads)


def statuses(project: Project) -> dict[str, int]:
    with sqlite3.connect(project.root / "work" / "state.sqlite") as db:
        return dict(db.execute("SELECT resize_status, COUNT(*) FROM images GROUP BY resize_status").fetchall())


def test_a_full_disk_stops_resize_and_leaves_the_frames_pending(
    project: Project, in_process_pool: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    make_frames(project, 8)
    project.write_config("resize:\n  size: 64\n")
    write = ghibli_async.imaging.write_jpeg_atomic

    def disk_full_after_two(img, dest: Path, settings) -> None:
        if int(dest.stem) > 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(dest))
        write(img, dest, settings)

    monkeypatch.setattr(ghibli_async.imaging, "write_jpeg_atomic", disk_full_after_two)
    assert project.cli("--skip-caption") == 1
    err = capsys.readouterr().err
    assert "resize stopped: No space left on device" in err and "rerun" in err and "Traceback" not in err
    assert statuses(project).get("failed", 0) == 0 and statuses(project)["pending"] >= 6

    monkeypatch.setattr(ghibli_async.imaging, "write_jpeg_atomic", write)  # space freed
    assert project.cli("--skip-caption") == 0
    assert statuses(project) == {"done": 8}


def test_a_corrupt_file_is_still_the_file_s_failure(project: Project) -> None:
    make_frames(project, 2)
    project.write_config("resize:\n  size: 64\n")
    (project.frames / "frame2.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    assert project.cli("--skip-caption") == 0
    assert statuses(project) == {"done": 1, "failed": 1}


def test_retry_puts_failed_frames_back_in_the_queue(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    """Frames an older version marked failed on a full disk come back with `retry`."""
    make_frames(project, 3)
    project.write_config("resize:\n  size: 64\n")
    assert project.cli("--skip-caption") == 0
    with sqlite3.connect(project.root / "work" / "state.sqlite") as db:
        db.execute(
            "UPDATE images SET resize_status = 'failed', resize_reason = 'corrupt image: [Errno 28]' WHERE number > 1"
        )
    (project.root / "work" / "resized" / "2.jpg").unlink()
    assert project.cli("--skip-caption") == 0
    assert statuses(project) == {"done": 1, "failed": 2}  # a rerun alone leaves them failed

    capsys.readouterr()
    assert project.cli("retry", "--stage", "resize") == 0
    assert "2 failed frame(s) (resize 2)" in capsys.readouterr().out
    assert project.cli("--skip-caption") == 0
    assert statuses(project) == {"done": 3}


def test_a_failed_frame_is_tried_again_when_its_file_changes(project: Project) -> None:
    make_frames(project, 2)
    project.write_config("resize:\n  size: 64\n")
    broken = project.frames / "frame2.png"
    good = broken.read_bytes()
    broken.write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    assert project.cli("--skip-caption") == 0
    broken.write_bytes(good)  # replaced by a good copy
    assert project.cli("--skip-caption") == 0
    assert statuses(project) == {"done": 2}


def test_the_state_on_a_full_disk_stops_with_one_line_and_stays_as_it_was(tmp_path: Path) -> None:
    with State.open(tmp_path / "state.sqlite") as state:
        pages = state.db.execute("PRAGMA page_count").fetchone()[0]
        state.db.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own 'database or disk is full'
        files = [SourceFile(f"/in/{i}.png", f"{i:08d}", 1, 1, f"{i:032x}" + "x" * 200) for i in range(2000)]
        with pytest.raises(MachineError, match="database or disk is full: free space"):
            state.sources.register(files)
        assert state.db.execute("SELECT COUNT(*) FROM images").fetchone()[0] == 0


def test_a_work_dir_that_cannot_be_locked_is_one_line(
    project: Project, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    make_frames(project, 2)
    assert project.cli("--skip-caption") == 0

    def read_only(self: object, *args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(project.root / "work" / ".lock"))

    monkeypatch.setattr(FileLock, "acquire", read_only)
    capsys.readouterr()
    assert project.cli("export") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot lock") and "Permission denied" in err and "\n" not in err


@pytest.mark.parametrize(
    ("fault", "said"),
    [("read-only", "attempt to write a readonly database"), ("full", "database or disk is full")],
)
def test_a_state_that_cannot_be_written_stops_a_run_with_one_line(
    project: Project, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], fault: str, said: str
) -> None:
    """SQLite's own errors, through the CLI: a read-only state file, or a disk that is full as the
    scan writes the new frames (root ignores file modes, so both are made by SQLite itself)."""
    make_frames(project, 3)
    assert project.cli("--skip-caption") == 0
    for i in range(4, 400):
        save_frame(project.frames / f"more{i}.png", (16, 16), seed=i)
    connect = sqlite3.connect

    def faulty(path: str, **kwargs: Any) -> sqlite3.Connection:
        if fault == "read-only":
            return connect(f"file:{path}?mode=ro", **{**kwargs, "uri": True})
        db = connect(path, **kwargs)
        db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")
        return db

    monkeypatch.setattr(ghibli_async.state.database.sqlite3, "connect", faulty)
    capsys.readouterr()
    assert project.cli("--skip-caption") == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]  # beside the progress bars
    assert len(errors) == 1 and said in errors[0] and "Traceback" not in err, err
