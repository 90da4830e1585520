"""The one SQLite database behind every store: opening, schema migrations, short transactions.

Every image is one row of `images`; each stage reads the rows that need it and writes its result
back in one short transaction, so a crash at any moment loses at most the work in flight (WAL).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ghibli_async.errors import MachineError, StateDamaged, UserError

NOW = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
RESTORE_HINT = (
    "Nothing was changed: run `python -m ghibli_async restore` to rebuild it from the exported dataset "
    "(no caption is paid for again), or put back a copy of it"
)

# Each entry upgrades the schema by one version; never edit a released entry, append a new one.
MIGRATIONS: tuple[str, ...] = (
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
        created_at      TEXT NOT NULL DEFAULT ({NOW}),
        updated_at      TEXT NOT NULL DEFAULT ({NOW})
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
        updated_at  TEXT NOT NULL DEFAULT ({NOW})
    );

    -- What the last run learned about buckets and keys that `status` should show: a cooldown
    -- (until, UTC), a retired model (project '*'), a retired key (model '*', project = key#N).
    CREATE TABLE bucket_events (
        project     TEXT NOT NULL,
        model       TEXT NOT NULL,
        kind        TEXT NOT NULL,
        until       TEXT,
        reason      TEXT,
        at          TEXT NOT NULL DEFAULT ({NOW}),
        PRIMARY KEY (project, model, kind)
    );

    -- Limits the server reported in 429 answers (kind: rpm, rpd, tpm); they win over the config.
    CREATE TABLE learned_limits (
        project     TEXT NOT NULL,
        model       TEXT NOT NULL,
        kind        TEXT NOT NULL,
        value       INTEGER NOT NULL,
        learned_at  TEXT NOT NULL DEFAULT ({NOW}),
        PRIMARY KEY (project, model, kind)
    );
    """,
    f"""
    -- Requests the server served (an answer or a safety block), apart from those it refused:
    -- only these count against a daily limit in `status`.
    ALTER TABLE quota_usage ADD COLUMN accepted INTEGER NOT NULL DEFAULT 0;

    -- The models that refused an image for safety (JSON list): it is `blocked` only once enough
    -- distinct models did, and a model it has not tried takes it later.
    ALTER TABLE images ADD COLUMN caption_refused_by TEXT;

    -- Which key (by fingerprint, never the key) each key#N label meant, so that books kept under a
    -- label follow the key when .env is renumbered.
    CREATE TABLE key_fingerprints (
        label       TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL
    );

    -- When each bucket's recent requests came back (Unix time), so a restart starts inside the
    -- server's real one-minute window instead of an empty one.
    CREATE TABLE recent_answers (
        project     TEXT NOT NULL,
        model       TEXT NOT NULL,
        at          REAL NOT NULL
    );
    CREATE INDEX recent_answers_at ON recent_answers(at);

    -- One row per run: which stages were on, and how it ended (NULL: still running, or killed).
    CREATE TABLE runs (
        id          INTEGER PRIMARY KEY,
        started_at  TEXT NOT NULL DEFAULT ({NOW}),
        stages      TEXT NOT NULL,
        end_code    INTEGER
    );
    """,
    """
    -- What the running process is doing now, for `status` in another terminal: one row, written
    -- by the last `run` to start; `heard_at` is its heartbeat (times are ISO UTC).
    CREATE TABLE activity (
        id          INTEGER PRIMARY KEY CHECK (id = 1),
        pid         INTEGER NOT NULL,
        modes       TEXT NOT NULL,
        doing       TEXT NOT NULL,
        until       TEXT,
        started_at  TEXT NOT NULL,
        heard_at    TEXT NOT NULL
    );
    """,
    """
    -- The strongest person evidence any detector found in a frame (its best box score; 0: none),
    -- so the review page can sort by doubt without reading every frame's boxes.
    ALTER TABLE images ADD COLUMN person_score REAL;
    UPDATE images SET person_score = (
        SELECT MAX(json_extract(box.value, '$[4]'))
        FROM json_each(images.detections) AS detector, json_each(detector.value, '$.boxes') AS box
    ) WHERE detections IS NOT NULL;
    """,
    """
    -- The machine the running process is on: there, `status` asks whether its pid is still alive
    -- instead of waiting for its heartbeat to go stale.
    ALTER TABLE activity ADD COLUMN host TEXT;
    """,
    """
    -- The geometry a resized file was made with (`fit:size`): another one re-resizes the frame,
    -- and its caption is kept. The window of the frame it shows (JSON [x1, y1, x2, y2] fractions):
    -- the review page draws the frame's boxes where they are in the resized image.
    -- And the size it was written at (a bucket's), for `status`.
    ALTER TABLE images ADD COLUMN resize_signature TEXT;
    ALTER TABLE images ADD COLUMN resize_window TEXT;
    ALTER TABLE images ADD COLUMN resized_width INTEGER;
    ALTER TABLE images ADD COLUMN resized_height INTEGER;
    """,
    """
    -- The caption checks that fired on a frame's caption (JSON: check, reason, weight, words) and
    -- its doubt (0: none fired), for `caption-report` and the review page's order.
    ALTER TABLE images ADD COLUMN caption_checks TEXT;
    ALTER TABLE images ADD COLUMN caption_doubt REAL;
    """,
    """
    -- Models whose caption of the frame a person sent back from the review page (JSON list): it is
    -- captioned again by a model not in the list.
    ALTER TABLE images ADD COLUMN caption_sent_back TEXT;

    -- The model that judged the caption (caption.verify), so a caption is judged once; NULL for a
    -- caption not judged (a new caption from the service is not).
    ALTER TABLE images ADD COLUMN caption_verified_by TEXT;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


def machine_error(path: Path | str, exc: sqlite3.DatabaseError) -> MachineError | None:
    """SQLite's complaint as the machine's fault (a full disk, a state that cannot be written), or None."""
    if any(word in str(exc) for word in ("full", "I/O", "readonly", "read-only")):
        return MachineError(f"{path}: {exc}: free space or fix the permissions of it and its folder, then rerun")
    return None


def open_error(path: Path, exc: sqlite3.DatabaseError) -> UserError:
    """What SQLite's complaint about the state file means for the user, in one line."""
    if "not a database" in str(exc) or "malformed" in str(exc):
        return StateDamaged(f"{path} is not a readable SQLite file ({exc}): the state was damaged. {RESTORE_HINT}")
    return machine_error(path, exc) or UserError(
        f"{path}: cannot open the state database ({exc}): check that the file and its folder are yours"
    )


