"""Runs: which stages each run had on and how it ended, so `status` describes the dataset as the
last run left it (a stage switched off then is reported off, not pending); and what the running
process is doing now (`ActivityStore`)."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

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
            run_id = db.execute("INSERT INTO runs (stages) VALUES (?)", (json.dumps(stages),)).lastrowid
        assert run_id is not None  # an INSERT always sets it
        return run_id

    def finish(self, run_id: int, end_code: int) -> None:
        with self._db.transaction() as db:
            db.execute("UPDATE runs SET end_code = ? WHERE id = ?", (end_code, run_id))

    def last(self) -> RunRecord | None:
        row = self._db.execute("SELECT stages, end_code FROM runs ORDER BY id DESC LIMIT 1").fetchone()
        return RunRecord(json.loads(row[0]), row[1]) if row else None


HEARTBEAT_S = 60.0  # how often a running process touches its activity row
GONE_AFTER_S = 3 * HEARTBEAT_S  # not heard from for this long: killed, or the machine is off


class Doing(str, Enum):
    """What a process does besides the stages (whose names it writes while in them)."""

    STARTING = "starting"
    FINISHED = "finished"  # a pass ended; a service then waits or watches, a single run exits
    WAITING_FOR_QUOTA = "waiting for quota"
    RETRYING_LATER = "waiting to retry the caption service"
    WAITING_FOR_LOCK = "waiting for another command to finish"
    WATCHING = "watching for new frames"
    ENDED = "ended"


@dataclass(frozen=True)
class Activity:
    """What the process running the pipeline is doing, as `status` shows it."""

    pid: int
    modes: str  # "" for one pass; "wait", "wait, watch" for a service
    doing: str  # a stage name, or one of the Doing words
    until: datetime | None  # the end of a wait
    started_at: datetime
    heard_at: datetime  # the process was alive then
    host: str | None = None  # the machine it runs on

    def known_dead(self) -> bool:
        """On this machine, whether its pid is gone (killed, even with SIGKILL): no heartbeat to wait for."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        return False


class ActivityStore:
    """One row, rewritten as the running process moves on; readers judge liveness by `heard_at`."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def claim(self, pid: int, modes: str, now: datetime) -> None:
        """This process is the one running now (a service keeps its start time across passes)."""
        with self._db.transaction() as db:
            db.execute(
                """INSERT INTO activity (id, pid, modes, doing, until, started_at, heard_at, host)
                   VALUES (1, ?, ?, ?, NULL, ?, ?, ?)
                   ON CONFLICT (id) DO UPDATE SET
                       started_at = CASE WHEN pid = excluded.pid THEN started_at ELSE excluded.started_at END,
                       pid = excluded.pid, modes = excluded.modes, doing = excluded.doing,
                       until = NULL, heard_at = excluded.heard_at, host = excluded.host""",
                (pid, modes, Doing.STARTING, now.isoformat(), now.isoformat(), socket.gethostname()),
            )

    def doing(self, pid: int, doing: str, now: datetime, *, until: datetime | None = None) -> None:
        with self._db.transaction() as db:
            db.execute(
                "UPDATE activity SET doing = ?, until = ?, heard_at = ? WHERE pid = ?",
                (doing, until.isoformat() if until else None, now.isoformat(), pid),
            )

    def heard(self, pid: int, now: datetime) -> None:
        with self._db.transaction() as db:
            db.execute("UPDATE activity SET heard_at = ? WHERE pid = ?", (now.isoformat(), pid))

    def current(self) -> Activity | None:
        row = self._db.execute(
            "SELECT pid, modes, doing, until, started_at, heard_at, host FROM activity WHERE id = 1"
        ).fetchone()
        if row is None:
            return None
        pid, modes, doing, until, started, heard, host = row
        return Activity(
            pid,
            modes,
            doing,
            datetime.fromisoformat(until) if until else None,
            datetime.fromisoformat(started),
            datetime.fromisoformat(heard),
            host,
        )
