"""State store at scale: 100,000 images through the operations a run does; writes BENCHMARKS.md.

python bench/bench_state.py [--images 100000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.report import machine, publish  # noqa: E402
from ghibli_async.inputs import natural_sort_key  # noqa: E402
from ghibli_async.state import State  # noqa: E402
from ghibli_async.state.sources import SourceFile  # noqa: E402
from ghibli_async.statuses import Status  # noqa: E402

PER_IMAGE_SAMPLE = 5000  # one-transaction-per-image updates timed on this many rows


def timed(label: str, results: list[tuple[str, float]], action):
    started = time.perf_counter()
    value = action()
    results.append((label, time.perf_counter() - started))
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    n = args.images
    files = [
        SourceFile(
            f"/frames/film{i % 20}/frame{i}.png", natural_sort_key(f"/frames/film{i % 20}/frame{i}.png"), 1, 1, f"h{i}"
        )
        for i in range(n)
    ]
    results: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory() as scratch, State.open(Path(scratch) / "state.sqlite") as state:
        timed(
            f"register {n:,} new files (batches of 2,000, as the scan does)", results, lambda: _register(state, files)
        )
        timed("load known sources (rerun's skip check)", results, state.sources.known)
        numbering = lambda: state.results.assign_output_numbers(require_kept=False)  # noqa: E731
        timed("assign output numbers (natural order)", results, numbering)
        jobs = timed("list pending resize jobs", results, state.results.resize_jobs)
        sample = jobs[:PER_IMAGE_SAMPLE]
        started = time.perf_counter()
        for job in sample:
            state.results.record_resize(job.image_id, Status.DONE, size=(1000, 1000))
        per_image = (time.perf_counter() - started) / len(sample)
        started = time.perf_counter()
        assert all(state.results.still_wants_caption(job.number) for job in sample)
        per_check = (time.perf_counter() - started) / len(sample)
        _caption_everything(state)
        timed(f"status counts ({n:,} captioned)", results, state.progress.counts)
        exported = timed(
            f"list captioned images (export query, {n:,} captioned)",
            results,
            lambda: list(state.results.captioned_images()),
        )
        assert len(exported) == n, len(exported)

    rows = ["| operation | seconds |", "|---|---|", *(f"| {label} | {seconds:.3f} |" for label, seconds in results)]
    rows.append(
        f"| one image's resize result (own transaction), mean of {PER_IMAGE_SAMPLE:,} | {per_image * 1000:.2f} ms |"
    )
    rows.append(
        f"| 'still wants a caption?' before each request, mean of {PER_IMAGE_SAMPLE:,} | {per_check * 1000:.3f} ms |"
    )
    note = (
        "The last row is the check the caption engine makes before each try for a slot (a frame captioned "
        "or rejected on the review page meanwhile is not sent): an indexed lookup, microseconds against "
        "answers of seconds. Not shown: a slower disk, or a review page writing at the same moment."
    )
    body = "\n".join([f"{date.today().isoformat()}, {machine()}. {n:,} images.", "", *rows, "", note])
    publish("State store at 100,000 images (`bench/bench_state.py`)", body, write=not args.no_write)


def _register(state: State, files: list[SourceFile]) -> None:
    for start in range(0, len(files), 2000):
        state.sources.register(files[start : start + 2000])


def _caption_everything(state: State) -> None:
    """Every image resized and captioned, as after a finished run (one statement: setup, not timed)."""
    with state.db.transaction() as db:
        db.execute(
            "UPDATE images SET resize_status = ?, caption_status = ?, caption = 'Ghibli style, ' || source_path",
            (Status.DONE.value, Status.DONE.value),
        )


if __name__ == "__main__":
    main()
