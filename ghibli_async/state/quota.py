"""The quota books: requests and tokens per (project, model) and Pacific quota day, the limits the
server taught us, and the cooldowns and retirements `status` shows."""

from __future__ import annotations

from dataclasses import dataclass

from ghibli_async.state.database import NOW, Database


@dataclass(frozen=True)
class BucketEvent:
    """A cooldown (until, UTC), a retired model (project '*'), a retired key (model '*', project = key#N)."""

    project: str
    model: str
    kind: str  # cooldown | model_retired | key_retired
    until: str | None
    reason: str | None
    at: str


class QuotaBooks:
    def __init__(self, db: Database) -> None:
        self._db = db

    def count_request(self, project: str, model: str, day: str, *, tokens: int = 0, requests: int = 1) -> None:
        with self._db.transaction() as db:
            db.execute(
                """INSERT INTO quota_usage (project, model, quota_day, requests, tokens) VALUES (?, ?, ?, ?, ?)
                   ON CONFLICT (project, model, quota_day)
                   DO UPDATE SET requests = requests + excluded.requests, tokens = tokens + excluded.tokens""",
                (project, model, day, requests, tokens),
            )

    def mark_day_spent(self, project: str, model: str, day: str, daily_limit: int) -> None:
        """The server said the day's quota is gone: remember it, so a restart today does not ask again."""
        with self._db.transaction() as db:
            db.execute(
                """INSERT INTO quota_usage (project, model, quota_day, requests) VALUES (?, ?, ?, ?)
                   ON CONFLICT (project, model, quota_day) DO UPDATE SET requests = MAX(requests, excluded.requests)""",
                (project, model, day, daily_limit),
            )

    def usage(self, day: str) -> dict[tuple[str, str], tuple[int, int]]:
        """(project, model) -> (requests, tokens) on that quota day."""
        rows = self._db.execute("SELECT project, model, requests, tokens FROM quota_usage WHERE quota_day = ?", (day,))
        return {(project, model): (requests, tokens) for project, model, requests, tokens in rows}

    def note_event(
        self, project: str, model: str, kind: str, *, until: str | None = None, reason: str | None = None
    ) -> None:
        with self._db.transaction() as db:
            db.execute(
                f"""INSERT INTO bucket_events (project, model, kind, until, reason) VALUES (?, ?, ?, ?, ?)
                   ON CONFLICT (project, model, kind) DO UPDATE SET until = excluded.until,
                       reason = excluded.reason, at = {NOW}""",
                (project, model, kind, until, reason),
            )

    def events(self) -> list[BucketEvent]:
        """Newest first."""
        rows = self._db.execute("SELECT project, model, kind, until, reason, at FROM bucket_events ORDER BY at DESC")
        return [BucketEvent(*row) for row in rows]

    def save_learned_limit(self, project: str, model: str, kind: str, value: int) -> None:
        with self._db.transaction() as db:
            db.execute(
                f"""INSERT INTO learned_limits (project, model, kind, value) VALUES (?, ?, ?, ?)
                   ON CONFLICT (project, model, kind) DO UPDATE SET value = excluded.value, learned_at = {NOW}""",
                (project, model, kind, value),
            )

    def learned_limits(self) -> dict[tuple[str, str], dict[str, int]]:
        learned: dict[tuple[str, str], dict[str, int]] = {}
        for project, model, kind, value in self._db.execute("SELECT project, model, kind, value FROM learned_limits"):
            learned.setdefault((project, model), {})[kind] = value
        return learned
