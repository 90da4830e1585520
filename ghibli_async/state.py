"""The SQLite state store: the one place with SQL, and the only thing that carries progress.

Every image is one row; each stage reads the rows that need it and writes its result back in one
short transaction, so a crash at any moment loses at most the work in flight (WAL journal).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ghibli_async.detect import Box
from ghibli_async.errors import UserError
from ghibli_async.filter_rules import Decision, FrameFacts
from ghibli_async.imaging import FrameLook

_NOW = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"

# Each entry upgrades the schema by one version; never edit a released entry, append a new one.
_MIGRATIONS: tuple[str, ...] = (
    f"""
    CREATE TABLE images (
        id              INTEGER PRIMARY KEY,
        source_path     TEXT NOT NULL UNIQUE,
        sort_key        TEXT NOT NULL,
        content_hash    TEXT,
        file_size       INTEGER NOT NULL,
        mtime_ns        INTEGER NOT NULL,
        duplicate_of    INTEGER REFERENCES images(id),
        number          INTEGER UNIQUE,
        width           INTEGER,
        height          INTEGER,
        filter_status   TEXT NOT NULL DEFAULT 'pending',
        filter_reason   TEXT,
        filter_override TEXT,
        brightness      REAL,
        contrast        REAL,
        sharpness       REAL,
        phash           TEXT,
        detections      TEXT,
        resize_status   TEXT NOT NULL DEFAULT 'pending',
        resize_reason   TEXT,
        caption_status  TEXT NOT NULL DEFAULT 'pending',
        caption_reason  TEXT,
        caption         TEXT,
        caption_model   TEXT,
        caption_key     TEXT,
        caption_edited  INTEGER NOT NULL DEFAULT 0,
        caption_attempts INTEGER NOT NULL DEFAULT 0,
        caption_tokens  INTEGER,
        needs_review    INTEGER NOT NULL DEFAULT 0,
        created_at      TEXT NOT NULL DEFAULT ({_NOW}),
        updated_at      TEXT NOT NULL DEFAULT ({_NOW})
    );
    CREATE UNIQUE INDEX images_original_content ON images(content_hash)
        WHERE duplicate_of IS NULL AND content_hash IS NOT NULL;
    CREATE INDEX images_sort_key ON images(sort_key);
    CREATE INDEX images_resize_status ON images(resize_status, number);
    CREATE INDEX images_caption_status ON images(caption_status, number);

    -- Requests and tokens spent per quota bucket and quota day (Pacific time), for the caption engine.
    CREATE TABLE quota_usage (
        project     TEXT NOT NULL,
        model       TEXT NOT NULL,
        quota_day   TEXT NOT NULL,
        requests    INTEGER NOT NULL DEFAULT 0,
        tokens      INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (project, model, quota_day)
    );

    -- Videos in the input folder: extracted completely (done), or failed with a reason.
    CREATE TABLE videos (
        path        TEXT PRIMARY KEY,
        status      TEXT NOT NULL,
        frames      INTEGER NOT NULL DEFAULT 0,
        reason      TEXT,
        updated_at  TEXT NOT NULL DEFAULT ({_NOW})
    );

    -- What the last run learned about buckets and keys that `status` should show: a cooldown
    -- (until, UTC), a retired model (project '*'), a retired key (model '*', project = key#N).
    CREATE TABLE bucket_events (
        project     TEXT NOT NULL,
        model       TEXT NOT NULL,
        kind        TEXT NOT NULL,
        until       TEXT,
        reason      TEXT,
        at          TEXT NOT NULL DEFAULT ({_NOW}),
        PRIMARY KEY (project, model, kind)
    );

    -- Limits the server reported in 429 answers (kind: rpm, rpd, tpm); they win over the config.
    CREATE TABLE learned_limits (
        project     TEXT NOT NULL,
        model       TEXT NOT NULL,
        kind        TEXT NOT NULL,
        value       INTEGER NOT NULL,
        learned_at  TEXT NOT NULL DEFAULT ({_NOW}),
        PRIMARY KEY (project, model, kind)
    );
    """,
)
SCHEMA_VERSION = len(_MIGRATIONS)


@dataclass(frozen=True)
class SourceFile:
    """A file found in the input folder, as the scan stage saw it."""

    path: str
    sort_key: str
    size: int
    mtime_ns: int
    content_hash: str | None


@dataclass(frozen=True)
class KnownSource:
    image_id: int
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class FilterJob:
    image_id: int
    source_path: str
    detectors: list[str]  # the detectors that still have to look at it


@dataclass(frozen=True)
class FilterRow:
    source_path: str
    status: str
    reason: str | None
    override: str | None
    boxes: dict[str, list[Box]]
    number: int | None


# The review page's tabs, as conditions on an image row.
REVIEW_TABS = {
    "kept": "filter_status IN ('kept', 'pending') AND resize_status IN ('pending', 'done')"
    " AND caption_status != 'blocked' AND needs_review = 0",
    "rejected": "filter_status = 'rejected' OR resize_status = 'rejected'",
    "blocked": "caption_status = 'blocked'",
    "review": "needs_review = 1",
    "failed": "filter_status = 'failed' OR resize_status = 'failed' OR caption_status = 'failed'",
}
_REVIEW_COLUMNS = (
    "id, number, source_path, filter_status, filter_reason, filter_override, detections, resize_status,"
    " caption_status, caption_reason, caption, caption_model, caption_key, caption_edited, needs_review"
)


@dataclass(frozen=True)
class ReviewItem:
    """One image as the review page shows it (the source file's name only, never its path)."""

    image_id: int
    number: int | None
    name: str
    filter_status: str
    filter_reason: str | None
    override: str | None
    boxes: dict[str, list[Box]]
    resize_status: str
    caption_status: str
    caption_reason: str | None
    caption: str | None
    model: str | None
    key: str | None
    edited: bool
    needs_review: bool


@dataclass(frozen=True)
class ResizeJob:
    image_id: int
    number: int
    source_path: str


@dataclass(frozen=True)
class CaptionJob:
    image_id: int
    number: int


@dataclass(frozen=True)
class CaptionedImage:
    number: int
    caption: str


@dataclass(frozen=True)
class Problem:
    """An image a stage could not use, for the summary and `status`."""

    source_path: str
    stage: str
    status: str
    reason: str


@dataclass(frozen=True)
class Counts:
    """How many images are in each status, per stage (duplicates not included)."""

    sources: int
    duplicates: int
    filter: dict[str, int]
    resize: dict[str, int]
    caption: dict[str, int]
    rejected_by_reason: dict[str, int]


class StateStore:
    """Progress of every image; open once per run with `StateStore.open`."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._db = connection

    @classmethod
    def open(cls, path: Path, *, readonly: bool = False) -> StateStore:
        """Open (and create or migrate, unless read-only) the state database at `path`."""
        try:
            if readonly:
                db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(path, isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=10000")
            db.execute("PRAGMA foreign_keys=ON")
            store = cls(db)
            store._migrate(readonly=readonly)
        except sqlite3.DatabaseError as exc:
            raise UserError(f"{path}: cannot open the state database ({exc}); is it a ghibli_async work dir?") from None
        return store

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _migrate(self, *, readonly: bool) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise UserError(
                f"the state database is schema v{version}, newer than this ghibli_async (v{SCHEMA_VERSION}): upgrade it"
            )
        if version == SCHEMA_VERSION:
            return
        if readonly:
            raise UserError(
                f"the state database is schema v{version}, older than this ghibli_async (v{SCHEMA_VERSION}): "
                "run the pipeline once to upgrade it"
            )
        for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
            # executescript commits on its own, so the version bump goes inside the script.
            self._db.executescript(f"BEGIN IMMEDIATE; {script}; PRAGMA user_version = {number}; COMMIT;")

    @property
    def schema_version(self) -> int:
        return self._db.execute("PRAGMA user_version").fetchone()[0]

    # --- scan -------------------------------------------------------------------------------

    def known_sources(self) -> dict[str, KnownSource]:
        rows = self._db.execute("SELECT source_path, id, file_size, mtime_ns FROM images")
        return {path: KnownSource(image_id, size, mtime) for path, image_id, size, mtime in rows}

    def register_sources(self, files: Sequence[SourceFile]) -> int:
        """Add new files in one transaction; a file whose content is already known becomes a
        duplicate of the first one (in natural order), so it is processed once. Returns duplicates."""
        duplicates = 0
        with self._transaction() as db:
            originals = self._originals_among(db, [file.content_hash for file in files if file.content_hash])
            rows = []
            next_id = db.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM images").fetchone()[0]
            for file in sorted(files, key=lambda f: (f.sort_key, f.path)):
                original = originals.get(file.content_hash) if file.content_hash else None
                if original is None and file.content_hash:
                    originals[file.content_hash] = next_id
                duplicates += original is not None
                rows.append((next_id, file.path, file.sort_key, file.content_hash, file.size, file.mtime_ns, original))
                next_id += 1
            db.executemany(
                "INSERT INTO images (id, source_path, sort_key, content_hash, file_size, mtime_ns, duplicate_of)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        return duplicates

    def replace_changed_source(self, image_id: int, file: SourceFile) -> None:
        """A known path now holds other bytes: keep its number, redo every stage for it."""
        with self._transaction() as db:
            original = self._originals_among(db, [file.content_hash]).get(file.content_hash)
            duplicate_of = original if original != image_id else None
            db.execute(
                f"""UPDATE images SET content_hash = ?, file_size = ?, mtime_ns = ?, duplicate_of = ?,
                       width = NULL, height = NULL, brightness = NULL, contrast = NULL, sharpness = NULL,
                       phash = NULL, detections = NULL,
                       filter_status = 'pending', filter_reason = NULL,
                       resize_status = 'pending', resize_reason = NULL,
                       caption_status = 'pending', caption_reason = NULL,
                       caption = NULL, caption_model = NULL, caption_key = NULL, updated_at = {_NOW}
                   WHERE id = ?""",
                (file.content_hash, file.size, file.mtime_ns, duplicate_of, image_id),
            )

    def touch_source(self, image_id: int, size: int, mtime_ns: int) -> None:
        """Same bytes, new timestamp (a copy or a `touch`): remember it so it is not hashed again."""
        with self._transaction() as db:
            db.execute("UPDATE images SET file_size = ?, mtime_ns = ? WHERE id = ?", (size, mtime_ns, image_id))

    def content_hash_of(self, image_id: int) -> str | None:
        return self._db.execute("SELECT content_hash FROM images WHERE id = ?", (image_id,)).fetchone()[0]

    @staticmethod
    def _originals_among(db: sqlite3.Connection, hashes: Sequence[str | None]) -> dict[str, int]:
        """The first image registered with each of these contents, by content hash."""
        found: dict[str, int] = {}
        wanted = [h for h in hashes if h]
        for start in range(0, len(wanted), 5000):  # stay under SQLite's bound-parameter limit
            chunk = wanted[start : start + 5000]
            rows = db.execute(
                f"SELECT content_hash, id FROM images WHERE duplicate_of IS NULL"
                f" AND content_hash IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            found.update(rows.fetchall())
        return found

    # --- extract ----------------------------------------------------------------------------

    def video_status(self, path: str) -> str | None:
        row = self._db.execute("SELECT status FROM videos WHERE path = ?", (path,)).fetchone()
        return row[0] if row else None

    def record_video(self, path: str, status: str, *, frames: int, reason: str | None = None) -> None:
        with self._transaction() as db:
            db.execute(
                f"""INSERT INTO videos (path, status, frames, reason) VALUES (?, ?, ?, ?)
                   ON CONFLICT (path) DO UPDATE SET status = excluded.status, frames = excluded.frames,
                       reason = excluded.reason, updated_at = {_NOW}""",
                (path, status, frames, reason),
            )

    def videos(self) -> list[tuple[str, str, int, str | None]]:
        """(path, status, frames, reason) of every video seen."""
        return self._db.execute("SELECT path, status, frames, reason FROM videos ORDER BY path").fetchall()

    # --- filter -----------------------------------------------------------------------------

    def filter_jobs(self, signatures: dict[str, str], *, limit: int | None = None) -> list[FilterJob]:
        """Frames never measured, or without current boxes from one of the configured detectors."""
        rows = self._db.execute(
            """SELECT id, source_path, phash, detections FROM images
               WHERE duplicate_of IS NULL AND filter_status != 'failed' ORDER BY sort_key, source_path"""
        )
        jobs = []
        for image_id, path, phash, detections in rows:
            stored = json.loads(detections) if detections else {}
            missing = [name for name, sig in signatures.items() if stored.get(name, {}).get("signature") != sig]
            if phash is None or missing:
                jobs.append(FilterJob(image_id, path, missing))
                if limit is not None and len(jobs) >= limit:
                    break
        return jobs

    def record_look(
        self, image_id: int, look: FrameLook, boxes: dict[str, list[Box]], signatures: dict[str, str]
    ) -> None:
        """A frame's measurements and new detector boxes (merged into those of other detectors)."""
        with self._transaction() as db:
            (stored,) = db.execute("SELECT detections FROM images WHERE id = ?", (image_id,)).fetchone()
            detections = json.loads(stored) if stored else {}
            for name, found in boxes.items():
                detections[name] = {"signature": signatures[name], "boxes": [_box_row(box) for box in found]}
            db.execute(
                f"""UPDATE images SET brightness = ?, contrast = ?, sharpness = ?, phash = ?, detections = ?,
                       updated_at = {_NOW} WHERE id = ?""",
                (look.brightness, look.contrast, look.sharpness, look.phash, json.dumps(detections), image_id),
            )

    def record_filter_failure(self, image_id: int, reason: str) -> None:
        with self._transaction() as db:
            db.execute(
                f"UPDATE images SET filter_status = 'failed', filter_reason = ?, updated_at = {_NOW} WHERE id = ?",
                (reason, image_id),
            )

    def filter_facts(self) -> list[FrameFacts]:
        rows = self._db.execute(
            """SELECT id, brightness, contrast, sharpness, phash, detections, filter_override, number
               FROM images WHERE duplicate_of IS NULL AND phash IS NOT NULL ORDER BY id"""
        )
        return [
            FrameFacts(image_id, bright, contrast, sharp, phash, _boxes_from(detections), override, number is not None)
            for image_id, bright, contrast, sharp, phash, detections, override, number in rows
        ]

    def apply_filter_decisions(self, decisions: dict[int, Decision]) -> int:
        """Store the decisions that changed; returns how many did."""
        current = {
            image_id: (status, reason)
            for image_id, status, reason in self._db.execute(
                "SELECT id, filter_status, filter_reason FROM images WHERE duplicate_of IS NULL"
            )
        }
        changed = [
            (d.status, d.reason, image_id)
            for image_id, d in decisions.items()
            if current.get(image_id) != (d.status, d.reason)
        ]
        with self._transaction() as db:
            db.executemany(
                f"UPDATE images SET filter_status = ?, filter_reason = ?, updated_at = {_NOW} WHERE id = ?", changed
            )
        return len(changed)

    def set_filter_override(self, source_paths: Sequence[str], override: str | None) -> list[str]:
        """The user's keep/reject for these files (None clears it); returns the paths not known."""
        unknown = []
        with self._transaction() as db:
            for path in source_paths:
                status = {"keep": "kept", "reject": "rejected"}.get(override or "", "pending")
                reason = "override" if override else None
                cursor = db.execute(
                    f"""UPDATE images SET filter_override = ?, filter_status = ?, filter_reason = ?,
                           updated_at = {_NOW} WHERE source_path = ? AND duplicate_of IS NULL""",
                    (override, status, reason, path),
                )
                if cursor.rowcount == 0:
                    unknown.append(path)
        return unknown

    # --- review page ------------------------------------------------------------------------

    def review_page(self, tab: str, *, offset: int, limit: int) -> tuple[int, list[ReviewItem]]:
        """One page of a review tab, in natural order, and the tab's total."""
        where = f"duplicate_of IS NULL AND ({REVIEW_TABS[tab]})"
        (total,) = self._db.execute(f"SELECT COUNT(*) FROM images WHERE {where}").fetchone()
        rows = self._db.execute(
            f"SELECT {_REVIEW_COLUMNS} FROM images WHERE {where} ORDER BY sort_key, source_path LIMIT ? OFFSET ?",
            (limit, offset),
        )
        return total, [_review_item(row) for row in rows]

    def review_item(self, image_id: int) -> ReviewItem | None:
        row = self._db.execute(
            f"SELECT {_REVIEW_COLUMNS} FROM images WHERE id = ? AND duplicate_of IS NULL", (image_id,)
        ).fetchone()
        return _review_item(row) if row else None

    def source_of(self, image_id: int) -> str | None:
        row = self._db.execute("SELECT source_path FROM images WHERE id = ?", (image_id,)).fetchone()
        return row[0] if row else None

    def edit_caption(self, image_id: int, caption: str) -> None:
        """A caption written by hand: accepted as is, and never replaced by the caption stage."""
        with self._transaction() as db:
            db.execute(
                f"""UPDATE images SET caption = ?, caption_status = 'done', caption_reason = NULL,
                       caption_edited = 1, needs_review = 0, updated_at = {_NOW} WHERE id = ?""",
                (caption, image_id),
            )

    def captions_with_models(self) -> list[tuple[str, str | None]]:
        rows = self._db.execute(
            "SELECT caption, caption_model FROM images WHERE caption IS NOT NULL AND duplicate_of IS NULL"
        )
        return rows.fetchall()

    def filter_report(self) -> list[FilterRow]:
        rows = self._db.execute(
            """SELECT source_path, filter_status, filter_reason, filter_override, detections, number
               FROM images WHERE duplicate_of IS NULL ORDER BY sort_key, source_path"""
        )
        return [
            FilterRow(path, status, reason, override, _boxes_from(detections), number)
            for path, status, reason, override, detections, number in rows
        ]

    # --- resize -----------------------------------------------------------------------------

    def assign_output_numbers(self, *, require_kept: bool) -> int:
        """Give every image that may enter the resize stage its output number, once: the next free
        numbers, in natural order of the source paths. Returns how many were numbered."""
        eligible = "filter_status = 'kept'" if require_kept else "filter_status IN ('pending', 'kept')"
        with self._transaction() as db:
            first = db.execute("SELECT COALESCE(MAX(number), 0) + 1 FROM images").fetchone()[0]
            ids = db.execute(
                f"""SELECT id FROM images WHERE number IS NULL AND duplicate_of IS NULL
                      AND resize_status = 'pending' AND {eligible}
                    ORDER BY sort_key, source_path"""
            ).fetchall()
            db.executemany(
                "UPDATE images SET number = ? WHERE id = ?",
                ((first + offset, image_id) for offset, (image_id,) in enumerate(ids)),
            )
        return len(ids)

    def resize_jobs(self, *, limit: int | None = None) -> list[ResizeJob]:
        rows = self._db.execute(
            """SELECT id, number, source_path FROM images
               WHERE resize_status = 'pending' AND number IS NOT NULL AND duplicate_of IS NULL
                 AND filter_status != 'rejected'
               ORDER BY number LIMIT ?""",
            (-1 if limit is None else limit,),
        )
        return [ResizeJob(*row) for row in rows]

    def record_resize(
        self, image_id: int, status: str, *, reason: str | None = None, size: tuple[int, int] | None = None
    ) -> None:
        width, height = size or (None, None)
        with self._transaction() as db:
            db.execute(
                f"""UPDATE images SET resize_status = ?, resize_reason = ?, width = ?, height = ?,
                       updated_at = {_NOW} WHERE id = ?""",
                (status, reason, width, height, image_id),
            )

    def resized_numbers(self) -> set[int]:
        rows = self._db.execute("SELECT number FROM images WHERE resize_status = 'done'")
        return {number for (number,) in rows}

    def forget_resized(self, numbers: Sequence[int]) -> None:
        """Send images whose resized file has vanished from the work dir back to the resize stage."""
        with self._transaction() as db:
            db.executemany(
                f"UPDATE images SET resize_status = 'pending', updated_at = {_NOW} WHERE number = ?",
                ((number,) for number in numbers),
            )

    # --- caption ----------------------------------------------------------------------------

    def caption_jobs(self, *, limit: int | None = None) -> list[CaptionJob]:
        """Resized images without a caption; failed ones are tried again, blocked ones are not."""
        rows = self._db.execute(
            """SELECT id, number FROM images
               WHERE resize_status = 'done' AND caption_status IN ('pending', 'failed') AND duplicate_of IS NULL
                 AND filter_status != 'rejected'
               ORDER BY number LIMIT ?""",
            (-1 if limit is None else limit,),
        )
        return [CaptionJob(*row) for row in rows]

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
    ) -> None:
        with self._transaction() as db:
            db.execute(
                f"""UPDATE images SET caption_status = 'done', caption_reason = NULL, caption = ?,
                       caption_model = ?, caption_key = ?, caption_attempts = ?, caption_tokens = ?,
                       needs_review = ?, updated_at = {_NOW} WHERE number = ?""",
                (caption, model, key_label, attempts, tokens, int(needs_review), number),
            )

    def record_caption_failure(self, number: int, status: str, reason: str, *, attempts: int) -> None:
        """`blocked` (safety) or `failed` (errors; a rerun tries again)."""
        with self._transaction() as db:
            db.execute(
                f"""UPDATE images SET caption_status = ?, caption_reason = ?, caption_attempts = ?,
                       updated_at = {_NOW} WHERE number = ?""",
                (status, reason, attempts, number),
            )

    def caption_pending_count(self) -> int:
        return self._db.execute(
            """SELECT COUNT(*) FROM images WHERE resize_status = 'done' AND duplicate_of IS NULL
               AND caption_status IN ('pending', 'failed')"""
        ).fetchone()[0]

    # --- quota books (per project and model, per Pacific quota day) ----------------------------

    def count_request(self, project: str, model: str, day: str, *, tokens: int = 0, requests: int = 1) -> None:
        with self._transaction() as db:
            db.execute(
                """INSERT INTO quota_usage (project, model, quota_day, requests, tokens) VALUES (?, ?, ?, ?, ?)
                   ON CONFLICT (project, model, quota_day)
                   DO UPDATE SET requests = requests + excluded.requests, tokens = tokens + excluded.tokens""",
                (project, model, day, requests, tokens),
            )

    def mark_day_spent(self, project: str, model: str, day: str, daily_limit: int) -> None:
        """The server said the day's quota is gone: remember it, so a restart today does not ask again."""
        with self._transaction() as db:
            db.execute(
                """INSERT INTO quota_usage (project, model, quota_day, requests) VALUES (?, ?, ?, ?)
                   ON CONFLICT (project, model, quota_day) DO UPDATE SET requests = MAX(requests, excluded.requests)""",
                (project, model, day, daily_limit),
            )

    def quota_usage(self, day: str) -> dict[tuple[str, str], tuple[int, int]]:
        """(project, model) -> (requests, tokens) on that quota day."""
        rows = self._db.execute("SELECT project, model, requests, tokens FROM quota_usage WHERE quota_day = ?", (day,))
        return {(project, model): (requests, tokens) for project, model, requests, tokens in rows}

    def note_bucket_event(
        self, project: str, model: str, kind: str, *, until: str | None = None, reason: str | None = None
    ) -> None:
        with self._transaction() as db:
            db.execute(
                f"""INSERT INTO bucket_events (project, model, kind, until, reason) VALUES (?, ?, ?, ?, ?)
                   ON CONFLICT (project, model, kind) DO UPDATE SET until = excluded.until,
                       reason = excluded.reason, at = {_NOW}""",
                (project, model, kind, until, reason),
            )

    def bucket_events(self) -> list[tuple[str, str, str, str | None, str | None, str]]:
        """(project, model, kind, until, reason, at), newest first."""
        return self._db.execute(
            "SELECT project, model, kind, until, reason, at FROM bucket_events ORDER BY at DESC"
        ).fetchall()

    def save_learned_limit(self, project: str, model: str, kind: str, value: int) -> None:
        with self._transaction() as db:
            db.execute(
                f"""INSERT INTO learned_limits (project, model, kind, value) VALUES (?, ?, ?, ?)
                   ON CONFLICT (project, model, kind) DO UPDATE SET value = excluded.value, learned_at = {_NOW}""",
                (project, model, kind, value),
            )

    def learned_limits(self) -> dict[tuple[str, str], dict[str, int]]:
        learned: dict[tuple[str, str], dict[str, int]] = {}
        for project, model, kind, value in self._db.execute("SELECT project, model, kind, value FROM learned_limits"):
            learned.setdefault((project, model), {})[kind] = value
        return learned

    # --- export -----------------------------------------------------------------------------

    def captioned_images(self) -> list[CaptionedImage]:
        """Images ready for the dataset: resized and captioned, in output order."""
        rows = self._db.execute(
            """SELECT number, caption FROM images
               WHERE resize_status = 'done' AND caption_status = 'done' AND duplicate_of IS NULL
                 AND needs_review = 0 AND filter_status != 'rejected'
               ORDER BY number"""
        )
        return [CaptionedImage(*row) for row in rows]

    # --- reporting --------------------------------------------------------------------------

    def counts(self) -> Counts:
        def by_status(column: str, where: str = "") -> dict[str, int]:
            rows = self._db.execute(
                f"SELECT {column}, COUNT(*) FROM images WHERE duplicate_of IS NULL {where} GROUP BY {column}"
            )
            return dict(rows.fetchall())

        total, duplicates = self._db.execute("SELECT COUNT(*), COUNT(duplicate_of) FROM images").fetchone()
        rejected = self._db.execute(
            """SELECT CASE WHEN filter_reason LIKE 'duplicate_of:%' THEN 'duplicate'
                           ELSE COALESCE(filter_reason, resize_reason, 'unknown') END, COUNT(*) FROM images
               WHERE duplicate_of IS NULL AND (filter_status = 'rejected' OR resize_status = 'rejected')
               GROUP BY 1"""
        )
        return Counts(
            sources=total,
            duplicates=duplicates,
            filter=by_status("filter_status"),
            resize=by_status("resize_status", "AND filter_status NOT IN ('rejected', 'failed')"),
            caption=by_status(
                "CASE WHEN needs_review = 1 THEN 'needs_review' ELSE caption_status END", "AND resize_status = 'done'"
            ),
            rejected_by_reason=dict(rejected.fetchall()),
        )

    def problems(self, *, limit: int = 50) -> list[Problem]:
        """Images that failed or were blocked, in natural order."""
        rows = self._db.execute(
            """SELECT source_path, 'filter', filter_status, COALESCE(filter_reason, '') FROM images
               WHERE filter_status = 'failed'
               UNION ALL
               SELECT source_path, 'resize', resize_status, COALESCE(resize_reason, '') FROM images
               WHERE resize_status = 'failed'
               UNION ALL
               SELECT source_path, 'caption', caption_status, COALESCE(caption_reason, '') FROM images
               WHERE caption_status IN ('failed', 'blocked')
               ORDER BY 1 LIMIT ?""",
            (limit,),
        )
        return [Problem(*row) for row in rows]


def _box_row(box: Box) -> list[float | str]:
    return [round(box.x1, 4), round(box.y1, 4), round(box.x2, 4), round(box.y2, 4), round(box.score, 4), box.label]


def _boxes_from(detections: str | None) -> dict[str, list[Box]]:
    stored = json.loads(detections) if detections else {}
    return {name: [Box(*row) for row in entry["boxes"]] for name, entry in stored.items()}


def _review_item(row: tuple) -> ReviewItem:
    image_id, number, path, f_status, f_reason, override, detections, r_status, *rest = row
    c_status, c_reason, caption, model, key, edited, review = rest
    return ReviewItem(
        image_id, number, Path(path).name, f_status, f_reason, override, _boxes_from(detections), r_status,
        c_status, c_reason, caption, model, key, bool(edited), bool(review),
    )  # fmt: skip
