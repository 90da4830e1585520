"""musubi-tuner (kohya-ss; Wan, HunyuanVideo, FramePack, Qwen-Image): an image dataset given as
`musubi.jsonl` (`{"image_path", "caption"}` per image) and `musubi_dataset.toml` (its
`--dataset_config`), with buckets that never upscale and a latent cache beside the dataset."""

from __future__ import annotations

import json
import re
from typing import TextIO

from ghibli_async.config import Config
from ghibli_async.layouts import Folders, Layout
from ghibli_async.layouts.captions_txt import toml_string
from ghibli_async.state.results import CaptionedImage

JSONL_FILE, DATASET_FILE = "musubi.jsonl", "musubi_dataset.toml"


class MusubiWriter:
    def __init__(self, folders: Folders, config: Config) -> None:
        self._folders, self._config = folders, config
        self._file: TextIO = (folders.staging / JSONL_FILE).open("w", encoding="utf-8")

    def add(self, item: CaptionedImage) -> None:
        row = {"image_path": str(self._folders.final / f"{item.number}.jpg"), "caption": item.caption}
        self._file.write(json.dumps(row, ensure_ascii=False) + "\n")

    def close(self) -> None:
        self._file.close()
        final, size = self._folders.final, self._config.resize.size
        lines = [
            "[general]",
            f"resolution = [{size}, {size}]",
            "batch_size = 1",
            "enable_bucket = true",
            "bucket_no_upscale = true",
            "",
            "[[datasets]]",
            f"image_jsonl_file = {toml_string(str(final / JSONL_FILE))}",
            f"cache_directory = {toml_string(str(final.parent / (final.name + '_musubi_cache')))}",
        ]
        (self._folders.staging / DATASET_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")


LAYOUT = Layout("musubi", re.compile(f"{re.escape(JSONL_FILE)}|{re.escape(DATASET_FILE)}"), MusubiWriter)
