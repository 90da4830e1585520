"""Notices frames and videos that appear in (or change under) the input folder, for `run --watch`.

File events come from `watchfiles` (inotify, FSEvents, ReadDirectoryChangesW), or from polling
where events do not arrive (network drives, some Docker volumes: `--poll`). Its notifier keeps
recording between questions, so frames copied in while a pass works are seen when it ends.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from watchfiles import Change, watch

from ghibli_async.inputs import IMAGE_SUFFIXES, VIDEO_SUFFIXES

POLL_MS = 200  # how long one question blocks a worker thread when nothing changes (5 wake-ups a second idle)


class InputWatcher:
    """`await changed()`: did frames or videos appear or change since the last question?
    `await quiet()`: wait until nothing has changed for `settle_s` (a copy has finished)."""

    def __init__(
        self, folder: Path, *, ignore: tuple[Path, ...] = (), force_polling: bool = False, settle_s: float = 5.0
    ) -> None:
        self._stop = threading.Event()
        self._quiet_rounds = max(1, round(settle_s * 1000 / POLL_MS))
        self._changes: Iterator[set[tuple[Change, str]]] = watch(
            folder.absolute(),
            watch_filter=frames_and_videos(folder, ignore),
            stop_event=self._stop,
            rust_timeout=POLL_MS,
            yield_on_timeout=True,
            force_polling=force_polling or None,  # None: watchfiles' own default (WATCHFILES_FORCE_POLLING)
            raise_interrupt=False,
        )

    async def changed(self) -> bool:
        """One question (blocks a worker thread for at most POLL_MS when nothing changed)."""
        if self._stop.is_set():
            return False
        nothing: set[tuple[Change, str]] = set()
        changes = await asyncio.get_running_loop().run_in_executor(None, next, self._changes, nothing)
        return bool(changes)

    async def quiet(self) -> None:
        """Until nothing changed for `settle_s`: a copy in progress has finished."""
        quiet = 0
        while quiet < self._quiet_rounds and not self._stop.is_set():
            quiet = 0 if await self.changed() else quiet + 1

    def close(self) -> None:
        """Ends the watch: a question in flight returns within POLL_MS."""
        self._stop.set()


def frames_and_videos(folder: Path, ignore: tuple[Path, ...]) -> Callable[[Change, str], bool]:
    """Added or modified frame and video files under `folder`, none of their names hidden (as the
    scan skips them), outside the folders the tool writes itself."""
    suffixes = IMAGE_SUFFIXES | VIDEO_SUFFIXES
    root = folder.absolute()  # the notifier reports paths under the folder as it was given
    ignored = tuple(other.absolute() for other in ignore)

    def wanted(change: Change, path: str) -> bool:
        file = Path(path)
        return (
            change != Change.deleted
            and file.suffix.lower() in suffixes
            and file.is_relative_to(root)
            and not any(part.startswith(".") for part in file.relative_to(root).parts)
            and not any(file.is_relative_to(other) for other in ignored)
        )

    return wanted
