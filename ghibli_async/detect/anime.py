"""Anime-trained YOLO detectors (deepghs' head and person models) run with onnxruntime.

The models are ONNX files `<model>/model.onnx` in the Hugging Face repos
deepghs/anime_head_detection and deepghs/anime_person_detection, exported by ultralytics: input
`images` [1, 3, H, W] (RGB in 0..1, the frame stretched to the model's size, read from the
model's `imgsz` metadata), output `output0` either [1, 4 + classes, N] (centre x, centre y,
width, height and one score per class, before non-maximum suppression) or [1, N, 6] (corners,
score, class: an end-to-end model). A model is fetched once when online, then read from the
Hugging Face cache without asking the hub (HF_HUB_OFFLINE=1 never asks; HF_HUB_CACHE points at a
copied cache). Boxes come back as fractions of the frame, which the stretch does not change.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import structlog
from PIL import Image

from ghibli_async.config import AnimeDetectorConfig
from ghibli_async.detect import SCORE_FLOOR
from ghibli_async.errors import UserError
from ghibli_async.facts import Box

log = structlog.get_logger(__name__)

NMS_IOU = 0.7  # boxes overlapping a better one more than this are the same find


class AnimeDetector:
    def __init__(self, config: AnimeDetectorConfig) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise UserError('the anime detectors need onnxruntime: pip install -e ".[detect]"') from None
        self.config = config
        self.key = config.key
        path = _model_file(config.repo, config.model_name)
        try:
            self._session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - a damaged or foreign file: onnxruntime raises its own kinds
            raise UserError(f"cannot read the model {path}: {type(exc).__name__}: {_first_line(exc)}") from None
        metadata = self._session.get_modelmeta().custom_metadata_map
        self.labels = model_labels(metadata)
        self.input_size = model_input_size(metadata)  # (height, width)
        self.signature = f"anime:{config.model_name}:{self.input_size[0]}x{self.input_size[1]}"
        log.info("anime_model_loaded", model=config.model_name, path=str(path))

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Box]]:
        return [self._boxes(image) for image in images]

    def _boxes(self, image: np.ndarray) -> list[Box]:
        (output,) = self._session.run(["output0"], {"images": model_input(image, self.input_size)})
        return decode(output[0], self.input_size, self.labels)


def model_input(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An RGB frame as the model takes it: stretched to `size` (height, width), [1, 3, H, W] in 0..1."""
    height, width = size
    stretched = Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR)
    return (np.asarray(stretched, np.float32).transpose(2, 0, 1) / 255.0)[None]


def decode(output: np.ndarray, size: tuple[int, int], labels: list[str]) -> list[Box]:
    """One image's raw output as boxes (fractions of the frame) from SCORE_FLOOR up, after
    non-maximum suppression, best first."""
    height, width = size
    if output.ndim == 2 and output.shape[1] == 6 and output.shape[0] != 4 + len(labels):  # end to end
        corners, scores, classes = output[:, :4], output[:, 4], output[:, 5].astype(int)
    else:  # [4 + classes, N]: centres and sizes, then a score per class
        rows = output.T
        class_scores = rows[:, 4:]
        classes, scores = class_scores.argmax(axis=1), class_scores.max(axis=1)
        cx, cy, w, h = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]
        corners = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    keep = scores >= SCORE_FLOOR
    corners, scores, classes = corners[keep], scores[keep], classes[keep]
    chosen = non_max_suppression(corners, scores, NMS_IOU)
    fractions = np.clip(corners / np.array([width, height, width, height], np.float64), 0.0, 1.0).tolist()
    return [Box(*_corners(fractions[i]), float(scores[i]), labels[classes[i]]) for i in chosen]


def _corners(row: list[float]) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = row
    return x1, y1, x2, y2


def non_max_suppression(corners: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """Indices of the boxes to keep, best first: each drops the later ones it overlaps more than `iou`."""
    order = list(np.argsort(-scores, kind="stable"))
    areas = np.prod(np.clip(corners[:, 2:] - corners[:, :2], 0, None), axis=1)
    kept: list[int] = []
    while order:
        best, rest = order[0], np.array(order[1:], dtype=int)
        kept.append(int(best))
        if not rest.size:
            break
        top_left = np.maximum(corners[best, :2], corners[rest, :2])
        bottom_right = np.minimum(corners[best, 2:], corners[rest, 2:])
        overlap = np.prod(np.clip(bottom_right - top_left, 0, None), axis=1)
        union = areas[best] + areas[rest] - overlap
        order = [int(i) for i, share in zip(rest, overlap / np.maximum(union, 1e-9)) if share <= iou]
    return kept


def model_labels(metadata: dict[str, str]) -> list[str]:
    """Class names from ultralytics' `names` metadata (a dict literal: {0: 'head'})."""
    try:
        names = ast.literal_eval(metadata["names"])
        return [str(names[i]) for i in range(len(names))]
    except (KeyError, ValueError, SyntaxError, TypeError) as exc:
        raise UserError(f"the model has no readable class names (`names` metadata): {exc}") from None


def model_input_size(metadata: dict[str, str]) -> tuple[int, int]:
    """(height, width) from ultralytics' `imgsz` metadata; 640 x 640 when it says nothing."""
    if "imgsz" not in metadata:
        return 640, 640
    height, width = json.loads(metadata["imgsz"])
    return int(height), int(width)


def _model_file(repo: str, model: str) -> Path:
    """The model's file: from the Hugging Face cache when it is there (the hub is not asked), else
    fetched once; offline without it, one line saying how to bring it."""
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

    filename = f"{model}/model.onnx"
    cached = try_to_load_from_cache(repo, filename)
    if isinstance(cached, str):
        return Path(cached)
    try:
        return Path(hf_hub_download(repo, filename))
    except Exception as exc:  # noqa: BLE001 - offline, no such model, the hub down: all say the same
        raise UserError(
            f"cannot fetch the model {repo}/{filename} ({type(exc).__name__}: {_first_line(exc)}); offline, run "
            f"`hf download {repo} --include '{model}/*'` on a connected machine and copy the Hugging Face cache "
            f"to {constants.HF_HUB_CACHE} (or point HF_HUB_CACHE at it)"
        ) from None


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:160]
