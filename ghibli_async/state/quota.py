"""The quota books: requests and tokens per (project, model) and Pacific quota day, the limits the
server taught us, and the cooldowns and retirements `status` shows."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from ghibli_async.state.database import NOW, Database


@dataclass(frozen=True)
class Usage:
    sent: int  # requests sent (429s and errors included)
    accepted: int  # requests the server served: what counts against its daily limit
    tokens: int


@dataclass(frozen=True)
class BucketEvent:
    """A cooldown (until, UTC), a bucket spent for a quota day (until = the day), a retired model
    (project '*'), a retired key (model '*', project = key#N)."""

    project: str
    model: str
    kind: str  # cooldown | spent | model_retired | key_retired
    until: str | None
    reason: str | None
    at: str


@dataclass(frozen=True)
class ServedWrite:
    """The server served the request: it counts against the daily limit of `day`."""

    day: str
    tokens: int


@dataclass(frozen=True)
class EventWrite:
    """A cooldown, a spent day or a retirement (`project`/`model` given for a retirement: '*' or a key)."""

    kind: str
    until: str | None = None
    reason: str | None = None
    project: str | None = None
    model: str | None = None


@dataclass(frozen=True)
class LimitWrite:
    kind: str  # rpm, rpd or tpm
    value: int


BookWrite = ServedWrite | EventWrite | LimitWrite


def _write(db: sqlite3.Connection, project: str, model: str, write: BookWrite) -> None:
    if isinstance(write, ServedWrite):
        db.execute(
            """INSERT INTO quota_usage (project, model, quota_day, accepted, tokens) VALUES (?, ?, ?, 1, ?)
               ON CONFLICT (project, model, quota_day)
               DO UPDATE SET accepted = accepted + 1, tokens = tokens + excluded.tokens""",
            (project, model, write.day, write.tokens),
        )
    elif isinstance(write, EventWrite):
        db.execute(
            f"""INSERT INTO bucket_events (project, model, kind, until, reason) VALUES (?, ?, ?, ?, ?)
               ON CONFLICT (project, model, kind) DO UPDATE SET until = excluded.until,
                   reason = excluded.reason, at = {NOW}""",
            (write.project or project, write.model or model, write.kind, write.until, write.reason),
        )
    else:
        db.execute(
            f"""INSERT INTO learned_limits (project, model, kind, value) VALUES (?, ?, ?, ?)
               ON CONFLICT (project, model, kind) DO UPDATE SET value = excluded.value, learned_at = {NOW}""",
            (project, model, write.kind, write.value),
        )


_BOOKS = ("quota_usage", "learned_limits", "bucket_events", "recent_answers")  # tables whose rows belong to a project
_RECENT_S = 120.0  # twice the one-minute window: enough for any restart to read the whole window


class QuotaBooks:
    def __init__(self, db: Database) -> None:
        self._db = db

    def count_request(self, project: str, model: str, day: str) -> None:
        """A request is about to be sent: counted before, so a crash never under-counts the day."""
        with self._db.transaction() as db:
            db.execute(
                """INSERT INTO quota_usage (project, model, quota_day, requests) VALUES (?, ?, ?, 1)
                   ON CONFLICT (project, model, quota_day) DO UPDATE SET requests = requests + 1""",
                (project, model, day),
            )

    def usage(self, day: str) -> dict[tuple[str, str], Usage]:
        """(project, model) -> what was sent and served on that quota day."""
        rows = self._db.execute(
            "SELECT project, model, requests, accepted, tokens FROM quota_usage WHERE quota_day = ?", (day,)
        )
        return {(project, model): Usage(sent, accepted, tokens) for project, model, sent, accepted, tokens in rows}

    def follow_renumbered_keys(self, fingerprints: dict[str, str]) -> list[str]:
        """`fingerprints`: label -> the fingerprint of the key it names now. The books of a project
        named after a label (the default: each key its own project) move with the key when the
        labels were renumbered, and are dropped for a key that is gone. Returns the labels that now
        name another key than before."""
        with self._db.transaction() as db:
            before = dict(db.execute("SELECT label, fingerprint FROM key_fingerprints").fetchall())
            label_of = {fingerprint: label for label, fingerprint in before.items()}
            moved = {old: new for new, fp in fingerprints.items() if (old := label_of.get(fp)) and old != new}
            gone = [label for label, fp in before.items() if fp not in fingerprints.values()]
            for table in _BOOKS:
                for label in gone:
                    db.execute(f"DELETE FROM {table} WHERE project = ?", (label,))
                for old in moved:  # two steps: key#1 -> key#2 while key#2 -> key#1
                    db.execute(f"UPDATE {table} SET project = ? WHERE project = ?", (f"moving:{old}", old))
                for old, new in moved.items():
                    db.execute(f"UPDATE {table} SET project = ? WHERE project = ?", (new, f"moving:{old}"))
            db.execute("DELETE FROM key_fingerprints")
            db.executemany("INSERT INTO key_fingerprints VALUES (?, ?)", fingerprints.items())
        return sorted(label for label, fp in fingerprints.items() if before.get(label, fp) != fp)

    def settle(self, project: str, model: str, answered_at: float, writes: list[BookWrite]) -> None:
        """A request of this bucket came back at `answered_at` (Unix time): note it (answers older
        than the window go) and write what its answer meant, all in one transaction."""
        with self._db.transaction() as db:
            db.execute("INSERT INTO recent_answers VALUES (?, ?, ?)", (project, model, answered_at))
            db.execute("DELETE FROM recent_answers WHERE at < ?", (answered_at - _RECENT_S,))
            for write in writes:
                _write(db, project, model, write)

    def recent_answers(self, since: float) -> dict[tuple[str, str], list[float]]:
        """(project, model) -> the Unix times of its answers since `since`, oldest first."""
        rows = self._db.execute("SELECT project, model, at FROM recent_answers WHERE at >= ? ORDER BY at", (since,))
        found: dict[tuple[str, str], list[float]] = {}
        for project, model, at in rows:
            found.setdefault((project, model), []).append(at)
        return found

    def clear_retirements(self) -> None:
        """A new caption run tries every key and model again; what it retires is recorded anew."""
        with self._db.transaction() as db:
            db.execute("DELETE FROM bucket_events WHERE kind IN ('key_retired', 'model_retired')")

    def events(self) -> list[BucketEvent]:
        """Newest first."""
        rows = self._db.execute("SELECT project, model, kind, until, reason, at FROM bucket_events ORDER BY at DESC")
        return [BucketEvent(*row) for row in rows]

    def learned_limits(self) -> dict[tuple[str, str], dict[str, int]]:
        learned: dict[tuple[str, str], dict[str, int]] = {}
        for project, model, kind, value in self._db.execute("SELECT project, model, kind, value FROM learned_limits"):
            learned.setdefault((project, model), {})[kind] = value
        return learned
