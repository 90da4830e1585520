"""The filter stage: every frame gets a stored, explainable, reversible decision."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from collections.abc import Sequence

import numpy as np
import pytest
from conftest import PERSON_MARK, Project, scene_image
from PIL import Image, ImageFilter

from ghibli_async.config import AnimeDetectorConfig, FilterConfig, YoloDetectorConfig, load_config
from ghibli_async.facts import Box
from ghibli_async.filter_rules import near_duplicate_groups, person_found
from ghibli_async.pipeline import Pipeline
from ghibli_async.run_end import RunEnd


class StubDetector:
    """Reports a person, with a chosen score, wherever the magenta block is; counts its calls."""

    key = "anime-head"  # the default filter's first detector

    def __init__(self, score: float = 0.3, signature: str = "stub:1") -> None:
        self.score, self.signature, self.calls, self.frames_seen = score, signature, 0, 0

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Box]]:
        self.calls += 1
        self.frames_seen += len(images)
        return [self._boxes(image) for image in images]

    def _boxes(self, image: np.ndarray) -> list[Box]:
        mask = np.all(np.abs(image.astype(int) - PERSON_MARK) < 60, axis=-1)
        if mask.mean() < 0.01:
            return []
        rows, cols = np.nonzero(mask)
        h, w = mask.shape
        return [Box(cols.min() / w, rows.min() / h, cols.max() / w, rows.max() / h, self.score, "person")]


def filtered_project(project: Project, extra: str = "") -> Project:
    frames = project.frames
    for i in range(1, 7):
        scene_image(i, person=True).save(frames / f"person{i}.png", compress_level=1)
    for i in range(1, 4):
        scene_image(100 + i).save(frames / f"empty{i}.png", compress_level=1)
    scene_image(1, person=True).resize((470, 470)).resize((480, 480)).save(
        frames / "person1_again.png", compress_level=1
    )
    Image.new("RGB", (480, 480), (4, 4, 6)).save(frames / "black.png", compress_level=1)
    scene_image(200, person=True).filter(ImageFilter.GaussianBlur(8)).save(frames / "blurred.png", compress_level=1)
    (frames / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    project.write_config("resize:\n  size: 256\n" + extra, person_filter=True)
    return project


async def run(project: Project, detector: StubDetector):
    return await Pipeline(load_config(project.config_path), keys=[], detectors=[detector]).run()


def decisions(project: Project) -> dict[str, tuple[str, str | None]]:
    with sqlite3.connect(project.root / "work" / "state.sqlite") as db:
        rows = db.execute("SELECT source_path, filter_status, filter_reason FROM images WHERE duplicate_of IS NULL")
        return {path.rsplit("/", 1)[-1]: (status, reason) for path, status, reason in rows}


def run_sync(project: Project, detector: StubDetector):
    import asyncio

    return asyncio.run(run(project, detector))


def test_every_frame_gets_a_decision_with_its_reason(project: Project) -> None:
    filtered_project(project)
    detector = StubDetector()
    run_sync(project, detector)

    got = decisions(project)
    assert all(got[f"person{i}.png"] == ("kept", None) for i in range(2, 7))
    assert {got["person1.png"][1], got["person1_again.png"][1]} & {None}  # one of the pair is kept
    duplicate = got["person1_again.png"] if got["person1.png"][0] == "kept" else got["person1.png"]
    assert duplicate[0] == "rejected" and (duplicate[1] or "").startswith("duplicate_of:")
    assert all(got[f"empty{i}.png"] == ("rejected", "no_person") for i in range(1, 4))
    assert got["black.png"] == ("rejected", "dark")
    assert got["blurred.png"] == ("rejected", "blurry")
    assert got["broken.png"][0] == "failed"
    resized = sorted(p.name for p in (project.root / "work" / "resized").iterdir())
    assert resized == [f"{n}.jpg" for n in range(1, 7)]  # only kept frames are numbered, without gaps
    assert all((project.frames / name).exists() for name in got)  # nothing deleted or moved


def test_threshold_change_redecides_without_detecting_again(project: Project) -> None:
    filtered_project(project)
    detector = StubDetector(score=0.3)
    run_sync(project, detector)
    calls = detector.calls

    project.config_path.write_text(project.config_path.read_text() + "filter:\n  detectors: [{confidence: 0.5}]\n")
    run_sync(project, detector)

    assert detector.calls == calls
    assert all(decisions(project)[f"person{i}.png"] == ("rejected", "no_person") for i in range(2, 7))


def test_new_detector_version_looks_again(project: Project) -> None:
    filtered_project(project)
    run_sync(project, StubDetector(signature="stub:1"))
    newer = StubDetector(signature="stub:2")
    run_sync(project, newer)
    assert newer.frames_seen == 12  # every readable frame once more, none twice


def test_overrides_survive_reruns_and_report_lists_every_frame(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    filtered_project(project)
    detector = StubDetector()
    run_sync(project, detector)
    assert project.cli("keep", str(project.frames / "empty1.png")) == 0
    assert project.cli("reject", str(project.frames / "person2.png")) == 0
    run_sync(project, detector)

    got = decisions(project)
    assert got["empty1.png"] == ("kept", "override")
    assert got["person2.png"] == ("rejected", "override")
    capsys.readouterr()
    assert project.cli("filter-report", "--json") == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 13 and {row["source"].rsplit("/", 1)[-1] for row in rows} == set(got)
    person3 = next(row for row in rows if row["source"].endswith("person3.png"))
    assert person3["decision"] == "kept" and person3["scores"] == {"anime-head": 0.3}
    assert project.cli("filter-report") == 0
    assert "no_person" in capsys.readouterr().out


def test_keep_of_an_unknown_path_is_a_clear_error(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    filtered_project(project)
    run_sync(project, StubDetector())
    capsys.readouterr()
    assert project.cli("keep", "no/such/frame.png") == 2
    assert "not in the state" in capsys.readouterr().err


def test_min_box_fraction_ignores_small_boxes(project: Project) -> None:
    filtered_project(project, "filter:\n  min_box_fraction: 0.5\n")
    run_sync(project, StubDetector())
    assert decisions(project)["person3.png"] == ("rejected", "no_person")  # its box covers ~8% of the frame


def test_near_duplicate_grouping_finds_close_hashes_only() -> None:
    base = 0xF0F0_F0F0_F0F0_F0F0
    hashes = [f"{base:016x}", f"{base ^ 0b111:016x}", f"{base ^ 0xFFFF:016x}", f"{~base & (2**64 - 1):016x}"]
    assert near_duplicate_groups(hashes, 3) == [[0, 1]]
    assert sorted(map(sorted, near_duplicate_groups(hashes, 16))) == [[0, 1, 2]]
    assert near_duplicate_groups(hashes, 0) == []


def test_all_mode_needs_every_detector() -> None:
    found = {"yolo": [Box(0.1, 0.1, 0.5, 0.9, 0.6, "person")], "anime-head": [Box(0.2, 0.1, 0.3, 0.2, 0.2, "head")]}
    two = [YoloDetectorConfig(), AnimeDetectorConfig(name="anime", target="head", confidence=0.3)]
    assert person_found(found, FilterConfig(detectors=two, mode="any"))
    assert not person_found(found, FilterConfig(detectors=two, mode="all"))


def test_changed_frame_is_measured_again(project: Project) -> None:
    filtered_project(project)
    detector = StubDetector()
    run_sync(project, detector)
    seen = detector.frames_seen
    scene_image(300).save(project.frames / "person3.png", compress_level=1)  # the person is gone from this file now

    run_sync(project, detector)
    assert detector.frames_seen == seen + 1
    assert decisions(project)["person3.png"] == ("rejected", "no_person")


def test_missing_detector_package_is_one_clear_line(
    project: Project, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the [detect] extra were not installed
    scene_image(1).save(project.frames / "a.png", compress_level=1)
    project.write_config("filter:\n  detectors: [{name: anime}]\n", person_filter=True)

    assert project.cli() == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the anime detectors need onnxruntime") and '".[detect]"' in err
    assert "\n" not in err and not (project.root / "work").exists()


def test_a_stop_ends_detection_after_the_batch_in_hand(project: Project) -> None:
    """Ctrl-C used to wait for every frame's detection; now the batch being detected is the last."""
    filtered_project(project, "filter:\n  detectors: [{name: yolo, batch_size: 2}]\n")
    pipeline = Pipeline(load_config(project.config_path), keys=[])

    class StoppingDetector(StubDetector):
        def detect(self, images):
            pipeline.stop.request()  # Ctrl-C lands while the first batch is being detected
            return super().detect(images)

    detector = StoppingDetector()
    pipeline.detectors = [detector]
    report = asyncio.run(pipeline.run())
    assert detector.calls == 1 and detector.frames_seen == 2
    assert report.end == RunEnd.INTERRUPTED and "resize" not in report.stages
    assert list(decisions(project).values()).count(("pending", None)) >= 8  # the rest wait for the next run
