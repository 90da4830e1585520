"""Scan stage: find the input frames and register new or changed ones in the state store.

Only files that are new or whose size/mtime changed are read and hashed, so a rerun over
100,000 known frames costs one directory walk and one query.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import structlog
from tqdm.auto import tqdm

from ghibli_async.config import Config
from ghibli_async.inputs import natural_sort_key
from ghibli_async.stages.base import PlanContext, RunContext, StageReport, plural
from ghibli_async.state import State
from ghibli_async.state.sources import KnownSource, SourceFile

log = structlog.get_logger(__name__)

_HASH_THREADS = 8  # hashing is disk-bound and hashlib releases the GIL
_REGISTER_BATCH = 2000  # rows per transaction: short enough to lose little on a crash


class ScanStage:
    name = "scan"
    label = "scanned"
    uses_pool = False
    after_stop = False
    status_column: str | None = None
    skip: str | None = None

    def plan(self, context: PlanContext) -> None:
        found = plural(len(context.inputs.images), "frame")
        context.says(self.name, f"{found} in {context.config.paths.input_dir}: {context.fresh} new or changed")

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
