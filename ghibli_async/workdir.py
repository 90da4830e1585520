"""Every name the tool gives a file or folder in the work dir, in one place (`paths.work_dir`)."""

from __future__ import annotations

from pathlib import Path

STATE_FILE = "state.sqlite"  # all progress
EXTRACTED = "extracted"  # frames taken from the input folder's videos
RESIZED = "resized"  # N.jpg, what the export links
THUMBS = "thumbs"  # the review page's thumbnails
REPORT = "report"  # `report` writes the read-only review page here by default
LOCK = ".lock"  # one run per work dir
LOG_FILE = Path("logs") / "run.jsonl"  # every run's log, rotated to run.jsonl.1 … .5


def output_name(number: int) -> str:
    """A frame's file name in `resized/` and in the dataset."""
    return f"{number}.jpg"
