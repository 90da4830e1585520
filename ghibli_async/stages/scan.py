"""Scan stage: find the input frames and register new or changed ones in the state store.

Only files that are new or whose size/mtime changed are read and hashed, so a rerun over
100,000 known frames costs one directory walk and one query.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from collections import Counter
from collections.abc import Collection, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from tqdm.auto import tqdm

from ghibli_async.config import Config
from ghibli_async.errors import NoInput, UserError
from ghibli_async.stages.base import RunContext, StageReport
from ghibli_async.state import State
from ghibli_async.state.sources import KnownSource, SourceFile
from ghibli_async.video import VIDEO_SUFFIXES

log = structlog.get_logger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
_HASH_THREADS = 8  # hashing is disk-bound and hashlib releases the GIL
_REGISTER_BATCH = 2000  # rows per transaction: short enough to lose little on a crash
_DIGITS = re.compile(r"(\d+)")


class ScanStage:
    name = "scan"
    label = "scanned"
    uses_pool = False
    after_stop = False

    def enabled(self, config: Config) -> bool:
        return True  # every other stage works on what the scan registered

    async def run(self, context: RunContext) -> StageReport:
        scan = scan_inputs(context.inputs.images, context.state, context.inputs.stats)
        log.info("scan_done", found=scan.found, new=scan.new, duplicates=scan.duplicates)
        skipped = context.inputs.skipped
        odd = f", {len(skipped)} skipped" if skipped else ""
        notes = [f"skipped {path}: {why}" for path, why in skipped[:20]]
        if len(skipped) > 20:
            notes.append(f"… and {len(skipped) - 20} more entries skipped (the log lists each)")
        return StageReport(
            Counter(
                found=scan.found, new=scan.new, duplicates=scan.duplicates, changed=scan.changed, skipped=len(skipped)
            ),
            shown=scan.found,
            line=f"files: {scan.new} new, {scan.duplicates} exact duplicate(s), {scan.changed} changed{odd}",
            notes=notes,
        )


@dataclass(frozen=True)
class ScanResult:
    found: int
    new: int
    duplicates: int
    changed: int


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


def hash_file(path: Path) -> str | None:
    """BLAKE2b of the bytes; None when the file cannot be read (the resize stage reports it)."""
    digest = hashlib.blake2b(digest_size=16)
    try:
        with path.open("rb") as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def scan_inputs(files: list[Path], state: State, stats: dict[Path, os.stat_result]) -> ScanResult:
    """Register every new image file; re-register files whose content changed (`stats`: as the walk
    found them)."""
    sources = state.sources
    known = sources.known()
    to_hash: list[tuple[Path, os.stat_result, KnownSource | None]] = []
    for path in files:
        stat = stats[path]
        previous = known.get(str(path))
        if previous is None or (previous.size, previous.mtime_ns) != (stat.st_size, stat.st_mtime_ns):
            to_hash.append((path, stat, previous))

    new, duplicates, changed = [], 0, 0
    for path, stat, previous, content_hash in _hash_all(to_hash):
        source = SourceFile(str(path), natural_sort_key(str(path)), stat.st_size, stat.st_mtime_ns, content_hash)
        if previous is None:
            new.append(source)
            if len(new) >= _REGISTER_BATCH:
                duplicates += sources.register(new)
                new.clear()
        elif content_hash == sources.content_hash_of(previous.image_id):
            sources.touch(previous.image_id, stat.st_size, stat.st_mtime_ns)
        else:
            log.warning("source_changed", path=str(path), effect="its stages run again")
            sources.replace_changed(previous.image_id, source)
            changed += 1
    duplicates += sources.register(new) if new else 0
    registered = sum(1 for *_, previous in to_hash if previous is None)
    return ScanResult(found=len(files), new=registered, duplicates=duplicates, changed=changed)


def _hash_all(
    items: list[tuple[Path, os.stat_result, KnownSource | None]],
) -> Iterable[tuple[Path, os.stat_result, KnownSource | None, str | None]]:
    if not items:
        return
    with ThreadPoolExecutor(_HASH_THREADS) as pool, tqdm(total=len(items), desc="scan", unit="file") as bar:
        for (path, stat, previous), content_hash in zip(items, pool.map(hash_file, (p for p, _, _ in items))):
            bar.update()
            yield path, stat, previous, content_hash
