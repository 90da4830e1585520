"""Odd entries in the input folder are skipped with one line each and listed in the summary;
symlinked folders (frames kept on another disk) are followed, loops and all."""

from __future__ import annotations

import os

import pytest
from conftest import Project, save_frame


def test_odd_entries_are_skipped_and_linked_folders_followed(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    frames = project.frames
    save_frame(frames / "good.png", (64, 64), seed=1)
    elsewhere = project.root / "other-disk"
    save_frame(elsewhere / "far.png", (64, 64), seed=2)
    (frames / "linked").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "back").symlink_to(frames, target_is_directory=True)  # a folder loop
    (frames / "gone.jpg").symlink_to(frames / "deleted.jpg")
    (frames / "loop.jpg").symlink_to(frames / "loop.jpg")
    os.mkfifo(frames / "pipe.jpg")  # opening it would hang the scan for ever
    save_frame(frames / os.fsdecode(b"caf\xe9.png"), (64, 64), seed=3)  # Latin-1, not UTF-8
    project.write_config("resize:\n  size: 64\n")

    assert project.cli("--skip-caption") == 0
    captured = capsys.readouterr()
    assert len(project.resized()) == 2  # good.png and linked/far.png, once despite the loop
    for name, why in (
        ("gone.jpg", "a symlink to nothing"),
        ("loop.jpg", "a symlink loop"),
        ("pipe.jpg", "not a regular file"),
        ("caf\ufffd.png", "not valid UTF-8"),
    ):
        assert any(name in line and why in line for line in captured.out.splitlines()), name
    assert "4 skipped" in captured.out
