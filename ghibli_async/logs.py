"""structlog set-up: readable console lines, or JSON lines with `--log-json`; a library run gets
the CLI's set-up unless its caller made one.

Lines go through `tqdm.write`, so they print above the progress bars instead of through them.
A `run` also appends every line as JSON to a rotating file in the work dir (`log_file`), so a
service that runs for days leaves a record.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from datetime import datetime, timezone
from logging.handlers import RotatingFileHandler
from pathlib import Path
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
            _copy_to_file,
            structlog.processors.TimeStamper(fmt="iso" if json_lines else "%H:%M:%S", utc=json_lines),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG if verbose else logging.INFO),
        logger_factory=lambda *args: _ProgressSafeLogger(),
        cache_logger_on_first_use=False,
    )


LOG_FILE_BYTES = 10_000_000

_file_lines = logging.getLogger("ghibli_async.log_file")
_file_lines.propagate = False
_file_lines.setLevel(logging.DEBUG)
_as_json = structlog.processors.JSONRenderer(ensure_ascii=False, default=str)


def _copy_to_file(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Every line, also as a JSON line in the log file (when one is open), stamped in UTC."""
    if _file_lines.handlers:
        stamped = {"timestamp": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), **event}
        _file_lines.info(_as_json(logger, method, stamped))
    return event


class _LogFileHandler(RotatingFileHandler):
    """Makes its folder at the first line: a run that stops on a setup error leaves no work dir."""

    def _open(self):  # noqa: ANN202  (the stream type is the stdlib's)
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()

    def handleError(self, record: logging.LogRecord) -> None:
        """A log file that cannot be written must not stop the run (the run reports its own folders)."""


def configure_if_unset() -> None:
    """A library run (a notebook, a script) logs as the CLI does, info and up on stderr, unless
    the caller configured structlog itself (left alone, structlog prints every line, debug too,
    on stdout: a notebook cell got one output per request)."""
    if not structlog.is_configured():
        configure_logging()


@contextmanager
def log_file(path: Path) -> Iterator[None]:
    """Append the log to `path` (rotating past LOG_FILE_BYTES, five old files kept) while inside;
    when a log file is open already (the CLI's, around a whole service), lines keep going there."""
    if any(isinstance(handler, _LogFileHandler) for handler in _file_lines.handlers):
        yield
        return
    handler = _LogFileHandler(path, maxBytes=LOG_FILE_BYTES, backupCount=5, encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter("%(message)s"))
    _file_lines.addHandler(handler)
    try:
        yield
    finally:
        _file_lines.removeHandler(handler)
        handler.close()
