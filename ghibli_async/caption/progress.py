"""The caption progress line: captions done of the images taken, the other outcomes apart, the
rate over the last minutes, and, while the run waits for quota, which bucket and until when."""

from __future__ import annotations

from collections import Counter, deque
from datetime import datetime

from tqdm.auto import tqdm

from ghibli_async.clock import Clock

RATE_WINDOW_S = 300.0  # the rate shown is over the last 5 minutes: a run's speed changes with its buckets
_CAPTIONED = ("done", "review")


class CaptionProgress:
    def __init__(self, total: int, clock: Clock) -> None:
        self._clock = clock
        self._started = clock.now()
        self._total = total
        self._captioned_at: deque[float] = deque()
        self._others: Counter[str] = Counter()
        self._waiting: str | None = None
        self._closing = False
        self._bar = tqdm(
            total=total, desc="caption", bar_format="{desc}: {n}/{total} captioned |{bar:20}|{postfix}"
        )  # tqdm puts ", " first

    def finished(self, outcome: str) -> None:
        """One image's end in this run (done, review, blocked, failed, left)."""
        if outcome in _CAPTIONED:
            self._captioned_at.append(self._clock.now())
            self._bar.update()
        else:
            self._others[outcome] += 1
        self._show(refresh=False)

    def waiting_for(self, bucket: str, seconds: float) -> None:
        """Every worker waits: say for which bucket and until when (local time), at once."""
        until = datetime.fromtimestamp(self._clock.wall().timestamp() + seconds).astimezone()
        note = f"waiting for quota: {bucket} until {until:%H:%M:%S}"
        if note != self._waiting:
            self._waiting = note
            self._show(refresh=True)

    def working(self) -> None:
        if self._waiting is not None:
            self._waiting = None
            self._show(refresh=True)

    def close(self) -> None:
        self._waiting = None
        self._closing = True  # no time left to estimate
        self._show(refresh=False)
        self._bar.close()

    def _show(self, *, refresh: bool) -> None:
        self._bar.set_postfix_str(self._note(), refresh=refresh)

    def _note(self) -> str:
        now = self._clock.now()
        while self._captioned_at and self._captioned_at[0] < now - RATE_WINDOW_S:
            self._captioned_at.popleft()
        parts = [f"{outcome} {n}" for outcome, n in sorted(self._others.items())]
        if now - self._started < 60:  # no rate, and no estimate, from a few seconds
            return ", ".join([*parts, *([self._waiting] if self._waiting else [])])
        window_min = min(RATE_WINDOW_S, now - self._started) / 60
        rate = len(self._captioned_at) / window_min
        parts.append(f"{rate:.1f}/min over the last {round(window_min)} min")
        left = self._total - self._bar.n - sum(self._others.values())
        if self._waiting:
            parts.append(self._waiting)  # no ETA: the rate is the quota's, not the run's
        elif rate > 0 and left and not self._closing:
            parts.append(f"about {max(1, round(left / rate))} min left at this rate")
        return ", ".join(parts)
