"""Person detectors behind one small protocol: images in, boxes with score and label out.

A new backend is one class with `key`, `signature` and `detect`; `load_detectors` builds the
configured ones once per run and fails before any work, with one clear line, when one cannot load.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from ghibli_async.config import DetectorConfig, FilterConfig, YoloDetectorConfig
from ghibli_async.errors import UserError
from ghibli_async.facts import Box

# Boxes down to this score are stored, so a lower threshold later needs no second detector pass.
SCORE_FLOOR = 0.05


class Detector(Protocol):
    key: str  # what its boxes are stored under: the config's `key` (anime-head, anime-person, yolo)
    signature: str  # what stored boxes depend on (backend, weights, image size): a change reruns it

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Box]]:
        """One list of boxes per RGB image (H x W x 3, uint8)."""


def load_detectors(config: FilterConfig) -> list[Detector]:
    """Every configured detector, loaded now; a failure names the way to run without the filter."""
    try:
        return [_load(detector) for detector in config.detectors]
    except UserError as exc:
        raise UserError(
            f"{exc}; or run without the person filter: stages.filter: false in the config "
            "(--skip-filter on the command line)"
        ) from None


def _load(config: DetectorConfig) -> Detector:
    if isinstance(config, YoloDetectorConfig):
        from ghibli_async.detect.yolo import YoloDetector

        return YoloDetector(config)
    from ghibli_async.detect.anime import AnimeDetector

    return AnimeDetector(config)
