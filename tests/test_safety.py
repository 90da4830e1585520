"""Nothing lost, nothing paid for nothing: what a damaged state, an output folder inside the input,
or an edit on the review page must never cost. The real pipeline against the fake Gemini server."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3

import pytest
from caption_harness import run_pipeline, serving, write_caption_config, write_env
from conftest import Project, make_frames, save_frame
from fake_gemini import FakeGemini, ModelLimits
from virtual_time import VirtualClock, run_virtual

from ghibli_async.pipeline import RunReport
from ghibli_async.state import State
from ghibli_async.statuses import Override

MODEL = "{name: m, rpm: 600, rpd: 10000, tpm: 10000000}"


def metadata_rows(folder) -> list[dict]:
    path = folder / "metadata.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def caption_run(project: Project, fake: FakeGemini, clock: VirtualClock, *, paths: str | None = None) -> RunReport:
    async def scenario() -> RunReport:
        async with serving(fake):
            write_caption_config(project, fake.base_url, [MODEL])
            if paths:
                text = project.config_path.read_text(encoding="utf-8")
                project.config_path.write_text(text.replace("  output_dir: out/train\n  work_dir: work\n", paths))
            return await run_pipeline(project, clock)

    return run_virtual(scenario())


def test_an_output_and_a_work_folder_inside_the_input_never_feed_it(project: Project) -> None:
    make_frames(project, 5)
    write_env(project, GEMINI_API_KEY_1="k1")
    clock = VirtualClock()
    fake = FakeGemini(clock, keys={"k1": "p"}, models={"m": ModelLimits()})
    inside = "  output_dir: frames/train\n  work_dir: frames/work\n"
    for _ in range(3):
        report = caption_run(project, fake, clock, paths=inside)
        assert report.counts is not None and report.counts.sources == 5
    assert len(metadata_rows(project.frames / "train")) == 5
    assert len(fake.seen) == 5, "the previous export was captioned again as new frames"


def captioned_dataset(project: Project, count: int = 6) -> tuple[FakeGemini, dict[str, bytes]]:
    """A run that captioned and exported `count` frames; the output folder's files by name."""
    make_frames(project, count)
    write_env(project, GEMINI_API_KEY_1="k1")
    clock = VirtualClock()
    fake = FakeGemini(clock, keys={"k1": "p"}, models={"m": ModelLimits()})
    caption_run(project, fake, clock)
    output = project.root / "out" / "train"
    return fake, {path.name: path.read_bytes() for path in output.iterdir()}


COMMANDS = (["run"], ["export"], ["status"], ["retry"], ["keep", "frames/frame1.png"], ["report"], ["review"])


@pytest.mark.parametrize("damage", ["empty", "foreign"])
def test_a_damaged_state_stops_every_command_and_the_dataset_stays(
    project: Project, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    fake, exported = captioned_dataset(project)
    state = project.root / "work" / "state.sqlite"
    state.unlink()
    for leftover in state.parent.glob("state.sqlite-*"):
        leftover.unlink()
    if damage == "empty":
        state.write_bytes(b"")
    else:
        with sqlite3.connect(state) as db:
            db.execute("CREATE TABLE notes (text TEXT)")
    before = state.read_bytes()
    for command in COMMANDS:
        capsys.readouterr()
        assert project.cli(*command) == 2, command
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(state) in err, (command, err)
        assert ("empty" if damage == "empty" else "not a ghibli_async state") in err
        assert "Nothing was changed" in err and "put back a copy" in err  # what to do
    output = project.root / "out" / "train"
    assert {path.name: path.read_bytes() for path in output.iterdir()} == exported
    assert state.read_bytes() == before
    assert len(fake.seen) == 6


def test_a_missing_state_beside_an_exported_dataset_is_not_a_fresh_start(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    fake, exported = captioned_dataset(project)
    shutil.rmtree(project.root / "work")
    for command in COMMANDS:
        capsys.readouterr()
        assert project.cli(*command) == 2, command
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "dataset of 6 images" in err and "move that folder away" in err, err
    output = project.root / "out" / "train"
    assert {path.name: path.read_bytes() for path in output.iterdir()} == exported
    assert not (project.root / "work" / "state.sqlite").exists()


def test_frames_edited_or_rejected_on_the_review_page_are_not_sent(project: Project) -> None:
    """While the first requests are out, the user writes captions for frames 11-20 and rejects
    21-25 on the review page: none of those 15 frames is sent, and the export shows the edits."""
    make_frames(project, 30)
    write_env(project, GEMINI_API_KEY_1="k1")
    clock = VirtualClock()
    reviewed: list[bool] = []

    def review_during_the_first_request() -> float:
        if not reviewed:
            reviewed.append(True)
            with State.open(project.root / "work" / "state.sqlite") as state:
                ids = dict(state.db.execute("SELECT number, id FROM images WHERE number IS NOT NULL").fetchall())
                for number in range(11, 21):
                    state.review.edit_caption(ids[number], f"Ghibli style, written by hand for frame {number}")
                state.review.decide([ids[number] for number in range(21, 26)], Override.REJECT)
        return 1.0

    fake = FakeGemini(clock, keys={"k1": "p"}, models={"m": ModelLimits()}, latency=review_during_the_first_request)
    caption_run(project, fake, clock)

    resized = project.root / "work" / "resized"
    number_of = {hashlib.sha256((resized / f"{n}.jpg").read_bytes()).hexdigest(): n for n in range(1, 31)}
    sent = sorted(number_of[seen.image] for seen in fake.seen)
    assert not set(sent) & set(range(11, 26)), f"paid for frames edited or rejected before they were sent: {sent}"
    rows = {row["file_name"]: row["text"] for row in metadata_rows(project.root / "out" / "train")}
    assert len(rows) == 25 and not {f"{n}.jpg" for n in range(21, 26)} & set(rows)
    assert all(rows[f"{n}.jpg"] == f"Ghibli style, written by hand for frame {n}" for n in range(11, 21))


@pytest.mark.parametrize("loss", ["work dir deleted", "state emptied"])
def test_restore_rebuilds_the_state_from_the_export_and_nothing_is_paid_again(
    project: Project, capsys: pytest.CaptureFixture[str], loss: str
) -> None:
    fake, exported = captioned_dataset(project)
    state = project.root / "work" / "state.sqlite"
    if loss == "work dir deleted":
        shutil.rmtree(project.root / "work")
    else:
        state.write_bytes(b"")
    save_frame(project.frames / "new.png", (160, 160), seed=99)  # a frame added meanwhile

    assert project.cli("restore") == 0
    out = capsys.readouterr().out
    assert "Restored 6 of 6 exported images" in out
    if loss == "state emptied":
        kept = [p for p in state.parent.iterdir() if p.name.startswith("state.sqlite.damaged-")]
        assert len(kept) == 1 and kept[0].read_bytes() == b""  # set aside, never deleted

    clock = VirtualClock()
    again = FakeGemini(clock, keys={"k1": "p"}, models={"m": ModelLimits()})
    caption_run(project, again, clock)
    assert len(again.seen) == 1, "only the new frame is paid for"
    output = project.root / "out" / "train"
    images = {name: data for name, data in exported.items() if name.endswith(".jpg")}
    assert {name: (output / name).read_bytes() for name in images} == images  # the same pictures, numbers
    before = [json.loads(line) for line in exported["metadata.jsonl"].decode().splitlines()]
    assert metadata_rows(output)[:6] == before and len(metadata_rows(output)) == 7  # and captions, + the new
    assert project.cli("restore") == 2  # a sound state is never replaced
