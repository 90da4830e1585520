"""ai-toolkit (ostris): a folder of images with `N.txt` captions (`folder_path` in its config).
With `export.trigger_placeholder`, each caption starts with `[trigger]`, which ai-toolkit
replaces with its own `trigger_word`."""

from __future__ import annotations

from ghibli_async.config import Config
from ghibli_async.layouts import Folders, Layout
from ghibli_async.layouts.captions_txt import TXT, write_caption
from ghibli_async.state.results import CaptionedImage

PLACEHOLDER = "[trigger]"


class AiToolkitWriter:
    def __init__(self, folders: Folders, config: Config) -> None:
        self._folder, self._trigger = folders.staging, config.caption.trigger
        self._placeholder = config.export.trigger_placeholder

    def add(self, item: CaptionedImage) -> None:
        text = item.caption
        if self._placeholder and text.startswith(self._trigger):
            text = PLACEHOLDER + text[len(self._trigger) :]
        write_caption(self._folder, item, text)

    def close(self) -> None:
        pass


LAYOUT = Layout("ai_toolkit", TXT, AiToolkitWriter)
