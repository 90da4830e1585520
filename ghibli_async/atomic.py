"""One way to write a file that a crash never leaves half-written: write a temporary file beside
it, then rename it over the target. Temporary names follow one rule, so a later run finds and
removes what a killed one left."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PARTIAL_SUFFIX = ".part"
_LEGACY_PARTIAL = re.compile(r"\..+\.\d+\.tmp")  # the export's temporary names before 0.2


@contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """A temporary path to write; it replaces `dest` when the block ends without an error."""
    temp = dest.with_name(f".{dest.name}.{os.getpid()}{PARTIAL_SUFFIX}")
    try:
        yield temp
        os.replace(temp, dest)
    finally:
        temp.unlink(missing_ok=True)


def is_partial(name: str) -> bool:
    return name.endswith(PARTIAL_SUFFIX) or _LEGACY_PARTIAL.fullmatch(name) is not None


def remove_partials(folder: Path) -> int:
    """Delete the temporary files a killed run left in `folder`; their work is still pending."""
    stale = [entry for entry in folder.iterdir() if is_partial(entry.name)]
    for entry in stale:
        entry.unlink(missing_ok=True)
    return len(stale)
