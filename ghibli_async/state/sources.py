"""Sources: the files found in the input folder (one row each) and the videos frames came from."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ghibli_async.state.database import NOW, Database
from ghibli_async.statuses import Status, VideoStatus


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
class Video:
    path: str
    status: VideoStatus
    frames: int
    reason: str | None


class SourceStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def known(self) -> dict[str, KnownSource]:
        rows = self._db.execute("SELECT source_path, id, file_size, mtime_ns FROM images")
        return {path: KnownSource(image_id, size, mtime) for path, image_id, size, mtime in rows}

    def register(self, files: Sequence[SourceFile]) -> int:
        """Add new files in one transaction; a file whose content is already known becomes a
        duplicate of the first one (in natural order), so it is processed once. Returns duplicates."""
        duplicates = 0
        with self._db.transaction() as db:
            originals = _originals_among(db, [file.content_hash for file in files if file.content_hash])
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

    def replace_changed(self, image_id: int, file: SourceFile) -> None:
        """A known path now holds other bytes: keep its number, redo every stage for it."""
        pending = Status.PENDING.sql
        with self._db.transaction() as db:
            original = _originals_among(db, [file.content_hash]).get(file.content_hash) if file.content_hash else None
            duplicate_of = original if original != image_id else None
            db.execute(
                f"""UPDATE images SET content_hash = ?, file_size = ?, mtime_ns = ?, duplicate_of = ?,
                       width = NULL, height = NULL, brightness = NULL, contrast = NULL, sharpness = NULL,
                       phash = NULL, detections = NULL,
                       filter_status = {pending}, filter_reason = NULL,
                       resize_status = {pending}, resize_reason = NULL,
                       caption_status = {pending}, caption_reason = NULL,
                       caption = NULL, caption_model = NULL, caption_key = NULL, updated_at = {NOW}
                   WHERE id = ?""",
                (file.content_hash, file.size, file.mtime_ns, duplicate_of, image_id),
            )
            _promote_copies_of(db, image_id)

    def touch(self, image_id: int, size: int, mtime_ns: int) -> None:
        """Same bytes, new timestamp (a copy or a `touch`): remember it so it is not hashed again."""
        with self._db.transaction() as db:
            db.execute("UPDATE images SET file_size = ?, mtime_ns = ? WHERE id = ?", (size, mtime_ns, image_id))

    def content_hash_of(self, image_id: int) -> str | None:
        return self._db.execute("SELECT content_hash FROM images WHERE id = ?", (image_id,)).fetchone()[0]

    def path_of(self, image_id: int) -> str | None:
        row = self._db.execute("SELECT source_path FROM images WHERE id = ?", (image_id,)).fetchone()
        return row[0] if row else None

    # --- videos ---------------------------------------------------------------------------------

    def video_status(self, path: str) -> VideoStatus | None:
        row = self._db.execute("SELECT status FROM videos WHERE path = ?", (path,)).fetchone()
        return VideoStatus(row[0]) if row else None

    def record_video(self, path: str, status: VideoStatus, *, frames: int, reason: str | None = None) -> None:
        with self._db.transaction() as db:
            db.execute(
                f"""INSERT INTO videos (path, status, frames, reason) VALUES (?, ?, ?, ?)
                   ON CONFLICT (path) DO UPDATE SET status = excluded.status, frames = excluded.frames,
                       reason = excluded.reason, updated_at = {NOW}""",
                (path, status.value, frames, reason),
            )

    def videos(self) -> list[Video]:
        """Every video seen, by path."""
        rows = self._db.execute("SELECT path, status, frames, reason FROM videos ORDER BY path")
        return [Video(path, VideoStatus(status), frames, reason) for path, status, frames, reason in rows]


def _promote_copies_of(db, image_id: int) -> None:
    """The image's old bytes live on in its byte copies: the first of them (in natural order)
    becomes the original that goes through the stages, the others its duplicates."""
    copies = [
        row[0]
        for row in db.execute(
            "SELECT id FROM images WHERE duplicate_of = ? ORDER BY sort_key, source_path", (image_id,)
        )
    ]
    if copies:
        first, rest = copies[0], copies[1:]
        db.execute("UPDATE images SET duplicate_of = NULL WHERE id = ?", (first,))
        db.executemany("UPDATE images SET duplicate_of = ? WHERE id = ?", [(first, copy) for copy in rest])


def _originals_among(db, hashes: Sequence[str | None]) -> dict[str, int]:
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
