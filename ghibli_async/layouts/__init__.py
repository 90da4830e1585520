"""Dataset layouts: each trainer's way of reading images and captions, written from the same state
into the same output folder (the images are shared; each layout adds its own files).

A layout is one module with a `LAYOUT` that says which files it manages in the output folder and
opens a writer over the staging folder the export builds; a new layout is that module (found here
by itself) and its name in `ExportConfig.layouts`.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ghibli_async.config import Config
from ghibli_async.state.results import CaptionedImage


class LayoutWriter(Protocol):
    def add(self, item: CaptionedImage) -> None:
        """One captioned image (its `N.jpg` is already in the folder), in number order."""

    def close(self) -> None:
        """Everything written: the files that sum up the dataset."""


@dataclass(frozen=True)
class Folders:
    """Where a layout writes (`staging`, swapped in at the end) and where its files will be read
    from (`final`: paths written into a layout's own files point there)."""

    staging: Path
    final: Path


@dataclass(frozen=True)
class Layout:
    name: str
    managed: re.Pattern[str]  # the file names it writes in the output folder (what a re-export replaces)
    open: Callable[[Folders, Config], LayoutWriter]


def all_layouts() -> dict[str, Layout]:
    """Every module of this package that defines a `LAYOUT`, by name."""
    modules = (importlib.import_module(f"{__name__}.{info.name}") for info in pkgutil.iter_modules(__path__))
    return {module.LAYOUT.name: module.LAYOUT for module in modules if hasattr(module, "LAYOUT")}


def chosen(config: Config) -> list[Layout]:
    layouts = all_layouts()
    return [layouts[name] for name in config.export.layouts]
