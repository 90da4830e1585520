"""The imgutils (anime YOLO) detector: the real dghs-imgutils loading, from a Hugging Face cache
laid out as `hf download` leaves it, with an ONNX model built here. The model answers the same
boxes for every image, in the YOLOv8 output layout, so parsing can be checked to the pixel."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from conftest import Project, scene_image
from test_filter import StubDetector

pytest.importorskip("imgutils", reason="the imgutils detector needs the [imgutils] extra")
onnx = pytest.importorskip("onnx", reason="building the test model needs onnx (the [dev] extra)")

from huggingface_hub import constants as hub  # noqa: E402
from onnx import ModelProto, TensorProto, helper, numpy_helper  # noqa: E402

from ghibli_async.config import ImgutilsDetectorConfig, load_config  # noqa: E402
from ghibli_async.detect.anime import ImgutilsDetector  # noqa: E402
from ghibli_async.errors import UserError  # noqa: E402
from ghibli_async.facts import Box  # noqa: E402
from ghibli_async.pipeline import Pipeline  # noqa: E402

INPUT = 640
# (centre x, centre y, width, height) in the model's 640 px input, and the score.
HEADS = [((320, 160, 64, 64), 0.9), ((100, 500, 40, 40), 0.2), ((600, 600, 20, 20), 0.01)]


def constant_yolo_model(label: str, found: list[tuple[tuple[int, int, int, int], float]]) -> ModelProto:
    """A one-class YOLOv8-shaped model (images -> output0 [1, 4 + 1, boxes]) with ultralytics'
    metadata (`names`, `imgsz`), which is what imgutils reads."""
    output = np.zeros((1, 5, 8), np.float32)
    for i, ((cx, cy, w, h), score) in enumerate(found):
        output[0, :, i] = [cx, cy, w, h, score]
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["output0"], value=numpy_helper.from_array(output))],
        "constant_yolo",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, INPUT, INPUT])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(output.shape))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"names": repr({0: label}), "imgsz": f"[{INPUT}, {INPUT}]"})
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Hugging Face hub cache holding deepghs/anime_head_detection's head_detect_v2.0_s."""
    cache = tmp_path_factory.mktemp("hf-cache")
    repo = cache / "models--deepghs--anime_head_detection"
    revision = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    model_file = repo / "snapshots" / revision / "head_detect_v2.0_s" / "model.onnx"
    model_file.parent.mkdir(parents=True)
    onnx.save(constant_yolo_model("head", HEADS), model_file)
    return cache


@pytest.fixture
def cached(model_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(model_cache))
    return model_cache


@pytest.fixture(autouse=True)
def _fresh_imgutils() -> None:
    """imgutils keeps, per process, what it learnt of each repo (models, whether the hub answered):
    every test starts as a new process would."""
    from imgutils.generic.yolo import _open_models_for_repo_id

    _open_models_for_repo_id.cache_clear()


def test_boxes_come_back_as_fractions_of_the_frame(cached: Path) -> None:
    detector = ImgutilsDetector(ImgutilsDetectorConfig(name="imgutils", target="head"))
    images = [np.asarray(scene_image(i, (400, 300))) for i in range(3)]

    found = detector.detect(images)

    # The model sees every frame stretched to 640 x 640; boxes map back to the frame's own size
    # (imgutils rounds them to whole pixels). The 0.01 box is under the stored score floor.
    expected = [(0.45, 0.2, 0.55, 0.3, 0.9), (0.125, 0.75, 0.1875, 0.8125, 0.2)]
    for boxes in found:
        assert all(isinstance(box, Box) and box.label == "head" for box in boxes)
        assert [(b.x1, b.y1, b.x2, b.y2, b.score) for b in boxes] == [pytest.approx(e, abs=1 / 300) for e in expected]
    assert detector.key == "imgutils-head" and detector.signature == "imgutils:head_detect_v2.0_s:640"


def test_a_cached_model_loads_while_the_hub_is_unreachable(cached: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)  # as on a machine nobody told it is offline
    monkeypatch.setattr(hub, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: connection refused

    detector = ImgutilsDetector(ImgutilsDetectorConfig(name="imgutils", target="head"))

    assert len(detector.detect([np.zeros((100, 100, 3), np.uint8)])[0]) == 2
    assert hub.HF_HUB_OFFLINE is False  # the user's setting is back once the model is loaded


def test_a_model_missing_from_the_cache_is_one_clear_line(cached: Path) -> None:
    with pytest.raises(UserError) as caught:
        ImgutilsDetector(ImgutilsDetectorConfig(name="imgutils", target="head", model="head_detect_v2.0_m"))

    message = str(caught.value)
    assert message.startswith("cannot load imgutils model head_detect_v2.0_m (offline?")
    assert "hf download deepghs/anime_head_detection --include 'head_detect_v2.0_m/*'" in message
    assert "\n" not in message


def test_yolo_and_imgutils_together_each_with_its_own_threshold(project: Project, cached: Path) -> None:
    for i in range(3):
        scene_image(i, person=True).save(project.frames / f"f{i}.png", compress_level=1)

    def run(head_confidence: float) -> list[str]:
        project.write_config(
            "filter:\n  detectors:\n    - {name: yolo, confidence: 0.5}\n"
            f"    - {{name: imgutils, target: head, confidence: {head_confidence}}}\nresize:\n  size: 256\n",
            person_filter=True,
        )
        asyncio.run(Pipeline(load_config(project.config_path), keys=[], detectors=[yolo, head]).run())
        with sqlite3.connect(project.root / "work" / "state.sqlite") as db:
            return [status for (status,) in db.execute("SELECT filter_status FROM images ORDER BY id")]

    yolo = StubDetector(score=0.3)  # under its 0.5
    head = ImgutilsDetector(ImgutilsDetectorConfig(name="imgutils", target="head"))  # 0.9 and 0.2 boxes
    assert run(head_confidence=0.95) == ["rejected"] * 3
    assert run(head_confidence=0.85) == ["kept"] * 3  # re-decided from the stored boxes
    assert yolo.calls == 1

    with sqlite3.connect(project.root / "work" / "state.sqlite") as db:
        (detections,) = db.execute("SELECT detections FROM images LIMIT 1").fetchone()
    stored = json.loads(detections)
    assert stored["imgutils-head"]["signature"] == "imgutils:head_detect_v2.0_s:640"
    assert [round(row[4], 2) for row in stored["imgutils-head"]["boxes"]] == [0.9, 0.2]
    assert [row[5] for row in stored["yolo"]["boxes"]] == ["person"]


def test_cli_stops_before_any_work_when_the_model_is_missing(
    project: Project, cached: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scene_image(1).save(project.frames / "a.png", compress_level=1)
    project.write_config("filter:\n  detectors: [{name: imgutils, target: person}]\n", person_filter=True)

    assert project.cli() == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot load imgutils model person_detect_v1.1_s") and "\n" not in err
    assert not (project.root / "work").exists()
