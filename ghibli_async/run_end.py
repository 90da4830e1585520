"""How a run ended, as the exit code a script or cron reads, and the summary's last line in words."""

from __future__ import annotations

from enum import IntEnum


class RunEnd(IntEnum):
    """Exit codes. 2 (usage or config error) and 130 (Ctrl-C) come from the CLI itself."""

    DONE = 0  # everything this run could do is done
    FAILED = 1  # images failed, or the caption service kept failing: see the summary, rerun later
    QUOTA = 3  # every quota is spent with images left: rerun after the reset time
    NO_KEYS = 4  # no usable key or model: fix the keys or the model list
    INTERRUPTED = 130  # Ctrl-C: the requests in flight were let land; rerun to continue
    TERMINATED = 143  # SIGTERM (kill, docker stop, systemd), handled as Ctrl-C

    @property
    def severity(self) -> int:
        """Which end wins when stages end differently: what needs the user most comes first."""
        order = {RunEnd.DONE: 0, RunEnd.QUOTA: 1, RunEnd.FAILED: 2, RunEnd.NO_KEYS: 3}
        return order.get(self, 4)  # a stop the user asked for says the most


def worst(ends: list[RunEnd]) -> RunEnd:
    return max(ends, key=lambda end: end.severity, default=RunEnd.DONE)
