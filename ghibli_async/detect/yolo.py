"""YOLO person detector (ultralytics, COCO class `person`), from the `[yolo]` extra."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ghibli_async.config import YoloDetectorConfig
from ghibli_async.detect import SCORE_FLOOR
from ghibli_async.errors import UserError
from ghibli_async.facts import Box

_PERSON = "person"


class YoloDetector:
    key = "yolo"

    def __init__(self, config: YoloDetectorConfig) -> None:
        try:
            from ultralytics import YOLO
        except ImportError:
            raise UserError('the yolo detector needs ultralytics: pip install -e ".[yolo]"') from None
        self.config = config
        self.signature = f"yolo:{Path(config.weights).name}:{config.image_size}"
        self.device = _pick_device(config.device)
        self.model = _load_model(YOLO, config.weights)
        names = self.model.names
        self.person_class = next((i for i, label in names.items() if label == _PERSON), None)
        if self.person_class is None:
            raise UserError(f"{config.weights}: this model has no '{_PERSON}' class (it knows {len(names)} others)")

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Box]]:
        # ultralytics reads numpy arrays as BGR (OpenCV order); ours are RGB.
        results = self.model.predict(
            [image[:, :, ::-1] for image in images],
            imgsz=self.config.image_size,
            conf=SCORE_FLOOR,
            classes=[self.person_class],
            device=self.device,
            batch=self.config.batch_size,
            verbose=False,
        )
        return [_boxes(result) for result in results]


def _boxes(result) -> list[Box]:
    height, width = result.orig_shape
    boxes = result.boxes
    corners = boxes.xyxy.cpu().numpy() if len(boxes) else np.zeros((0, 4))
    scores = boxes.conf.cpu().numpy() if len(boxes) else np.zeros(0)
    return [
        Box(x1 / width, y1 / height, x2 / width, y2 / height, float(score), _PERSON)
        for (x1, y1, x2, y2), score in zip(corners.tolist(), scores.tolist())
    ]


def _load_model(yolo_class, weights: str):
    """A path must exist; a bare name (`yolo11n.pt`) is fetched by ultralytics when online."""
    if "/" in weights and not Path(weights).exists():
        raise UserError(f"YOLO weights not found: {weights} (put the file there or fix filter.detectors.weights)")
    try:
        return yolo_class(weights)
    except Exception as exc:  # noqa: BLE001 - ultralytics raises many kinds when it cannot fetch or read
        first_line = (str(exc).strip().splitlines() or [""])[0][:160]
        raise UserError(
            f"cannot load YOLO weights '{weights}' ({type(exc).__name__}: {first_line}); offline, copy "
            f"{Path(weights).name} (ultralytics' GitHub releases) next to the config or set filter.detectors.weights"
        ) from None


def _pick_device(wanted: str) -> str:
    if wanted != "auto":
        return wanted
    import torch

    if torch.cuda.is_available():
        return "cuda:0"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"
