"""`restore`: a lost or damaged state rebuilt from the export's manifest, without one request.

The export writes a hidden manifest beside `metadata.jsonl` (`stages/export.py`): each row's source
frame, its content hash, caption, model and key. Restore sets a damaged state file aside (it is
never deleted), registers those frames under their content hash, gives each its old number, links
the exported image back as its resized file and records its caption. The next run scans the input
as usual: the restored frames are known, so nothing is paid for twice; new frames go through
every stage.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ghibli_async.config import Config
from ghibli_async.errors import StateDamaged, UserError
from ghibli_async.inputs import natural_sort_key
from ghibli_async.pipeline import exclusive
from ghibli_async.stages.export import MANIFEST_FILE, link_or_copy
from ghibli_async.state import State
from ghibli_async.state.results import CaptionedImage
from ghibli_async.state.sources import SourceFile
from ghibli_async.workdir import output_name


@dataclass(frozen=True)
class Restored:
    rows: int  # exported rows in the manifest
    restored: int  # rows whose frame the new state holds, captioned as before
    set_aside: Path | None  # where the damaged state file went


def restore_state(config: Config, now: datetime) -> Restored:
    """A new state from the output folder's manifest; `now` names the damaged file set aside."""
    manifest = config.paths.output_dir / MANIFEST_FILE
    if not manifest.exists():
        raise UserError(
            f"nothing to restore from: {manifest} is missing (an export by a version before 0.2 has none): "
            "put back a copy of the state, or move the output folder away to start afresh"
        )
    rows = [_row(json.loads(line)) for line in manifest.read_text(encoding="utf-8").splitlines() if line]
    with exclusive(config.paths.work_dir):
        set_aside = _set_aside_if_damaged(config.state_path, now)
        with State.open(config.state_path) as state:
            state.sources.register(
                [SourceFile(r.source_path, natural_sort_key(r.source_path), 0, 0, r.content_hash) for r in rows]
            )
            restored = state.results.restore_exported(rows)
        config.resized_dir.mkdir(parents=True, exist_ok=True)
        for row in rows:
            resized = config.resized_dir / output_name(row.number)
            if not resized.exists():
                link_or_copy(config.paths.output_dir / output_name(row.number), resized)
    return Restored(len(rows), restored, set_aside)


def _row(entry: dict) -> CaptionedImage:
    number = int(Path(entry["file_name"]).stem)
    return CaptionedImage(
        number, entry["caption"], entry["source"], entry["content_hash"], entry["model"], entry["key"], entry["edited"]
    )


def _set_aside_if_damaged(state_path: Path, now: datetime) -> Path | None:
    """A damaged state file (and its WAL) renamed out of the way; a sound one is never replaced."""
    if not state_path.exists():
        return None
    try:
        State.open(state_path, readonly=True).close()
    except StateDamaged:
        aside = state_path.with_name(f"{state_path.name}.damaged-{now:%Y%m%dT%H%M%S}")
        for suffix in ("", "-wal", "-shm"):
            if Path(f"{state_path}{suffix}").exists():
                os.replace(f"{state_path}{suffix}", f"{aside}{suffix}")
        return aside
    except UserError:
        pass  # an older schema, say: a sound state that a run upgrades
    raise UserError(f"{state_path} opens as a sound state: restore only rebuilds a lost or damaged one")
