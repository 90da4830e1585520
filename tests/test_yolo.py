"""The YOLO detector's real loading, batching and result parsing, on a model built from its yaml
(random weights: only shapes and plumbing are checked here, never accuracy)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from conftest import Project, scene_image

ultralytics = pytest.importorskip("ultralytics", reason="the yolo detector needs the [detect] extra")

from ghibli_async.config import YoloDetectorConfig, load_config  # noqa: E402
from ghibli_async.detect.yolo import YoloDetector  # noqa: E402
from ghibli_async.facts import Box  # noqa: E402
from ghibli_async.pipeline import Pipeline  # noqa: E402


@pytest.fixture(scope="session")
def random_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """yolo11n built from its yaml, with COCO's `person` as class 0, saved as a local .pt file."""
    model = ultralytics.YOLO("yolo11n.yaml")
    model.model.names = {i: ("person" if i == 0 else f"class{i}") for i in range(len(model.names))}
    path = tmp_path_factory.mktemp("weights") / "yolo11n-random.pt"
    model.save(path)
    return path


def test_detect_batches_and_parses_boxes(random_weights: Path) -> None:
    detector = YoloDetector(YoloDetectorConfig(weights=str(random_weights), image_size=320, batch_size=2))
    images = [np.asarray(scene_image(i, (400, 300), person=True)) for i in range(5)]

    found = detector.detect(images)

    assert len(found) == 5
    for boxes in found:
        for box in boxes:
            assert isinstance(box, Box) and box.label == "person"
            assert 0 <= box.x1 <= box.x2 <= 1 and 0 <= box.y1 <= box.y2 <= 1 and 0.05 <= box.score <= 1
    assert detector.signature == "yolo:yolo11n-random.pt:320"


def test_pipeline_with_yolo_stores_a_decision_for_every_frame(project: Project, random_weights: Path) -> None:
    for i in range(4):
        scene_image(i, person=True).save(project.frames / f"f{i}.png", compress_level=1)
    project.write_config(
        f"filter:\n  detectors: [{{weights: '{random_weights}', image_size: 320, batch_size: 3}}]\n"
        "resize:\n  size: 256\n",
        person_filter=True,
    )

    asyncio.run(Pipeline(load_config(project.config_path), keys=[]).run())

    with sqlite3.connect(project.root / "work" / "state.sqlite") as db:
        rows = db.execute("SELECT filter_status, detections FROM images").fetchall()
    assert len(rows) == 4
    for status, detections in rows:
        assert status in ("kept", "rejected")
        assert json.loads(detections)["yolo"]["signature"] == "yolo:yolo11n-random.pt:320"


def test_missing_weights_file_is_one_clear_line(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    scene_image(1).save(project.frames / "a.png", compress_level=1)
    project.write_config("filter:\n  detectors: [{weights: models/yolo11n.pt}]\n", person_filter=True)

    assert project.cli() == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: YOLO weights not found:") and "models/yolo11n.pt" in err and "\n" not in err
    assert not (project.root / "work").exists()  # stopped before any work
