"""Runs: which stages each run had on and how it ended, so `status` describes the dataset as the
last run left it (a stage switched off then is reported off, not pending)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from ghibli_async.state.database import Database


@dataclass(frozen=True)
class RunRecord:
    stages: dict[str, bool]
    end_code: int | None  # None: still running, or killed


class RunStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def start(self, stages: dict[str, bool]) -> int:
        with self._db.transaction() as db:
            return db.execute("INSERT INTO runs (stages) VALUES (?)", (json.dumps(stages),)).lastrowid

    def finish(self, run_id: int, end_code: int) -> None:
        with self._db.transaction() as db:
            db.execute("UPDATE runs SET end_code = ? WHERE id = ?", (end_code, run_id))

    def last(self) -> RunRecord | None:
        row = self._db.execute("SELECT stages, end_code FROM runs ORDER BY id DESC LIMIT 1").fetchone()
        return RunRecord(json.loads(row[0]), row[1]) if row else None
