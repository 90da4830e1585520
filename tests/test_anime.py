"""The anime detectors (deepghs' ONNX models on onnxruntime): the real loading, from a Hugging Face
cache laid out as `hf download` leaves it, with ONNX models built here in the deepghs models'
input and output signature. A model answers the same raw output for every image, so decoding is
checked to the pixel: known boxes in, known boxes out."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from conftest import Project, scene_image
from test_filter import StubDetector

onnx = pytest.importorskip("onnx", reason="building the test models needs onnx (the [dev] extra)")

from huggingface_hub import constants as hub  # noqa: E402
from onnx import ModelProto, TensorProto, helper, numpy_helper  # noqa: E402

from ghibli_async.config import AnimeDetectorConfig, FilterConfig, load_config  # noqa: E402
from ghibli_async.detect.anime import AnimeDetector, decode, non_max_suppression  # noqa: E402
from ghibli_async.facts import Box  # noqa: E402
from ghibli_async.pipeline import Pipeline  # noqa: E402

INPUT = 640
# (centre x, centre y, width, height) in the model's 640 px input, and the score.
HEADS = [((320, 160, 64, 64), 0.9), ((100, 500, 40, 40), 0.2), ((600, 600, 20, 20), 0.01)]
BODIES = [((320, 320, 200, 400), 0.6)]


def constant_yolo_model(output: np.ndarray, labels: list[str]) -> ModelProto:
    """A model with the deepghs models' signature (images [1, 3, 640, 640] -> output0) and
    ultralytics' metadata (`names`, `imgsz`), answering `output` whatever it is shown."""
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["output0"], value=numpy_helper.from_array(output))],
        "constant_yolo",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, INPUT, INPUT])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(output.shape))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"names": repr(dict(enumerate(labels))), "imgsz": f"[{INPUT}, {INPUT}]"})
    onnx.checker.check_model(model)
    return model


def yolov8_output(found: list[tuple[tuple[int, int, int, int], float]], boxes: int = 8) -> np.ndarray:
    """One class, before non-maximum suppression: [1, 4 + 1, boxes]."""
    output = np.zeros((1, 5, boxes), np.float32)
    for i, ((cx, cy, w, h), score) in enumerate(found):
        output[0, :, i] = [cx, cy, w, h, score]
    return output


def put_in_cache(cache: Path, repo: str, model: str, proto: ModelProto) -> None:
    """Where `hf download` leaves a file: models--<owner>--<name>/snapshots/<revision>/<path>."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    revision = "0" * 40
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(revision)
    model_file = folder / "snapshots" / revision / model / "model.onnx"
    model_file.parent.mkdir(parents=True)
    onnx.save(proto, model_file)


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Hugging Face hub cache holding the two default models."""
    cache = tmp_path_factory.mktemp("hf-cache")
    heads = constant_yolo_model(yolov8_output(HEADS), ["head"])
    put_in_cache(cache, "deepghs/anime_head_detection", "head_detect_v2.0_n", heads)
    bodies = constant_yolo_model(yolov8_output(BODIES), ["person"])
    put_in_cache(cache, "deepghs/anime_person_detection", "person_detect_v1.1_n", bodies)
    return cache


@pytest.fixture
def cached(model_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(model_cache))
    return model_cache


def test_known_boxes_in_known_boxes_out(cached: Path) -> None:
    detector = AnimeDetector(AnimeDetectorConfig(name="anime", target="head"))
    images = [np.asarray(scene_image(i, (400, 300))) for i in range(3)]

    found = detector.detect(images)

    # The model sees every frame stretched to 640 x 640, so a box is the same fraction of any
    # frame. The 0.01 box is under the stored score floor.
    expected = [(0.45, 0.2, 0.55, 0.3, 0.9), (0.125, 0.75, 0.1875, 0.8125, 0.2)]
    for boxes in found:
        assert all(isinstance(box, Box) and box.label == "head" for box in boxes)
        assert [(b.x1, b.y1, b.x2, b.y2, b.score) for b in boxes] == [pytest.approx(e, abs=1e-6) for e in expected]
    assert detector.key == "anime-head" and detector.signature == "anime:head_detect_v2.0_n:640x640"


