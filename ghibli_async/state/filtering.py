"""The filter's facts and decisions: measurements and detector boxes per frame, the decision with
its reason, and the user's overrides. Boxes are stored as JSON per detector with the signature
(backend, weights, size) they depend on, so a threshold change re-decides without detecting again."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from ghibli_async.facts import Box, Decision, FrameFacts, Measurements
from ghibli_async.state.database import NOW, Database
from ghibli_async.statuses import Override, Status


@dataclass(frozen=True)
class FilterJob:
    image_id: int
    source_path: str
    detectors: list[str]  # the detectors that still have to look at it


@dataclass(frozen=True)
class FilterRow:
    source_path: str
    status: Status
    reason: str | None
    override: Override | None
    boxes: dict[str, list[Box]]
    number: int | None


_STATUS_OF = {Override.KEEP: Status.KEPT, Override.REJECT: Status.REJECTED}  # what the user's word makes a frame


class FilterStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def jobs(self, signatures: dict[str, str], *, limit: int | None = None) -> list[FilterJob]:
        """Frames never measured, or without current boxes from one of the configured detectors."""
        rows = self._db.execute(
            f"""SELECT id, source_path, phash, detections FROM images
               WHERE duplicate_of IS NULL AND filter_status != {Status.FAILED.sql} ORDER BY sort_key, source_path"""
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
        self, image_id: int, look: Measurements, boxes: dict[str, list[Box]], signatures: dict[str, str]
    ) -> None:
        """A frame's measurements and new detector boxes (merged into those of other detectors)."""
        with self._db.transaction() as db:
            (stored,) = db.execute("SELECT detections FROM images WHERE id = ?", (image_id,)).fetchone()
            detections = json.loads(stored) if stored else {}
            for name, found in boxes.items():
                detections[name] = {"signature": signatures[name], "boxes": [_box_row(box) for box in found]}
            score = max((row[4] for entry in detections.values() for row in entry["boxes"]), default=None)
            db.execute(
                f"""UPDATE images SET brightness = ?, contrast = ?, sharpness = ?, phash = ?, detections = ?,
                       person_score = ?, updated_at = {NOW} WHERE id = ?""",
                (look.brightness, look.contrast, look.sharpness, look.phash, json.dumps(detections), score, image_id),
            )

    def record_failure(self, image_id: int, reason: str) -> None:
        with self._db.transaction() as db:
            db.execute(
                f"UPDATE images SET filter_status = {Status.FAILED.sql}, filter_reason = ?, updated_at = {NOW}"
                " WHERE id = ?",
                (reason, image_id),
            )

    def facts(self) -> list[FrameFacts]:
        rows = self._db.execute(
            """SELECT id, brightness, contrast, sharpness, phash, detections, filter_override, number
               FROM images WHERE duplicate_of IS NULL AND phash IS NOT NULL ORDER BY id"""
        )
        return [
            FrameFacts(
                image_id,
                bright,
                contrast,
                sharp,
                phash,
                boxes_from(detections),
                _override(override),
                number is not None,
            )
            for image_id, bright, contrast, sharp, phash, detections, override, number in rows
        ]

    def apply_decisions(self, decisions: dict[int, Decision]) -> int:
        """Store the decisions that changed; returns how many did. Read and written in one
        transaction, and a keep/reject the user made since the decisions were computed (on the
        review page, while this run works) wins over them."""
        with self._db.transaction() as db:
            current = {
                image_id: (status, reason, override)
                for image_id, status, reason, override in db.execute(
                    "SELECT id, filter_status, filter_reason, filter_override FROM images WHERE duplicate_of IS NULL"
                )
            }
            changed = [
                (d.status.value, d.reason, image_id)
                for image_id, d in decisions.items()
                if image_id in current
                and current[image_id][:2] != (d.status.value, d.reason)
                and (current[image_id][2] is None or d.reason == "override")
            ]
            db.executemany(
                f"UPDATE images SET filter_status = ?, filter_reason = ?, updated_at = {NOW} WHERE id = ?", changed
            )
        return len(changed)

    def set_override(self, source_paths: Sequence[str], override: Override | None) -> list[str]:
        """The user's keep/reject for these files (None clears it); returns the paths not known."""
        status = Status.PENDING if override is None else _STATUS_OF[override]
        unknown = []
        with self._db.transaction() as db:
            for path in source_paths:
                cursor = db.execute(
                    f"""UPDATE images SET filter_override = ?, filter_status = ?, filter_reason = ?,
                           updated_at = {NOW} WHERE source_path = ? AND duplicate_of IS NULL""",
                    (override.value if override else None, status.value, "override" if override else None, path),
                )
                if cursor.rowcount == 0:
                    unknown.append(path)
        return unknown

    def report(self) -> list[FilterRow]:
        rows = self._db.execute(
            """SELECT source_path, filter_status, filter_reason, filter_override, detections, number
               FROM images WHERE duplicate_of IS NULL ORDER BY sort_key, source_path"""
        )
        return [
            FilterRow(path, Status(status), reason, _override(override), boxes_from(detections), number)
            for path, status, reason, override, detections, number in rows
        ]


def _box_row(box: Box) -> list[float | str]:
    return [round(box.x1, 4), round(box.y1, 4), round(box.x2, 4), round(box.y2, 4), round(box.score, 4), box.label]


def boxes_from(detections: str | None) -> dict[str, list[Box]]:
    """The stored JSON of every detector's boxes, as boxes."""
    stored = json.loads(detections) if detections else {}
    return {name: [Box(*row) for row in entry["boxes"]] for name, entry in stored.items()}


def _override(value: str | None) -> Override | None:
    return Override(value) if value else None
