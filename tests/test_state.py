"""The state store: numbering, duplicates, schema versioning."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from ghibli_async.errors import UserError
from ghibli_async.facts import Decision
from ghibli_async.inputs import natural_sort_key
from ghibli_async.state import SCHEMA_VERSION, State
from ghibli_async.state.quota import LimitWrite, ServedWrite
from ghibli_async.state.sources import SourceFile
from ghibli_async.statuses import Override, Status


def source(name: str, content: str | None = None) -> SourceFile:
    return SourceFile(f"/in/{name}", natural_sort_key(f"/in/{name}"), 10, 1, content or f"hash-{name}")


def numbers(store: State) -> dict[str, int]:
    return {job.source_path.removeprefix("/in/"): job.number for job in store.results.resize_jobs()}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[State]:
    with State.open(tmp_path / "state.sqlite") as opened:
        yield opened


def test_natural_sort_key_orders_numbers_by_value() -> None:
    names = ["img10.png", "img2.png", "IMG1.png", "img02b.png", "a/img3.png", "img.png"]
    assert sorted(names, key=natural_sort_key) == [
        "a/img3.png",
        "img.png",
        "IMG1.png",
        "img2.png",
        "img02b.png",
        "img10.png",
    ]


def test_numbers_are_natural_order_and_stable(store: State) -> None:
    store.sources.register([source("img10.png"), source("img2.png"), source("img1.png")])
    store.results.assign_output_numbers(require_kept=False)
    assert numbers(store) == {"img1.png": 1, "img2.png": 2, "img10.png": 3}

    store.sources.register([source("img0.png")])
    store.results.assign_output_numbers(require_kept=False)
    assert numbers(store) == {"img1.png": 1, "img2.png": 2, "img10.png": 3, "img0.png": 4}


def test_same_content_under_two_names_is_one_image(store: State) -> None:
    duplicates = store.sources.register([source("b.png", "same"), source("a.png", "same")])
    store.sources.register([source("c.png", "same")])
    store.results.assign_output_numbers(require_kept=False)

    assert duplicates == 1
    assert numbers(store) == {"a.png": 1}
    counts = store.progress.counts()
    assert (counts.sources, counts.duplicates) == (3, 2)


def test_only_kept_frames_are_numbered_when_the_filter_runs(store: State) -> None:
    store.sources.register([source("a.png"), source("b.png")])
    assert store.results.assign_output_numbers(require_kept=True) == 0


def test_bulk_registration_of_many_frames(store: State) -> None:
    store.sources.register([source(f"frame{i}.png") for i in range(20_000)])
    assert store.results.assign_output_numbers(require_kept=False) == 20_000
    assert store.results.resize_jobs(limit=2)[1].source_path == "/in/frame1.png"


def test_schema_is_versioned_and_reopening_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    with State.open(path) as store:
        store.sources.register([source("a.png")])
        assert store.db.schema_version == SCHEMA_VERSION
    with State.open(path) as store:
        assert store.progress.counts().sources == 1


def test_newer_schema_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    State.open(path).close()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(UserError, match="newer than this ghibli_async"):
        State.open(path)


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(UserError, match="not a readable SQLite file"):
        State.open(path)


def test_a_keep_made_on_the_page_while_a_run_decides_is_not_overwritten(tmp_path: Path) -> None:
    """The run computed its decisions before the user's click landed; the click wins."""
    path = tmp_path / "state.sqlite"
    with State.open(path) as run:
        run.sources.register([source("a.png")])
        (image_id,) = [job.image_id for job in run.filter.jobs({})]
        stale = {image_id: Decision(Status.REJECTED, "no_person")}  # computed from facts with no override
        with State.open(path) as page:  # the review server's own connection
            page.filter.set_override(["/in/a.png"], Override.KEEP)
        run.filter.apply_decisions(stale)
        (row,) = run.filter.report()
    assert (row.status, row.override) == (Status.KEPT, Override.KEEP)


def test_quota_books_follow_a_key_when_env_is_renumbered(tmp_path: Path) -> None:
    """key#1 and key#2 swap in .env: today's use and learned limits stay with the real keys."""
    with State.open(tmp_path / "state.sqlite") as state:
        books = state.quota
        assert books.follow_renumbered_keys({"key#1": "fp-a", "key#2": "fp-b"}) == []
        for at in range(5):
            books.settle("key#1", "m", 1000.0 + at, [ServedWrite("2026-11-26", 10)])
        books.settle("key#2", "m", 1005.0, [ServedWrite("2026-11-26", 10), LimitWrite("rpd", 20)])

        assert books.follow_renumbered_keys({"key#1": "fp-b", "key#2": "fp-a"}) == ["key#1", "key#2"]
        usage = books.usage("2026-11-26")
        assert (usage[("key#1", "m")].accepted, usage[("key#2", "m")].accepted) == (1, 5)
        assert books.learned_limits() == {("key#1", "m"): {"rpd": 20}}

        books.follow_renumbered_keys({"key#1": "fp-b"})  # key a is gone from .env: its books go too
        assert set(books.usage("2026-11-26")) == {("key#1", "m")}


def test_a_caption_written_by_hand_meanwhile_is_not_replaced_by_the_service(tmp_path: Path) -> None:
    with State.open(tmp_path / "state.sqlite") as state:
        state.sources.register([source("a.png")])
        state.results.assign_output_numbers(require_kept=False)
        state.review.edit_caption(1, "Ghibli style, written by hand")  # while the request was in flight
        state.results.record_caption(1, "Ghibli style, from the service", model="m", key_label="key#1")
        (item,) = state.review.page("kept", offset=0, limit=10)[1]
    assert item.caption == "Ghibli style, written by hand" and item.edited
