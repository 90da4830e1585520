"""The SQLite state: the only thing that carries progress, split into stores by concern over one
database (`State.open(path)`): sources, filter, results (resize and caption), quota books, review,
progress, runs, activity. No image or detector code is imported here; statuses live in `ghibli_async.statuses`."""

from __future__ import annotations

from pathlib import Path

from ghibli_async.state.database import SCHEMA_VERSION, Database
from ghibli_async.state.filtering import FilterStore
from ghibli_async.state.progress import ProgressStore
from ghibli_async.state.quota import QuotaBooks
from ghibli_async.state.results import ResultStore
from ghibli_async.state.review import ReviewStore
from ghibli_async.state.runs import ActivityStore, RunStore
from ghibli_async.state.sources import SourceStore

__all__ = ["SCHEMA_VERSION", "State"]


class State:
    """Every store over one open database; open once per run (or per command) and close it."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.sources = SourceStore(db)
        self.filter = FilterStore(db)
        self.results = ResultStore(db)
        self.quota = QuotaBooks(db)
        self.review = ReviewStore(db)
        self.progress = ProgressStore(db)
        self.runs = RunStore(db)
        self.activity = ActivityStore(db)

    @classmethod
    def open(cls, path: Path, *, readonly: bool = False) -> State:
        return cls(Database.open(path, readonly=readonly))

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> State:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
