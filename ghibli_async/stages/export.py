"""Export stage: the Hugging Face imagefolder dataset, rebuilt from the state.

`output_dir` holds exactly the captioned images (`N.jpg`), `metadata.jsonl` in number order and,
optionally, kohya-style `N.txt` sidecars. Images without a caption stay in the work dir only, so
`datasets.load_dataset("imagefolder", data_dir=output_dir)` never meets an image without text.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import structlog

from ghibli_async.atomic import atomic_path, is_partial, write_text_atomic
from ghibli_async.config import Config
from ghibli_async.stages.base import RunContext, StageReport
from ghibli_async.stages.resize import output_name
from ghibli_async.state import State
from ghibli_async.state.results import CaptionedImage

log = structlog.get_logger(__name__)

METADATA_FILE = "metadata.jsonl"
_MANAGED = re.compile(r"\d+\.(jpg|txt)")


class ExportStage:
    name = "export"
    label = "exported"
    uses_pool = False

    def enabled(self, config: Config) -> bool:
        return True  # the output folder always matches the state

    async def run(self, context: RunContext) -> StageReport:
        result = export_dataset(context.state, context.config)
        exists = result.output_dir.exists()
        line = f"images in {result.output_dir}" if exists else "nothing to export yet: no image has a caption"
        return StageReport(Counter(images=result.images, removed=result.removed), shown=result.images, line=line)


@dataclass(frozen=True)
class ExportResult:
    images: int
    removed: int
    output_dir: Path


def export_dataset(state: State, config: Config) -> ExportResult:
    """Make `output_dir` match the captioned images in the state (incrementally, atomically per file)."""
    output_dir = config.paths.output_dir
    items = state.results.captioned_images()
    if not items and not output_dir.exists():
        return ExportResult(0, 0, output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    wanted: set[str] = set()
    for item in items:
        name = output_name(item.number)
        _place_image(config.resized_dir / name, output_dir / name)
        wanted.add(name)
        if config.export.kohya_txt:
            sidecar = output_dir / f"{item.number}.txt"
            _write_if_changed(sidecar, item.caption)
            wanted.add(sidecar.name)
    metadata = output_dir / METADATA_FILE
    if items:
        write_text_atomic(metadata, metadata_jsonl(items))
    else:
        metadata.unlink(missing_ok=True)
    removed = _remove_unwanted(output_dir, wanted)
    _warn_about_foreign_files(output_dir)
    return ExportResult(len(items), removed, output_dir)


def metadata_jsonl(items: list[CaptionedImage]) -> str:
    """One `{"file_name", "text"}` object per line, UTF-8 as is (no \\u escapes)."""
    return "".join(
        json.dumps({"file_name": output_name(item.number), "text": item.caption}, ensure_ascii=False) + "\n"
        for item in items
    )


def _write_if_changed(path: Path, text: str) -> None:
    try:
        if path.read_text(encoding="utf-8") == text:
            return
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    write_text_atomic(path, text)


def _place_image(source: Path, dest: Path) -> None:
    """Hard-link the resized image into the output (a copy across file systems); skip if current."""
    if dest.exists() and _is_current(source, dest):
        return
    with atomic_path(dest) as temp:
        temp.unlink(missing_ok=True)
        try:
            os.link(source, temp)
        except OSError:
            shutil.copy2(source, temp)


def _is_current(source: Path, dest: Path) -> bool:
    if os.path.samefile(source, dest):
        return True
    src, dst = source.stat(), dest.stat()
    return src.st_size == dst.st_size and src.st_mtime_ns == dst.st_mtime_ns


def _remove_unwanted(output_dir: Path, wanted: set[str]) -> int:
    """Drop our own files (`N.jpg`, `N.txt`) whose image no longer has a caption, and partial files."""
    stale = [
        entry
        for entry in output_dir.iterdir()
        if is_partial(entry.name) or (_MANAGED.fullmatch(entry.name) and entry.name not in wanted)
    ]
    for entry in stale:
        entry.unlink(missing_ok=True)
    return len(stale)


def _warn_about_foreign_files(output_dir: Path) -> None:
    foreign = sorted(
        entry.name
        for entry in output_dir.iterdir()
        if entry.name != METADATA_FILE and not _MANAGED.fullmatch(entry.name)
    )
    if foreign:
        log.warning(
            "output_has_foreign_files",
            output_dir=str(output_dir),
            files=foreign[:5],
            count=len(foreign),
            hint="datasets' imagefolder loader reads every image here; move them out",
        )
