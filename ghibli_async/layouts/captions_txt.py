"""`N.txt` beside each `N.jpg`, holding its caption (how kohya sd-scripts, ai-toolkit, OneTrainer
and SimpleTuner read captions), and TOML strings for the layouts' dataset files."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ghibli_async.state.results import CaptionedImage

TXT = re.compile(r"\d+\.txt")


def write_caption(folder: Path, item: CaptionedImage, text: str | None = None) -> None:
    (folder / f"{item.number}.txt").write_text(item.caption if text is None else text, encoding="utf-8")


def toml_string(text: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(text, ensure_ascii=False)