class Database:
    """One connection; stores share it and write through `transaction()`."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    @classmethod
    def open(cls, path: Path, *, readonly: bool = False) -> Database:
        """Open (and create or migrate, unless read-only) the state database at `path`. A file that
        is there but empty is a damaged state, never a fresh one: starting afresh over it would
        pay for every caption again and empty the exported dataset."""
        if path.exists() and path.stat().st_size == 0:
            raise StateDamaged(f"{path} is empty (0 bytes): the state was damaged. {RESTORE_HINT}")
        try:
            if readonly:
                db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(path, isolation_level=None)
            database = cls(db)
            database._check_ours(path)  # before anything is written to it
            if not readonly:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=10000")
            db.execute("PRAGMA foreign_keys=ON")
            database._migrate(readonly=readonly)
        except sqlite3.DatabaseError as exc:
            raise open_error(path, exc) from None
        return database

    def execute(self, sql: str, parameters: tuple | list = ()) -> sqlite3.Cursor:
        """A read outside any transaction (each statement sees one consistent snapshot)."""
        return self.connection.execute(sql, parameters)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write; a full disk or a state that cannot be written stops the command with one line
        (the transaction is rolled back, so the state stays as it was)."""
        try:
            self.connection.execute("BEGIN IMMEDIATE")
            try:
                yield self.connection
            except BaseException:
                if self.connection.in_transaction:
                    self.connection.execute("ROLLBACK")
                raise
            self.connection.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if (machine := machine_error(self._path(), exc)) is not None:
                raise machine from None
            raise

    def close(self) -> None:
        self.connection.close()

    def _path(self) -> str:
        return self.connection.execute("PRAGMA database_list").fetchone()[2] or "the state"

    def _tables(self) -> list[str]:
        return [row[0] for row in self.connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]

    @property
    def schema_version(self) -> int:
        return self.connection.execute("PRAGMA user_version").fetchone()[0]

    def _check_ours(self, path: Path) -> None:
        """A database with tables but no schema version of ours was never this tool's state."""
        if self.schema_version == 0 and (foreign := self._tables()):
            raise StateDamaged(
                f"{path} is not a ghibli_async state (unknown schema: tables {', '.join(foreign[:5])}). {RESTORE_HINT}"
            )

    def _migrate(self, *, readonly: bool) -> None:
        version = self.schema_version
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
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            # executescript commits on its own, so the version bump goes inside the script.
            self.connection.executescript(f"BEGIN IMMEDIATE; {script}; PRAGMA user_version = {number}; COMMIT;")
