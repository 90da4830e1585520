"""What the review page reads and writes: its tabs as conditions on an image row, one page of a
tab, and captions written by hand."""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
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
    " resize_reason, resize_window, caption_status, caption_reason, caption, caption_model, caption_key,"
    " caption_edited, needs_review, caption_checks, caption_doubt, caption_sent_back"
)


@dataclass
class SentBack:
    """What "caption again with another model" did: the frames sent back, and how many were left
    as they were because a person wrote the caption, no model has captioned the frame yet, or
    every configured model already has."""

    numbers: list[int] = field(default_factory=list)
    edited: int = 0
    uncaptioned: int = 0
    no_other_model: int = 0


@dataclass(frozen=True)
class Decided:
    """A frame's filter columns before a keep/reject from the page, to undo it."""

    image_id: int
    status: str
    reason: str | None
    override: str | None


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
    resize_reason: str | None  # too_small: below the target size (kept by hand, it is upscaled)
    resize_window: tuple[float, float, float, float] | None  # what of the frame the resized image shows
    caption_status: Status
    caption_reason: str | None
    caption: str | None
    model: str | None
    key: str | None
    edited: bool
    needs_review: bool
    checks: list[dict[str, object]]  # the caption checks that fired (check, reason, weight, words)
    caption_doubt: float
    sent_back: tuple[str, ...]  # models whose caption of it was sent back from the page


@dataclass(frozen=True)
class ReviewQuery:
    """What narrows and orders a tab: caption search (words must all appear; "quoted phrases" as
    they are), the filter's reason, a detector that found someone, the caption's model and key,
    and the order: `natural` (file names) or `doubt` (the frames most likely wrong first)."""

    search: str = ""
    reason: str | None = None
    detector: str | None = None
    model: str | None = None
    key: str | None = None
    sort: str = "natural"


SORTS = ("natural", "doubt", "caption_doubt")
_SCORE = "COALESCE(person_score, 0)"
_CAPTION_DOUBT = "COALESCE(caption_doubt, 0)"


def review_where(tab: str, query: ReviewQuery) -> tuple[str, list[object]]:
    """The SQL condition (and its parameters) for a tab narrowed by a query."""
    clauses: list[str] = ["duplicate_of IS NULL", f"({REVIEW_TABS[tab]})"]
    params: list[object] = []
    for term in search_terms(query.search):
        clauses.append("caption LIKE ? ESCAPE '\\'")
        params.append("%" + re.sub(r"([%_\\])", r"\\\1", term) + "%")
    if query.reason:
        clauses.append("(filter_reason = ? OR filter_reason LIKE ? || ':%')")
        params += [query.reason, query.reason]
    if query.detector:
        clauses.append("json_array_length(detections, '$.\"' || ? || '\".boxes') > 0")
        params.append(query.detector)
    for column, value in (("caption_model", query.model), ("caption_key", query.key)):
        if value:
            clauses.append(f"{column} = ?")
            params.append(value)
    return " AND ".join(clauses), params


def search_terms(text: str) -> list[str]:
    """`"straw hat" girl` -> ["straw hat", "girl"]: phrases in quotes, other words one by one."""
    return [phrase or word for phrase, word in re.findall(r'"([^"]+)"|(\S+)', text) if (phrase or word).strip()]


def _order(tab: str, sort: str) -> tuple[str, str, str]:
    """ORDER BY, the score it sorts by first, and its direction. `doubt`: kept frames with the
    weakest person evidence first, rejected ones with the strongest first (the likeliest mistakes
    either way); `caption_doubt`: the captions the checks doubt most first."""
    if sort == "caption_doubt":
        return f"{_CAPTION_DOUBT} DESC, sort_key, source_path", _CAPTION_DOUBT, "DESC"
    if sort != "doubt":
        return "sort_key, source_path", "", ""
    direction = "DESC" if tab == "rejected" else "ASC"
    return f"{_SCORE} {direction}, sort_key, source_path", _SCORE, direction


class ReviewStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def page(
        self, tab: str, *, offset: int, limit: int, query: ReviewQuery = ReviewQuery()
    ) -> tuple[int, list[ReviewItem]]:
        """One page of a review tab as the query narrows and orders it, and the total it has."""
        where, params = review_where(tab, query)
        (total,) = self._db.execute(f"SELECT COUNT(*) FROM images WHERE {where}", params).fetchone()
        order, _, _ = _order(tab, query.sort)
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM images WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?", [*params, limit, offset]
        )
        return total, [_review_item(row) for row in rows]

    def iterate(self, tab: str) -> Iterator[ReviewItem]:
        """Every frame of a tab in natural order, one row at a time (the report's pages)."""
        where, params = review_where(tab, ReviewQuery())
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM images WHERE {where} ORDER BY sort_key, source_path", params)
        return (_review_item(row) for row in rows)

    def thumb_jobs(self) -> list[tuple[int, int | None, str]]:
        """(id, number, source path) of every frame a review tab can show."""
        return self._db.execute("SELECT id, number, source_path FROM images WHERE duplicate_of IS NULL").fetchall()

    def position(self, tab: str, number: int, query: ReviewQuery = ReviewQuery()) -> int | None:
        """Where frame `number` is in the tab's order (0-based); None when the tab does not hold it."""
        where, params = review_where(tab, query)
        _, score_of, direction = _order(tab, query.sort)
        row = self._db.execute(
            f"SELECT {score_of or 0}, sort_key, source_path FROM images WHERE {where} AND number = ?", [*params, number]
        ).fetchone()
        if row is None:
            return None
        score, sort_key, path = row
        before = "(sort_key, source_path) < (?, ?)"
        if direction:
            beats = ">" if direction == "DESC" else "<"
            before = f"({score_of} {beats} ? OR ({score_of} = ? AND {before}))"
            params += [score, score]
        (index,) = self._db.execute(
            f"SELECT COUNT(*) FROM images WHERE {where} AND {before}", [*params, sort_key, path]
        ).fetchone()
        return index

    def decide(self, image_ids: Sequence[int], override: Override) -> list[Decided]:
        """The user's keep or reject for these frames, in one transaction; returns what each was
        before, for an undo."""
        status = Status.KEPT if override == Override.KEEP else Status.REJECTED
        with self._db.transaction() as db:
            before = [
                Decided(*row)
                for chunk in _chunks(image_ids)
                for row in db.execute(
                    "SELECT id, filter_status, filter_reason, filter_override FROM images"
                    f" WHERE duplicate_of IS NULL AND id IN ({','.join('?' * len(chunk))})",
                    chunk,
                )
            ]
            db.executemany(
                f"""UPDATE images SET filter_override = ?, filter_status = ?, filter_reason = 'override',
                       updated_at = {NOW} WHERE id = ?""",
                [(override.value, status.value, decided.image_id) for decided in before],
            )
        return before

    def restore(self, decided: Sequence[Decided]) -> None:
        """Put frames back as `decide` found them (an undo)."""
        with self._db.transaction() as db:
            db.executemany(
                f"""UPDATE images SET filter_status = ?, filter_reason = ?, filter_override = ?,
                       updated_at = {NOW} WHERE id = ?""",
                [(d.status, d.reason, d.override, d.image_id) for d in decided],
            )

    def items(self, image_ids: Sequence[int]) -> list[ReviewItem]:
        return [
            _review_item(row)
            for chunk in _chunks(image_ids)
            for row in self._db.execute(
                f"SELECT {_COLUMNS} FROM images WHERE duplicate_of IS NULL AND id IN ({','.join('?' * len(chunk))})",
                chunk,
            )
        ]

    def facets(self) -> dict[str, list[str]]:
        """The values the page's filters offer: reasons (without a duplicate's number), detectors,
        models and keys that occur in the state."""

        def distinct(sql: str) -> list[str]:
            return sorted(value for (value,) in self._db.execute(sql) if value)

        return {
            "reason": distinct(
                "SELECT DISTINCT CASE WHEN instr(filter_reason, ':') THEN substr(filter_reason, 1, "
                "instr(filter_reason, ':') - 1) ELSE filter_reason END FROM images"
            ),
            "detector": distinct(
                "SELECT DISTINCT detector.key FROM images, json_each(images.detections) AS detector"
                " WHERE detections IS NOT NULL"
            ),
            "model": distinct("SELECT DISTINCT caption_model FROM images"),
            "key": distinct("SELECT DISTINCT caption_key FROM images"),
        }

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

    def send_back(self, image_ids: Sequence[int], models: Collection[str]) -> SentBack:
        """Captions a person wants from another model: each frame captioned by a model goes back to
        pending, with that model added to the ones it must not go to again. A caption written by
        hand is never sent back; nor is one that every model of `models` has already written."""
        sent = SentBack()
        with self._db.transaction() as db:
            for chunk in _chunks(image_ids):
                rows = db.execute(
                    f"""SELECT id, number, caption_model, caption_edited, caption_sent_back FROM images
                        WHERE duplicate_of IS NULL AND id IN ({",".join("?" * len(chunk))})""",
                    chunk,
                )
                for image_id, number, model, edited, earlier in rows.fetchall():
                    tried = {*json.loads(earlier or "[]"), model}
                    if edited:
                        sent.edited += 1
                    elif model is None:
                        sent.uncaptioned += 1
                    elif not set(models) - tried:
                        sent.no_other_model += 1
                    else:
                        db.execute(
                            f"""UPDATE images SET caption_status = {_P}, caption_reason = NULL, needs_review = 0,
                                   caption_sent_back = ?, updated_at = {NOW} WHERE id = ?""",
                            (json.dumps(sorted(tried)), image_id),
                        )
                        sent.numbers.append(number)
        return sent

    def captions_with_models(self) -> list[tuple[str, str | None]]:
        rows = self._db.execute(
            "SELECT caption, caption_model FROM images WHERE caption IS NOT NULL AND duplicate_of IS NULL"
        )
        return rows.fetchall()


def _review_item(row: tuple) -> ReviewItem:
    image_id, number, path, f_status, f_reason, override, detections, r_status, r_reason, window, *rest = row
    c_status, c_reason, caption, model, key, edited, review, checks, caption_doubt, sent_back = rest
    return ReviewItem(
        image_id, number, Path(path).name, Status(f_status), f_reason, Override(override) if override else None,
        boxes_from(detections), Status(r_status), r_reason, tuple(json.loads(window)) if window else None,
        Status(c_status), c_reason, caption, model, key,
        bool(edited), bool(review), json.loads(checks) if checks else [], caption_doubt or 0.0,
        tuple(json.loads(sent_back or "[]")),
    )  # fmt: skip


_CHUNK = 500  # ids per IN (...): well under SQLite's limit on parameters


def _chunks(ids: Sequence[int]) -> list[list[int]]:
    return [list(ids[start : start + _CHUNK]) for start in range(0, len(ids), _CHUNK)]
