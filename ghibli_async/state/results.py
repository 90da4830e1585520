"""Results of the resize and caption stages per image: output numbers, resize and caption status
with a reason, the caption with the model and key#N that wrote it, and what export reads."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field

from ghibli_async.facts import Box, Finding
from ghibli_async.state.database import NOW, Database
from ghibli_async.state.filtering import boxes_from
from ghibli_async.statuses import TOO_SMALL, Status

_PENDING, _DONE, _KEPT, _REJECTED = Status.PENDING.sql, Status.DONE.sql, Status.KEPT.sql, Status.REJECTED.sql
_FAILED, _B = Status.FAILED.sql, Status.BLOCKED.sql
# Still wants a caption from the service: not written by hand (that makes it `done`), not rejected.
_WANTS_CAPTION = f"""resize_status = {_DONE} AND duplicate_of IS NULL AND filter_status != {_REJECTED}
    AND (caption_status IN ({_PENDING}, {_FAILED}) OR (caption_status = {_B} AND caption_refused_by IS NOT NULL))"""
_EXPORTABLE = f"""resize_status = {_DONE} AND caption_status = {_DONE} AND duplicate_of IS NULL
    AND needs_review = 0 AND filter_status != {_REJECTED}"""


# (number, source, model, caption, edited, the checks that fired as JSON, perceptual hash)
CheckedCaption = tuple[int, str, str | None, str, bool, str | None, str | None]


@dataclass(frozen=True)
class ResizeJob:
    image_id: int
    number: int
    source_path: str
    upscale: bool = False  # kept by hand: a frame below the size is upscaled, not rejected
    boxes: dict[str, list[Box]] = field(default_factory=dict)  # detector key -> its stored boxes


@dataclass(frozen=True)
class CaptionJob:
    image_id: int
    number: int
    refused_by: frozenset[str] = frozenset()  # models that blocked it before
    blocked: bool = False
    sent_back: frozenset[str] = frozenset()  # models whose caption of it a person sent back


@dataclass(frozen=True)
class CaptionedImage:
    """One exported row, with what a lost state needs to be rebuilt from the export (`restore`)."""

    number: int
    caption: str
    source_path: str
    content_hash: str | None
    model: str | None
    key: str | None
    edited: bool


class ResultStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # --- resize -----------------------------------------------------------------------------

    def assign_output_numbers(self, *, require_kept: bool) -> int:
        """Give every image that may enter the resize stage its output number, once: the next free
        numbers, in natural order of the source paths. Returns how many were numbered."""
        eligible = f"filter_status = {_KEPT}" if require_kept else f"filter_status IN ({_PENDING}, {_KEPT})"
        with self._db.transaction() as db:
            first = db.execute("SELECT COALESCE(MAX(number), 0) + 1 FROM images").fetchone()[0]
            ids = db.execute(
                f"""SELECT id FROM images WHERE number IS NULL AND duplicate_of IS NULL
                      AND resize_status = {_PENDING} AND {eligible}
                    ORDER BY sort_key, source_path"""
            ).fetchall()
            db.executemany(
                "UPDATE images SET number = ? WHERE id = ?",
                ((first + offset, image_id) for offset, (image_id,) in enumerate(ids)),
            )
        return len(ids)

    def resize_jobs(self, *, limit: int | None = None) -> list[ResizeJob]:
        rows = self._db.execute(
            f"""SELECT id, number, source_path, filter_override = 'keep', detections FROM images
               WHERE resize_status = {_PENDING} AND number IS NOT NULL AND duplicate_of IS NULL
                 AND filter_status != {_REJECTED}
               ORDER BY number LIMIT ?""",
            (-1 if limit is None else limit,),
        )
        return [
            ResizeJob(image_id, number, path, bool(keep), boxes_from(detections))
            for image_id, number, path, keep, detections in rows
        ]

    def requeue_other_geometry(self, signature: str) -> int:
        """Frames resized with another geometry (`fit`, `size`) go back to the queue; their captions
        stay. Frames resized before the geometry was recorded are taken to have this one."""
        with self._db.transaction() as db:
            db.execute(
                f"UPDATE images SET resize_signature = ? WHERE resize_status = {_DONE} AND resize_signature IS NULL",
                (signature,),
            )
            return db.execute(
                f"""UPDATE images SET resize_status = {_PENDING}, updated_at = {NOW}
                    WHERE resize_status = {_DONE} AND resize_signature != ?""",
                (signature,),
            ).rowcount

    def requeue_too_small(self, takes: Callable[[tuple[int, int]], bool]) -> int:
        """Frames rejected as too small that the resize would take now (`takes` their source size:
        `allow_upscale` turned on, a smaller size) or that were kept by hand go back to the queue."""
        rows = self._db.execute(
            f"""SELECT id, width, height, filter_override = 'keep' FROM images
                WHERE resize_status = {_REJECTED} AND resize_reason = '{TOO_SMALL}'"""
        ).fetchall()
        again = [(image_id,) for image_id, width, height, keep in rows if keep or takes((width, height))]
        with self._db.transaction() as db:
            db.executemany(
                f"UPDATE images SET resize_status = {_PENDING}, resize_reason = NULL, updated_at = {NOW} WHERE id = ?",
                again,
            )
        return len(again)

    def record_resize(
        self,
        image_id: int,
        status: Status,
        *,
        reason: str | None = None,
        size: tuple[int, int] | None = None,
        signature: str | None = None,
        window: tuple[float, float, float, float] | None = None,
        written: tuple[int, int] | None = None,
    ) -> None:
        width, height = size or (None, None)
        written_width, written_height = written or (None, None)
        shown = json.dumps([round(value, 5) for value in window]) if window else None
        with self._db.transaction() as db:
            db.execute(
                f"""UPDATE images SET resize_status = ?, resize_reason = ?, width = ?, height = ?,
                       resize_signature = ?, resize_window = ?, resized_width = ?, resized_height = ?,
                       updated_at = {NOW} WHERE id = ?""",
                (
                    Status(status).value,
                    reason,
                    width,
                    height,
                    signature,
                    shown,
                    written_width,
                    written_height,
                    image_id,
                ),
            )

    def resized_sizes(self) -> Counter[tuple[int, int]]:
        """How many resized frames each written size (each bucket) has."""
        rows = self._db.execute(
            f"""SELECT resized_width, resized_height, COUNT(*) FROM images
                WHERE resize_status = {_DONE} AND resized_width IS NOT NULL GROUP BY 1, 2"""
        )
        return Counter({(width, height): count for width, height, count in rows})

    def resized_numbers(self) -> set[int]:
        rows = self._db.execute(f"SELECT number FROM images WHERE resize_status = {_DONE}")
        return {number for (number,) in rows}

    def forget_resized(self, numbers: Sequence[int]) -> None:
        """Send images whose resized file has vanished from the work dir back to the resize stage."""
        with self._db.transaction() as db:
            db.executemany(
                f"UPDATE images SET resize_status = {_PENDING}, updated_at = {NOW} WHERE number = ?",
                ((number,) for number in numbers),
            )

    # --- caption ----------------------------------------------------------------------------

    def caption_jobs(self, models: Collection[str], *, limit: int | None = None) -> list[CaptionJob]:
        """Resized images without a caption: pending and failed ones, and blocked ones that one of
        `models` (the configured ones) has not refused yet."""
        rows = self._db.execute(
            f"""SELECT id, number, caption_refused_by, caption_status = {_B}, caption_sent_back
                FROM images WHERE {_WANTS_CAPTION} ORDER BY number"""
        )
        jobs = []
        for image_id, number, refused, blocked, sent_back in rows:
            refused_by = frozenset(json.loads(refused)) if refused else frozenset()
            if blocked and not set(models) - refused_by:
                continue  # every configured model refused it: blocked it stays
            jobs.append(
                CaptionJob(image_id, number, refused_by, bool(blocked), frozenset(json.loads(sent_back or "[]")))
            )
            if limit is not None and len(jobs) >= limit:
                break
        return jobs

    def restore_exported(self, rows: Sequence[CaptionedImage]) -> int:
        """Rows of an earlier export, for frames already registered by content hash: kept (as the
        user's keep: they were in the dataset), resized and captioned as they were. Returns how many
        rows found their frame."""
        with self._db.transaction() as db:
            return sum(
                db.execute(
                    f"""UPDATE images SET number = ?, filter_status = {_KEPT}, filter_reason = 'override',
                           filter_override = 'keep', resize_status = {_DONE}, caption_status = {_DONE},
                           caption = ?, caption_model = ?, caption_key = ?, caption_edited = ?, updated_at = {NOW}
                       WHERE content_hash = ? AND duplicate_of IS NULL""",
                    (row.number, row.caption, row.model, row.key, int(row.edited), row.content_hash),
                ).rowcount
                for row in rows
            )

    def still_wants_caption(self, number: int) -> bool:
        """Asked right before a request goes out: the review page may have captioned or rejected
        the frame since the run listed it, and a request for it would be paid for nothing."""
        return (
            self._db.execute(f"SELECT 1 FROM images WHERE number = ? AND {_WANTS_CAPTION}", (number,)).fetchone()
            is not None
        )

    def record_refusals(self, number: int, refused_by: Collection[str]) -> None:
        """Models that refused the image for safety; it stays pending for a model it has not tried."""
        with self._db.transaction() as db:
            db.execute(
                f"""UPDATE images SET caption_refused_by = ?, caption_status = {_PENDING}, updated_at = {NOW}
                    WHERE number = ?""",
                (json.dumps(sorted(refused_by)), number),
            )

    def record_caption(
        self,
        number: int,
        caption: str,
        *,
        model: str,
        key_label: str,
        attempts: int = 1,
        tokens: int | None = None,
        needs_review: bool = False,
        findings: Sequence[Finding] = (),
        doubt: float = 0.0,
    ) -> None:
        """A caption from the service, with the checks that fired on it and its doubt; one written by
        hand on the review page meanwhile stays."""
        checks = json.dumps([asdict(finding) for finding in findings], ensure_ascii=False) if findings else None
        with self._db.transaction() as db:
            db.execute(
                f"""UPDATE images SET caption_status = {_DONE}, caption_reason = NULL, caption = ?,
                       caption_model = ?, caption_key = ?, caption_attempts = ?, caption_tokens = ?,
                       needs_review = ?, caption_checks = ?, caption_doubt = ?, caption_verified_by = NULL,
                       updated_at = {NOW}
                    WHERE number = ? AND caption_edited = 0""",
                (caption, model, key_label, attempts, tokens, int(needs_review), checks, doubt, number),
            )

    def record_caption_failure(
        self, number: int, status: Status, reason: str, *, attempts: int, refused_by: Collection[str] = ()
    ) -> None:
        """BLOCKED (safety, with the models that refused) or FAILED (errors; a rerun tries again)."""
        refused = json.dumps(sorted(refused_by)) if refused_by else None
        with self._db.transaction() as db:
            db.execute(
                f"""UPDATE images SET caption_status = ?, caption_reason = ?, caption_attempts = ?,
                       caption_refused_by = COALESCE(?, caption_refused_by), updated_at = {NOW} WHERE number = ?""",
                (Status(status).value, reason, attempts, refused, number),
            )

    def captions_checked(self) -> list[CheckedCaption]:
        """Every caption not marked a duplicate, in order."""
        rows = self._db.execute(
            f"""SELECT number, source_path, caption_model, caption, caption_edited, caption_checks, phash
                FROM images WHERE caption_status = {_DONE} AND caption IS NOT NULL AND duplicate_of IS NULL
                ORDER BY number"""
        )
        return [
            (n, source, model, text, bool(edited), checks, phash)
            for n, source, model, text, edited, checks, phash in rows
        ]

    def update_caption_checks(self, checks: Mapping[int, tuple[str | None, float]]) -> None:
        """New checks (JSON) and doubt for these frames' captions (the dataset-wide checks)."""
        with self._db.transaction() as db:
            db.executemany(
                "UPDATE images SET caption_checks = ?, caption_doubt = ? WHERE number = ?",
                ((found, doubt, number) for number, (found, doubt) in checks.items()),
            )

    def captions_to_verify(self) -> list[tuple[int, str, str, str | None]]:
        """Captions from a model that no model has judged yet (`caption.verify`), without those a
        person wrote or will review anyway: (number, caption, model, checks as JSON)."""
        rows = self._db.execute(
            f"""SELECT number, caption, caption_model, caption_checks FROM images
                WHERE caption_status = {_DONE} AND caption_edited = 0 AND needs_review = 0
                AND caption_model IS NOT NULL AND caption_verified_by IS NULL AND duplicate_of IS NULL
                ORDER BY number"""
        )
        return rows.fetchall()

    def record_verdict(
        self, number: int, caption: str, verifier: str, checks: str | None, doubt: float, needs_review: bool
    ) -> None:
        """A verifier's judgement of `caption` (the checks with its disagreement, if any); nothing
        when the caption changed meanwhile."""
        with self._db.transaction() as db:
            db.execute(
                f"""UPDATE images SET caption_verified_by = ?, caption_checks = ?, caption_doubt = ?,
                       needs_review = MAX(needs_review, ?), updated_at = {NOW}
                    WHERE number = ? AND caption = ? AND caption_edited = 0""",
                (verifier, checks, doubt, int(needs_review), number, caption),
            )

    def caption_pending_count(self) -> int:
        return self._db.execute(
            f"""SELECT COUNT(*) FROM images WHERE resize_status = {_DONE} AND duplicate_of IS NULL
               AND caption_status IN ({_PENDING}, {_FAILED})"""
        ).fetchone()[0]

    # --- export -----------------------------------------------------------------------------

    def captioned_images(self) -> Iterator[CaptionedImage]:
        """Images ready for the dataset: resized and captioned, in output order, one row at a time
        (an export of 100,000 holds one caption in memory, not all of them)."""
        rows = self._db.execute(
            "SELECT number, caption, source_path, content_hash, caption_model, caption_key, caption_edited"
            f" FROM images WHERE {_EXPORTABLE} ORDER BY number"
        )
        return (
            CaptionedImage(n, text, source, digest, model, key, bool(edited))
            for n, text, source, digest, model, key, edited in rows
        )

    def captioned_count(self) -> int:
        return self._db.execute(f"SELECT COUNT(*) FROM images WHERE {_EXPORTABLE}").fetchone()[0]
