"""Export stage: the dataset, rebuilt from the state in every layout `export.layouts` names.

`output_dir` holds exactly the captioned images (`N.jpg`) and each layout's files (`metadata.jsonl`
for imagefolder, `N.txt` and a dataset TOML for kohya, …; `ghibli_async.layouts`). Images without
a caption stay in the work dir only, so no trainer meets an image without text.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from collections import Counter
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import structlog

from ghibli_async.atomic import is_partial
from ghibli_async.config import Config
from ghibli_async.errors import MachineError
from ghibli_async.layouts import Folders, all_layouts, chosen
from ghibli_async.layouts.imagefolder import METADATA_FILE
from ghibli_async.stages.base import PlanContext, RunContext, StageReport
from ghibli_async.state import State
from ghibli_async.state.results import CaptionedImage
from ghibli_async.workdir import output_name

log = structlog.get_logger(__name__)

# What the export wrote, row by row, with each frame's source and content hash: a hidden file that
# trainers and `datasets` skip, from which `restore` rebuilds a lost state without a request.
MANIFEST_FILE = ".ghibli_async.jsonl"
_MANAGED = re.compile(
    "|".join([r"\d+\.jpg", re.escape(MANIFEST_FILE), *(layout.managed.pattern for layout in all_layouts().values())])
)


class ExportStage:
    name = "export"
    label = "exported"
    uses_pool = False
    after_stop = True
    status_column: str | None = None
    skip: str | None = None

    def plan(self, context: PlanContext) -> None:
        layouts = ", ".join(context.config.export.layouts)
        context.says(self.name, f"{context.config.paths.output_dir} rebuilt from the state ({layouts})")

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
    """Make `output_dir` hold exactly the captioned images in the state. The new export is built
    beside it and swapped in at the end, so a failure (a full disk) leaves the previous one whole."""
    output_dir = config.paths.output_dir
    staging, previous = _sibling(output_dir, "new"), _sibling(output_dir, "old")
    _finish_an_interrupted_swap(output_dir, staging, previous)
    count = state.results.captioned_count()
    if not count and not output_dir.exists():
        return ExportResult(0, 0, output_dir)
    try:
        _build(Folders(staging, output_dir), state.results.captioned_images(), config, carry_from=output_dir)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise MachineError(
            f"export failed ({exc.strerror or exc}): {output_dir} still holds the previous export; "
            "free space (or fix permissions) and run `export` again"
        ) from None
    if output_dir.exists():
        os.replace(output_dir, previous)
    os.replace(staging, output_dir)
    removed = _count_removed(previous, output_dir)
    shutil.rmtree(previous, ignore_errors=True)
    _warn_about_foreign_files(output_dir)
    return ExportResult(count, removed, output_dir)


def exported_count(output_dir: Path) -> int:
    """Rows in the dataset the last export wrote (0 when there is none)."""
    metadata = output_dir / METADATA_FILE
    if not metadata.exists():
        return 0
    with metadata.open(encoding="utf-8") as lines:
        return sum(1 for _ in lines)


def _count_removed(previous: Path, output_dir: Path) -> int:
    """Files the export manages that the previous export had and this one has not."""
    if not previous.exists():
        return 0
    with os.scandir(previous) as entries:
        return sum(
            1
            for entry in entries
            if (_MANAGED.fullmatch(entry.name) or is_partial(entry.name)) and not (output_dir / entry.name).exists()
        )


def _sibling(output_dir: Path, role: str) -> Path:
    return output_dir.with_name(f".{output_dir.name}.{role}")


def _finish_an_interrupted_swap(output_dir: Path, staging: Path, previous: Path) -> None:
    """A run killed between the two renames of the swap: the new export is complete, so finish it;
    killed while building it: drop the half-built one."""
    if previous.exists() and not output_dir.exists() and staging.exists():
        os.replace(staging, output_dir)
    shutil.rmtree(previous, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)


def _build(folders: Folders, items: Iterable[CaptionedImage], config: Config, *, carry_from: Path) -> None:
    """The whole export in `folders.staging`: images hard-linked from the work dir, each layout's
    files, the manifest, and the user's own files from the current export (linked, never moved)."""
    staging = folders.staging
    staging.mkdir(parents=True)
    writers = [layout.open(folders, config) for layout in chosen(config)]
    with ExitStack() as files:
        manifest = None
        for item in items:
            name = output_name(item.number)
            link_or_copy(config.resized_dir / name, staging / name)
            if manifest is None:  # no caption, no manifest
                manifest = files.enter_context((staging / MANIFEST_FILE).open("w", encoding="utf-8"))
            manifest.write(manifest_line(item))
            for writer in writers:
                writer.add(item)
        for writer in writers:
            writer.close()
    for entry in carry_from.iterdir() if carry_from.exists() else ():
        if _MANAGED.fullmatch(entry.name) or is_partial(entry.name):
            continue
        if entry.is_dir():
            shutil.copytree(entry, staging / entry.name, copy_function=link_or_copy)
        else:
            link_or_copy(entry, staging / entry.name)


def link_or_copy(source: Path | str, dest: Path | str) -> None:
    """A hard link (no bytes copied), or a copy across file systems."""
    try:
        os.link(source, dest)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        shutil.copy2(source, dest)


def manifest_line(item: CaptionedImage) -> str:
    row = {
        "file_name": output_name(item.number),
        "source": item.source_path,
        "content_hash": item.content_hash,
        "caption": item.caption,
        "model": item.model,
        "key": item.key,
        "edited": item.edited,
    }
    return json.dumps(row, ensure_ascii=False) + "\n"


def _warn_about_foreign_files(output_dir: Path) -> None:
    foreign = sorted(
        entry.name
        for entry in output_dir.iterdir()
        if not _MANAGED.fullmatch(entry.name) and not entry.name.startswith(".")
    )
    if foreign:
        log.warning(
            "output_has_foreign_files",
            output_dir=str(output_dir),
            files=foreign[:5],
            count=len(foreign),
            hint="datasets' imagefolder loader reads every image here; move them out",
        )
