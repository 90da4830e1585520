"""What the input folder holds: frames and videos (recursively, in natural order), the frames
already extracted from its videos, and the entries that cannot be frames. Read by the scan and
extract stages, `--dry-run` and `--watch`; never enters the work or output folder."""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from ghibli_async.config import Config
from ghibli_async.errors import NoInput, UserError

log = structlog.get_logger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
VIDEO_SUFFIXES = frozenset({".mp4", ".mkv", ".webm", ".mov", ".avi"})
_DIGITS = re.compile(r"(\d+)")


def natural_sort_key(path: str) -> str:
    """A string that sorts `img2.png` before `img10.png` (digit runs compare by value)."""
    parts = _DIGITS.split(path)
    return "".join(
        f"{len(part.lstrip('0')):03d}{part.lstrip('0')}" if index % 2 else part.casefold()
        for index, part in enumerate(parts)
    )


@dataclass(frozen=True)
class InputFiles:
    images: list[Path]  # frames in the input folder and frames extracted from its videos
    videos: list[Path]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why): odd entries never opened
    stats: dict[Path, os.stat_result] = field(default_factory=dict)  # taken while walking: not again


def list_inputs(config: Config) -> InputFiles:
    """Images and videos under the input folder (recursively, hidden names skipped) and the frames
    already extracted from the videos, in natural order; an error line when there is nothing to
    work on. The work and output folders are never entered, wherever they are: a dataset exported
    inside the input folder must not come back as new frames."""
    input_dir, extracted_dir = config.paths.input_dir, config.extracted_dir
    if not input_dir.is_dir():
        raise UserError(
            f"input folder not found: {input_dir} (set paths.input_dir in the config; --input on the command line)"
        )
    skipped: list[tuple[str, str]] = []
    own = {_identity(folder) for folder in (config.paths.work_dir, config.paths.output_dir) if folder.is_dir()}
    stats = dict(_walk(input_dir, skipped, never_enter=own))
    if extracted_dir.is_dir():
        stats.update(_walk(extracted_dir, skipped))
    found = list(stats)
    images = sorted((p for p in found if p.suffix.lower() in IMAGE_SUFFIXES), key=lambda p: natural_sort_key(str(p)))
    videos = sorted((p for p in found if p.suffix.lower() in VIDEO_SUFFIXES), key=lambda p: natural_sort_key(str(p)))
    if not images and not videos:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES | VIDEO_SUFFIXES))
        raise NoInput(
            f"no images or videos in {input_dir} (looked for {suffixes}): put them there, or set "
            "paths.input_dir (--input on the command line)"
        )
    return InputFiles(images, videos, skipped, stats)


def _identity(folder: Path) -> tuple[int, int]:
    """The real folder behind a path, however it is reached (links, `..`)."""
    found = os.stat(folder)
    return found.st_dev, found.st_ino


def _walk(
    folder: Path, skipped: list[tuple[str, str]], *, never_enter: Collection[tuple[int, int]] = ()
) -> Iterator[tuple[Path, os.stat_result]]:
    """Frame and video files under `folder` with their stat, following symlinked folders (each real
    folder once, so a link loop ends; none of `never_enter`); an entry that cannot be one is added
    to `skipped` with its reason and never opened."""
    seen_folders: set[tuple[int, int]] = set(never_enter)
    for root, dirs, names in os.walk(folder, followlinks=True):
        here = _identity(Path(root))
        if here in seen_folders:
            dirs[:] = []
            continue
        seen_folders.add(here)
        dirs[:] = [name for name in dirs if not name.startswith(".")]
        for name in names:
            path = Path(root) / name
            if name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES | VIDEO_SUFFIXES:
                continue
            found = _inspect(path, name)
            if isinstance(found, os.stat_result):
                yield path, found
            else:
                shown = os.fsencode(path).decode("utf-8", "replace")
                skipped.append((shown, found))
                log.warning("input_skipped", path=shown, reason=found)


def _inspect(path: Path, name: str) -> os.stat_result | str:
    """The entry's stat when it is a regular file with a usable name, else why it cannot be a frame."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "its name is not valid UTF-8: rename it"
    try:
        found = path.stat()
    except FileNotFoundError:
        return "a symlink to nothing"
    except OSError as exc:
        return "a symlink loop" if exc.errno == errno.ELOOP else f"cannot be read ({exc.strerror})"
    return found if stat.S_ISREG(found.st_mode) else "not a regular file (a pipe, socket or device): never opened"
