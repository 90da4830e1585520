"""The exported folder is a Hugging Face imagefolder dataset holding exactly the captioned images."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from conftest import Project, save_frame

from ghibli_async.state import State

CAPTIONS = {
    1: "Ghibli style, a girl in a straw hat runs through tall summer grass",
    3: "Ghibli style, café terrace at dusk — 夕暮れ, warm lanterns",
    4: "Ghibli style, two boys seen from behind on a ledge",
}


@pytest.fixture
def captioned(project: Project) -> Project:
    """Five resized frames, three of them with captions (as the caption engine will record them)."""
    for i in range(1, 6):
        save_frame(project.frames / f"f{i}.jpg", (640, 640), seed=i)
    project.cli("--skip-caption")
    with State.open(project.config.state_path) as state:
        for number, text in CAPTIONS.items():
            state.results.record_caption(number, text, model="gemini-flash-latest", key_label="key#1")
    return project


def output(project: Project) -> Path:
    return project.root / "out" / "train"


def test_output_holds_exactly_the_captioned_images(captioned: Project) -> None:
    assert captioned.cli("export") == 0

    names = sorted(p.name for p in output(captioned).iterdir())
    assert names == [".ghibli_async.jsonl", "1.jpg", "3.jpg", "4.jpg", "metadata.jsonl"]  # the first: restore's
    lines = output(captioned).joinpath("metadata.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [
        {"file_name": f"{n}.jpg", "text": text} for n, text in CAPTIONS.items()
    ]
    assert "夕暮れ" in lines[1] and "\\u" not in lines[1]


def test_datasets_loads_the_export(captioned: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from datasets import load_dataset

    captioned.cli("export")
    dataset = load_dataset(
        "imagefolder", data_dir=str(output(captioned)), split="train", cache_dir=str(tmp_path / "hf")
    )

    assert dataset.num_rows == len(CAPTIONS)
    rows = {row["text"]: row["image"] for row in dataset}
    assert set(rows) == set(CAPTIONS.values())
    for image in rows.values():
        assert (image.mode, image.size) == ("RGB", (512, 512))


def test_run_exports_too_and_kohya_sidecars(captioned: Project) -> None:
    captioned.write_config("export:\n  kohya_txt: true\n")
    captioned.cli("--skip-caption")

    assert output(captioned).joinpath("3.txt").read_text(encoding="utf-8") == CAPTIONS[3]
    assert sorted(p.name for p in output(captioned).glob("*.txt")) == ["1.txt", "3.txt", "4.txt"]


def test_export_removes_its_stale_files_but_not_foreign_ones(captioned: Project) -> None:
    captioned.cli("export")
    out = output(captioned)
    (out / "2.jpg").write_bytes(b"left from an older export")
    (out / ".9.jpg.123.tmp").write_bytes(b"partial")
    (out / "README.txt").write_text("the user's own notes")

    captioned.cli("export")
    names = sorted(p.name for p in out.iterdir())
    assert names == [".ghibli_async.jsonl", "1.jpg", "3.jpg", "4.jpg", "README.txt", "metadata.jsonl"]


def test_export_before_any_run_says_what_to_do(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    assert project.cli("export") == 2
    assert "run the pipeline first" in capsys.readouterr().err


def test_a_full_output_disk_leaves_the_previous_export_whole(
    captioned: Project, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert captioned.cli("export") == 0
    before = {p.name: p.read_bytes() for p in output(captioned).iterdir()}
    with State.open(captioned.config.state_path) as state:
        state.results.record_caption(2, "Ghibli style, a new caption for two", model="m", key_label="key#1")
    link = os.link
    calls = iter(range(100))

    def disk_fills_up(source, dest) -> None:
        if next(calls) >= 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        link(source, dest)

    monkeypatch.setattr(os, "link", disk_fills_up)
    assert captioned.cli("export") == 1
    err = capsys.readouterr().err
    assert "export failed (No space left on device)" in err and "previous export" in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in output(captioned).iterdir()} == before  # whole, and unchanged
    assert not [p for p in output(captioned).parent.iterdir() if p.name.startswith(".")]  # nothing half-built left

    monkeypatch.setattr(os, "link", link)
    assert captioned.cli("export") == 0
    names = sorted(p.name for p in output(captioned).iterdir())
    assert names == [".ghibli_async.jsonl", "1.jpg", "2.jpg", "3.jpg", "4.jpg", "metadata.jsonl"]


def test_an_unwritable_output_folder_stops_the_run_before_any_request(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    save_frame(project.frames / "a.jpg", (600, 600))
    (project.root / "not-a-folder").write_text("a file where the output's parent should be")
    (project.root / ".env").write_text("GEMINI_API_KEY_1=never-used\n")
    assert project.cli("--output", str(project.root / "not-a-folder" / "train")) == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and "not-a-folder" in err
    assert not (project.root / "work" / "resized").exists()  # stopped before any work, so before paying
