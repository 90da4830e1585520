"""Anime-trained YOLO detectors from dghs-imgutils (the `[imgutils]` extra): bodies or heads.

Their models are ONNX files in the Hugging Face repos deepghs/anime_person_detection and
deepghs/anime_head_detection: fetched once when online, then read from the Hugging Face cache
(HF_HUB_OFFLINE=1 never asks the hub; HF_HUB_CACHE points at a copied cache).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import structlog
from PIL import Image

from ghibli_async.config import ImgutilsDetectorConfig
from ghibli_async.detect import SCORE_FLOOR
from ghibli_async.errors import UserError
from ghibli_async.facts import Box

log = structlog.get_logger(__name__)

REPOS = {"person": "deepghs/anime_person_detection", "head": "deepghs/anime_head_detection"}


class ImgutilsDetector:
    def __init__(self, config: ImgutilsDetectorConfig) -> None:
        try:
            from imgutils.detect import detect_heads, detect_person
        except ImportError:
            raise UserError(
                'the imgutils detector needs dghs-imgutils (Python 3.12 or older): pip install -e ".[imgutils]" '
                "(or remove it from filter.detectors)"
            ) from None
        self.config = config
        self.key = config.key
        self.signature = f"imgutils:{config.model_name}:{config.image_size}"
        self._predict = detect_person if config.target == "person" else detect_heads
        # imgutils keeps one model per thread that calls it: one thread of our own loads it once.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.key)
        self._load()

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Box]]:
        return self._thread.submit(lambda: [self._boxes(image) for image in images]).result()

    def _boxes(self, image: np.ndarray) -> list[Box]:
        height, width = image.shape[:2]
        found = self._predict(Image.fromarray(image), model_name=self.config.model_name, conf_threshold=SCORE_FLOOR)
        return [
            Box(x1 / width, y1 / height, x2 / width, y2 / height, float(score), label)
            for (x1, y1, x2, y2), label, score in found
        ]

    def _load(self) -> None:
        """imgutils opens its model on the first call: make that call now, on a blank frame, so a
        model that cannot be had stops the run before any work. A cached model is read without
        asking the hub, so a machine offline (or with the hub unreachable) starts just the same."""
        from huggingface_hub import try_to_load_from_cache  # installed with dghs-imgutils

        repo, model = REPOS[self.config.target], self.config.model_name
        cached = isinstance(try_to_load_from_cache(repo, f"{model}/model.onnx"), str)
        try:
            with _hub_offline(cached):
                self.detect([np.zeros((64, 64, 3), np.uint8)])
        except Exception as exc:  # noqa: BLE001 - the hub, the cache and onnxruntime raise many kinds
            raise UserError(_cannot_load(repo, model, cached, exc)) from None
        log.info("imgutils_model_loaded", model=model, source="cache" if cached else "hub")


def _cannot_load(repo: str, model: str, cached: bool, exc: Exception) -> str:
    first_line = (str(exc).strip().splitlines() or [""])[0][:200]
    if cached:
        where = "from the Hugging Face cache"
    else:
        where = (
            f"(offline? on a connected machine run `hf download {repo} --include '{model}/*'`, "
            "then copy ~/.cache/huggingface/hub here or point HF_HUB_CACHE at it)"
        )
    return f"cannot load imgutils model {model} {where}: {type(exc).__name__}: {first_line}"


@contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """Hugging Face's offline switch (the HF_HUB_OFFLINE variable) for this block only: imgutils
    asks the hub for its model list first, and fails when the hub cannot be reached."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = before or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before
