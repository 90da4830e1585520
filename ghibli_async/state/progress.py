"""How far the dataset is: counts per stage and status, and the images a stage could not use."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ghibli_async.state.database import NOW, Database
from ghibli_async.statuses import Status

_R, _F, _B, _D = Status.REJECTED.sql, Status.FAILED.sql, Status.BLOCKED.sql, Status.DONE.sql


@dataclass(frozen=True)
class Problem:
    """An image a stage could not use, for the summary and `status`."""

    source_path: str
    stage: str
    status: str
    reason: str


@dataclass(frozen=True)
class Counts:
    """How many images are in each status, per stage's status column (duplicates not included)."""

    sources: int
    duplicates: int
    by_column: dict[str, dict[str, int]]  # filter_status, resize_status, caption_status -> status -> images
    rejected_by_reason: dict[str, int]

    def of(self, column: str | None) -> dict[str, int]:
        """The statuses of a stage's column (none for a stage without one)."""
        return self.by_column.get(column, {}) if column else {}

    @property
    def filter(self) -> dict[str, int]:
        return self.of("filter_status")

    @property
    def resize(self) -> dict[str, int]:
        return self.of("resize_status")

    @property
    def caption(self) -> dict[str, int]:
        return self.of("caption_status")


class ProgressStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def counts(self) -> Counts:
        def by_status(column: str, where: str = "") -> dict[str, int]:
            rows = self._db.execute(
                f"SELECT {column}, COUNT(*) FROM images WHERE duplicate_of IS NULL {where} GROUP BY {column}"
            )
            return dict(rows.fetchall())

        total, duplicates = self._db.execute("SELECT COUNT(*), COUNT(duplicate_of) FROM images").fetchone()
        rejected = self._db.execute(
            f"""SELECT CASE WHEN filter_reason LIKE 'duplicate_of:%' THEN 'duplicate'
                           WHEN resize_status = {_R} THEN COALESCE(resize_reason, 'unknown')
                           ELSE COALESCE(filter_reason, 'unknown') END, COUNT(*) FROM images
               WHERE duplicate_of IS NULL AND (filter_status = {_R} OR resize_status = {_R})
               GROUP BY 1"""
        )
        return Counts(
            sources=total,
            duplicates=duplicates,
            by_column={  # each over the frames that reach the stage
                "filter_status": by_status("filter_status"),
                "resize_status": by_status("resize_status", f"AND filter_status NOT IN ({_R}, {_F})"),
                "caption_status": by_status(
                    "CASE WHEN needs_review = 1 THEN 'needs_review' ELSE caption_status END",
                    f"AND resize_status = {_D}",
                ),
            },
            rejected_by_reason=dict(rejected.fetchall()),
        )

    def retry_failed(self, columns: Mapping[str, str]) -> dict[str, int]:
        """Put the frames that failed in these stages (stage -> its status column) back in their queue."""
        requeued = {}
        with self._db.transaction() as db:
            for stage, column in columns.items():
                cursor = db.execute(
                    f"UPDATE images SET {column} = {Status.PENDING.sql}, updated_at = {NOW} WHERE {column} = {_F}"
                )
                requeued[stage] = cursor.rowcount
        return requeued

    def rejected(self, *, limit: int = 50) -> tuple[int, list[Problem]]:
        """Frames the filter or the resize stage rejected: how many, and the first `limit` by path."""
        where = f"duplicate_of IS NULL AND (filter_status = {_R} OR resize_status = {_R})"
        (total,) = self._db.execute(f"SELECT COUNT(*) FROM images WHERE {where}").fetchone()
        rows = self._db.execute(
            f"""SELECT source_path, CASE WHEN resize_status = {_R} THEN 'resize' ELSE 'filter' END, {_R},
                       COALESCE(CASE WHEN resize_status = {_R} THEN resize_reason ELSE filter_reason END, '')
                FROM images WHERE {where} ORDER BY sort_key, source_path LIMIT ?""",
            (limit,),
        )
        return total, [Problem(*row) for row in rows]

    def problems(self, *, limit: int | None = None) -> list[Problem]:
        """Images that failed or were blocked, in natural order (the first `limit` of them)."""
        rows = self._db.execute(
            f"""SELECT source_path, 'filter', filter_status, COALESCE(filter_reason, '') FROM images
               WHERE filter_status = {_F}
               UNION ALL
               SELECT source_path, 'resize', resize_status, COALESCE(resize_reason, '') FROM images
               WHERE resize_status = {_F}
               UNION ALL
               SELECT source_path, 'caption', caption_status, COALESCE(caption_reason, '') FROM images
               WHERE caption_status IN ({_F}, {_B})
               ORDER BY 1 LIMIT ?""",
            (-1 if limit is None else limit,),
        )
        return [Problem(*row) for row in rows]
