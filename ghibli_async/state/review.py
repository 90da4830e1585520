"""What the review page reads and writes: its tabs as conditions on an image row, one page of a
tab, and captions written by hand."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ghibli_async.facts import Box
from ghibli_async.state.database import NOW, Database
from ghibli_async.state.filtering import boxes_from
from ghibli_async.statuses import Override, Status

_P, _K, _R, _D, _F, _B = (s.sql for s in (Status.PENDING, Status.KEPT, Status.REJECTED, Status.DONE, Status.FAILED,
                                          Status.BLOCKED))  # fmt: skip

# The review page's tabs, as conditions on an image row.
REVIEW_TABS = {
    "kept": f"filter_status IN ({_K}, {_P}) AND resize_status IN ({_P}, {_D})"
    f" AND caption_status != {_B} AND needs_review = 0",
    "rejected": f"filter_status = {_R} OR resize_status = {_R}",
    "blocked": f"caption_status = {_B}",
    "review": "needs_review = 1",
    "failed": f"filter_status = {_F} OR resize_status = {_F} OR caption_status = {_F}",
}
_COLUMNS = (
    "id, number, source_path, filter_status, filter_reason, filter_override, detections, resize_status,"
    " caption_status, caption_reason, caption, caption_model, caption_key, caption_edited, needs_review"
)


@dataclass(frozen=True)
class ReviewItem:
    """One image as the review page shows it (the source file's name only, never its path)."""

    image_id: int
    number: int | None
    name: str
    filter_status: Status
    filter_reason: str | None
    override: Override | None
    boxes: dict[str, list[Box]]
    resize_status: Status
    caption_status: Status
    caption_reason: str | None
    caption: str | None
    model: str | None
    key: str | None
    edited: bool
    needs_review: bool


class ReviewStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def page(self, tab: str, *, offset: int, limit: int) -> tuple[int, list[ReviewItem]]:
        """One page of a review tab, in natural order, and the tab's total."""
        where = f"duplicate_of IS NULL AND ({REVIEW_TABS[tab]})"
        (total,) = self._db.execute(f"SELECT COUNT(*) FROM images WHERE {where}").fetchone()
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM images WHERE {where} ORDER BY sort_key, source_path LIMIT ? OFFSET ?",
            (limit, offset),
        )
        return total, [_review_item(row) for row in rows]

    def item(self, image_id: int) -> ReviewItem | None:
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM images WHERE id = ? AND duplicate_of IS NULL", (image_id,)
        ).fetchone()
        return _review_item(row) if row else None

    def edit_caption(self, image_id: int, caption: str) -> None:
        """A caption written by hand: accepted as is, and never replaced by the caption stage."""
        with self._db.transaction() as db:
            db.execute(
                f"""UPDATE images SET caption = ?, caption_status = {_D}, caption_reason = NULL,
                       caption_edited = 1, needs_review = 0, updated_at = {NOW} WHERE id = ?""",
                (caption, image_id),
            )

    def captions_with_models(self) -> list[tuple[str, str | None]]:
        rows = self._db.execute(
            "SELECT caption, caption_model FROM images WHERE caption IS NOT NULL AND duplicate_of IS NULL"
        )
        return rows.fetchall()


def _review_item(row: tuple) -> ReviewItem:
    image_id, number, path, f_status, f_reason, override, detections, r_status, *rest = row
    c_status, c_reason, caption, model, key, edited, review = rest
    return ReviewItem(
        image_id, number, Path(path).name, Status(f_status), f_reason, Override(override) if override else None,
        boxes_from(detections), Status(r_status), Status(c_status), c_reason, caption, model, key, bool(edited),
        bool(review),
    )  # fmt: skip
