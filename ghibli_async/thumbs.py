"""Thumbnails for the review page and the report: one cache (`work_dir/thumbs/<id>.jpg`), made from
the 512 px resized image when there is one (a fraction of the decoding a 1080p source costs), else
from the source frame; many at once in worker processes, with progress."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps
from tqdm.auto import tqdm

from ghibli_async.atomic import atomic_path
from ghibli_async.config import Config
from ghibli_async.pool import LazyPool
from ghibli_async.workdir import THUMBS, output_name

THUMB_SIDE = 256


@dataclass(frozen=True)
class ThumbJob:
    image_id: int
    number: int | None
    source_path: str | None


def thumb_path(config: Config, image_id: int) -> Path:
    return config.paths.work_dir / THUMBS / f"{image_id}.jpg"


def thumb_source(config: Config, job: ThumbJob) -> Path | None:
    """The resized image when it exists (already square and small), else the source frame."""
    if job.number is not None:
        resized = config.resized_dir / output_name(job.number)
        if resized.exists():
            return resized
    return Path(job.source_path) if job.source_path else None


def make_thumbnail(source: Path, dest: Path) -> bool:
    """Upright RGB thumbnail, made once; False when the source cannot be read."""
    try:
        with Image.open(source) as img:
            img.draft("RGB", (THUMB_SIDE, THUMB_SIDE))
            thumb = ImageOps.exif_transpose(img).convert("RGB")
            thumb.thumbnail((THUMB_SIDE, THUMB_SIDE))
    except Exception:  # noqa: BLE001 - unreadable frames show as "no preview"
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as temp:
        thumb.save(temp, "JPEG", quality=85)
    return True


def make_missing_thumbnails(config: Config, jobs: Sequence[ThumbJob]) -> int:
    """Every thumbnail the cache lacks, on all cores, with a progress bar; returns how many were made."""
    missing = [(source, thumb_path(config, job.image_id)) for job in jobs if (source := thumb_source(config, job))]
    missing = [(source, dest) for source, dest in missing if not dest.exists()]
    if not missing:
        return 0
    with LazyPool(config.resize.workers or os.cpu_count() or 1) as pool:
        made = pool.executor().map(make_thumbnail, *zip(*missing), chunksize=16)
        return sum(tqdm(made, total=len(missing), desc="thumbnails", unit="img"))
