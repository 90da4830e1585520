"""A synthetic state of many frames for the review page (browser test, bench): rows only, no
image files, so a 50,000-frame state takes a second or two to make. Deterministic per count."""

from __future__ import annotations

import json
import random
from pathlib import Path

from ghibli_async.inputs import natural_sort_key
from ghibli_async.state import State
from ghibli_async.state.sources import SourceFile

MODELS = ("gemini-flash-latest", "gemini-flash-lite-latest")
WORDS = "girl boy woman man cat forest train sea sky rain village kitchen field bicycle lantern".split()


def build_review_state(state_path: Path, frames: int, *, seed: int = 0) -> None:
    """Every frame numbered (its number = its place in name order), resized and captioned; one in
    five rejected (`no_person`, `dark` or `blurry`), each with a yolo box of a random score (the
    rejected weaker on the whole) so the doubt order means something."""
    rng = random.Random(seed)
    paths = [f"/films/film{i // 1000:02d}/frame{i:06d}.png" for i in range(1, frames + 1)]
    with State.open(state_path) as state:
        state.sources.register([SourceFile(p, natural_sort_key(p), 1000, 1, f"hash{i}") for i, p in enumerate(paths)])
        rows = []
        for number in range(1, frames + 1):
            rejected = number % 5 == 2
            score = round(rng.uniform(0.0, 0.5) if rejected else rng.uniform(0.2, 0.95), 3)
            detections = {"yolo": {"signature": "s", "boxes": [[0.2, 0.2, 0.6, 0.9, score, "person"]]}}
            words = " ".join(rng.choice(WORDS) for _ in range(8))
            rows.append(
                (
                    number,
                    "rejected" if rejected else "kept",
                    rng.choice(("no_person", "dark", "blurry")) if rejected else None,
                    json.dumps(detections),
                    score,
                    f"Ghibli style, frame {number} {words}",
                    MODELS[number % 2],
                    f"key#{number % 3 + 1}",
                    paths[number - 1],
                )
            )
        with state.db.transaction() as db:
            db.executemany(
                """UPDATE images SET number = ?, filter_status = ?, filter_reason = ?, detections = ?,
                       person_score = ?, resize_status = 'done', caption_status = 'done', caption = ?,
                       caption_model = ?, caption_key = ? WHERE source_path = ?""",
                rows,
            )