def test_overlapping_boxes_are_one_find_and_the_best_score_stays() -> None:
    raw = yolov8_output([((320, 320, 100, 100), 0.5), ((325, 322, 100, 100), 0.8), ((100, 100, 50, 50), 0.3)])
    boxes = decode(raw[0], (INPUT, INPUT), ["head"])
    assert [round(box.score, 2) for box in boxes] == [0.8, 0.3]
    assert non_max_suppression(
        np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30.0]]), np.array([0.9, 0.8, 0.7]), 0.5
    ) == [0, 2]


def test_an_end_to_end_model_output_and_several_classes_decode_too() -> None:
    end_to_end = np.array([[64, 32, 128, 96, 0.7, 1], [0, 0, 64, 64, 0.02, 0]], np.float32)
    (box,) = decode(end_to_end, (INPUT, INPUT), ["head", "face"])
    assert (box.x1, box.y1, box.x2, box.y2, box.label) == (0.1, 0.05, 0.2, 0.15, "face")
    two_classes = np.zeros((6, 4), np.float32)
    two_classes[:, 0] = [320, 320, 64, 64, 0.1, 0.6]  # the second class scores higher
    (box,) = decode(two_classes, (INPUT, INPUT), ["head", "face"])
    assert box.label == "face" and box.score == pytest.approx(0.6)


def test_the_default_filter_is_both_anime_detectors(cached: Path) -> None:
    assert [detector.key for detector in FilterConfig().detectors] == ["anime-head", "anime-person"]
    assert FilterConfig().mode == "any"
    person = AnimeDetector(AnimeDetectorConfig(name="imgutils", target="person"))  # the old name still works
    (boxes,) = person.detect([np.zeros((90, 160, 3), np.uint8)])
    assert [(round(b.x1, 4), round(b.y2, 4), b.label) for b in boxes] == [(0.3438, 0.8125, "person")]


def test_a_cached_model_loads_while_the_hub_is_unreachable(cached: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)  # as on a machine nobody told it is offline
    monkeypatch.setattr(hub, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: connection refused

    detector = AnimeDetector(AnimeDetectorConfig(name="anime", target="head"))

    assert len(detector.detect([np.zeros((100, 100, 3), np.uint8)])[0]) == 2


def test_a_model_missing_offline_is_one_line_naming_repo_cache_and_the_way_around(
    cached: Path, monkeypatch: pytest.MonkeyPatch, project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    scene_image(1).save(project.frames / "a.png", compress_level=1)
    project.write_config(
        "filter:\n  detectors: [{name: anime, target: head, model: head_detect_v2.0_m}]\n", person_filter=True
    )

    assert project.cli() == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot fetch the model deepghs/anime_head_detection/head_detect_v2.0_m/model.onnx")
    assert "hf download deepghs/anime_head_detection --include 'head_detect_v2.0_m/*'" in err
    assert str(cached) in err and "--skip-filter" in err and "\n" not in err
    assert not (project.root / "work").exists()  # before any work


def test_yolo_and_anime_together_each_with_its_own_threshold(project: Project, cached: Path) -> None:
    for i in range(3):
        scene_image(i, person=True).save(project.frames / f"f{i}.png", compress_level=1)

    def run(head_confidence: float) -> list[str]:
        project.write_config(
            "filter:\n  detectors:\n    - {name: yolo, confidence: 0.5}\n"
            f"    - {{name: anime, target: head, confidence: {head_confidence}}}\nresize:\n  size: 256\n",
            person_filter=True,
        )
        asyncio.run(Pipeline(load_config(project.config_path), keys=[], detectors=[yolo, head]).run())
        with sqlite3.connect(project.root / "work" / "state.sqlite") as db:
            return [status for (status,) in db.execute("SELECT filter_status FROM images ORDER BY id")]

    yolo = StubDetector(score=0.3)  # under its 0.5
    yolo.key = "yolo"
    head = AnimeDetector(AnimeDetectorConfig(name="anime", target="head"))  # 0.9 and 0.2 boxes
    assert run(head_confidence=0.95) == ["rejected"] * 3
    assert run(head_confidence=0.85) == ["kept"] * 3  # re-decided from the stored boxes
    assert yolo.calls == 1

    with sqlite3.connect(project.root / "work" / "state.sqlite") as db:
        (detections,) = db.execute("SELECT detections FROM images LIMIT 1").fetchone()
    stored = json.loads(detections)
    assert stored["anime-head"]["signature"] == "anime:head_detect_v2.0_n:640x640"
    assert [round(row[4], 2) for row in stored["anime-head"]["boxes"]] == [0.9, 0.2]
    assert [row[5] for row in stored["yolo"]["boxes"]] == ["person"]
