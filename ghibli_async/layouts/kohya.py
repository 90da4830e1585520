"""kohya sd-scripts: `N.txt` captions beside the images and `kohya_dataset.toml`, a dataset config
(`--dataset_config kohya_dataset.toml`) with aspect-ratio buckets that never upscale and
`keep_tokens` covering the trigger, so caption shuffling never moves it."""

from __future__ import annotations

import re

from ghibli_async.config import Config
from ghibli_async.layouts import Folders, Layout
from ghibli_async.layouts.captions_txt import TXT, toml_string, write_caption
from ghibli_async.state.results import CaptionedImage

DATASET_FILE = "kohya_dataset.toml"


def keep_tokens(trigger: str) -> int:
    """kohya's tokens are the comma-separated parts of a caption: the trigger's own."""
    return len(trigger.split(","))


class KohyaWriter:
    def __init__(self, folders: Folders, config: Config) -> None:
        self._folders, self._config = folders, config

    def add(self, item: CaptionedImage) -> None:
        write_caption(self._folders.staging, item)

    def close(self) -> None:
        resize = self._config.resize
        lines = [
            "[general]",
            "enable_bucket = true",
            "bucket_no_upscale = true",
            'caption_extension = ".txt"',
            f"keep_tokens = {keep_tokens(self._config.caption.trigger)}",
            "",
            "[[datasets]]",
            f"resolution = {resize.size}",
            "batch_size = 1",
            "",
            "  [[datasets.subsets]]",
            f"  image_dir = {toml_string(str(self._folders.final))}",
            "  num_repeats = 1",
        ]
        (self._folders.staging / DATASET_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")


LAYOUT = Layout("kohya", re.compile(f"{TXT.pattern}|{re.escape(DATASET_FILE)}"), KohyaWriter)
