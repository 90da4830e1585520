"""Nothing lost, nothing paid for nothing: what a damaged state, an output folder inside the input,
or an edit on the review page must never cost. The real pipeline against the fake Gemini server."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest
from caption_harness import run_pipeline, serving, write_caption_config, write_env
from conftest import Project, make_frames
from fake_gemini import FakeGemini, ModelLimits
from virtual_time import VirtualClock, run_virtual

from ghibli_async.pipeline import RunReport

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
    for command in (["run"], ["export"]):
        capsys.readouterr()
        assert project.cli(*command) == 2, command
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "dataset of 6 images" in err and "move that folder away" in err, err
    output = project.root / "out" / "train"
    assert {path.name: path.read_bytes() for path in output.iterdir()} == exported
    assert not (project.root / "work" / "state.sqlite").exists()
