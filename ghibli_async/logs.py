"""structlog set-up for the CLI: readable console lines, or JSON lines with `--log-json`.

Lines go through `tqdm.write`, so they print above the progress bars instead of through them.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog
from tqdm.auto import tqdm


class _ProgressSafeLogger:
    """A structlog logger that prints one line to stderr without breaking a live progress bar."""

    def msg(self, message: str) -> None:
        tqdm.write(message, file=sys.stderr)

    debug = info = warning = warn = error = critical = exception = msg


def configure_logging(*, json_lines: bool = False, verbose: bool = False) -> None:
    renderer: Any = (
        structlog.processors.JSONRenderer(ensure_ascii=False)
        if json_lines
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso" if json_lines else "%H:%M:%S", utc=json_lines),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG if verbose else logging.INFO),
        logger_factory=lambda *args: _ProgressSafeLogger(),
        cache_logger_on_first_use=False,
    )
