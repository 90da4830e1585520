"""Hugging Face `imagefolder`: `N.jpg` and `metadata.jsonl` ({"file_name", "text"} per image), what
diffusers' `train_text_to_image_lora.py --train_data_dir` and `datasets.load_dataset("imagefolder")`
read."""

from __future__ import annotations

import json
import re
from typing import TextIO

from ghibli_async.config import Config
from ghibli_async.layouts import Folders, Layout
from ghibli_async.state.results import CaptionedImage

METADATA_FILE = "metadata.jsonl"


def metadata_line(item: CaptionedImage) -> str:
    """One `{"file_name", "text"}` object, UTF-8 as is (no \\u escapes)."""
    return json.dumps({"file_name": f"{item.number}.jpg", "text": item.caption}, ensure_ascii=False) + "\n"


class ImagefolderWriter:
    def __init__(self, folders: Folders, config: Config) -> None:
        self._path = folders.staging / METADATA_FILE
        self._file: TextIO | None = None  # no caption, no metadata file

    def add(self, item: CaptionedImage) -> None:
        if self._file is None:
            self._file = self._path.open("w", encoding="utf-8")
        self._file.write(metadata_line(item))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


LAYOUT = Layout("imagefolder", re.compile(re.escape(METADATA_FILE)), ImagefolderWriter)
