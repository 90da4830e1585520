"""Quota buckets: one per (project, model), since Google counts limits per project, not per key
(an OpenAI-compatible key, or a keyless local server, is a project of its own).

Pure bookkeeping on times handed in by the caller; no I/O, no clock reads.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from ghibli_async.config import ApiKey, CaptionConfig, ModelQuota

WINDOW_S = 60.0
# A request reaches the server some time between sending it and the reply (a first request that
# opens the connection was seen 2 s late on a compressed clock). So a request holds its place in
# the RPM window from its send until 60 s after its reply, plus this margin for clock rounding:
# "at most rpm requests in any 60 s" then holds on the server's side too, at ~3% of throughput
# for 2 s answers.
WINDOW_MARGIN_S = 0.1
# A paced bucket spaces its requests PACING_SHARE x 60 s / rpm apart (spread over 54 s of each
# minute): without that slack, a request held back by a slow answer a minute before would push
# every later one back too (measured: 95% of the bound instead of 96%, bench_free_day).
PACING_SHARE = 0.9
PACIFIC = ZoneInfo("America/Los_Angeles")


def quota_day(wall: datetime) -> str:
    """Google's daily quotas reset at midnight Pacific time: the day a request counts for."""
    return wall.astimezone(PACIFIC).date().isoformat()


def seconds_into_quota_day(wall: datetime) -> float:
    """How long ago the midnight Pacific time that began `wall`'s quota day was."""
    began = datetime.combine(wall.astimezone(PACIFIC).date(), time(0), tzinfo=PACIFIC)
    return (wall - began).total_seconds()


def next_quota_reset(wall: datetime) -> datetime:
    """The next midnight Pacific time, as an aware datetime."""
    today = wall.astimezone(PACIFIC).date()
    return datetime.combine(today + timedelta(days=1), time(0), tzinfo=PACIFIC)


@dataclass(frozen=True)
class Limits:
    """None: the endpoint has no such limit."""

    rpm: int | None
    rpd: int | None
    tpm: int | None
    max_in_flight: int | None = None  # a local server's batching width, not a quota


@dataclass
class Bucket:
    """Requests of one project to one model: sliding-window RPM and TPM, a daily count, a cooldown."""

    project: str
    model: str
    limits: Limits
    keys: list[str]
    day: str = ""
    used_today: int = 0
    spent_day: str | None = None
    cooldown_until: float = float("-inf")
    strikes: int = 0
    retired: str | None = None
    paced: bool = False  # sends at most one request every 60 s / rpm (no burst at a window's start)
    _last_sent: float = float("-inf")
    _answered_at: deque[float] = field(default_factory=deque)  # requests back from the server, in order
    _in_flight: int = 0
    _tokens: deque[list[float]] = field(default_factory=deque)  # [sent at, tokens], oldest first
    _next_key: int = 0

    @property
    def name(self) -> str:
        return f"{self.project}/{self.model}"

    def start_day(self, day: str) -> None:
        """A new quota day: today's count starts again (the scheduler calls this before choosing)."""
        if day != self.day:
            self.day, self.used_today = day, 0

    def used_on(self, day: str) -> int:
        return self.used_today if day == self.day else 0

    def usable(self, day: str) -> bool:
        """Not retired, has a working key, and the quota of `day` is not spent (reads only)."""
        under_rpd = self.limits.rpd is None or self.used_on(day) < self.limits.rpd
        return self.retired is None and bool(self.keys) and self.spent_day != day and under_rpd

    def free_at(self, now: float, tokens_needed: int) -> float:
        """The earliest time (>= now) at which a request fits the RPM, TPM and cooldown; infinity
        while the bucket has its most requests in flight (an answer frees one)."""
        self._forget_before(now - WINDOW_S - WINDOW_MARGIN_S)
        if self.limits.max_in_flight is not None and self._in_flight >= self.limits.max_in_flight:
            return math.inf
        if self.limits.rpm is None:
            return max(now, self.cooldown_until, self._tpm_free_at(now, tokens_needed))
        rpm_free = now
        room = self.limits.rpm - self._in_flight  # requests in flight may arrive any moment: count them as now
        if room <= 0:
            rpm_free = now + WINDOW_S + WINDOW_MARGIN_S
        elif len(self._answered_at) >= room:
            rpm_free = self._answered_at[-room] + WINDOW_S + WINDOW_MARGIN_S
        paced_free = self._last_sent + PACING_SHARE * WINDOW_S / self.limits.rpm if self.paced else now
        return max(now, self.cooldown_until, rpm_free, paced_free, self._tpm_free_at(now, tokens_needed))

    def _tpm_free_at(self, now: float, tokens_needed: int) -> float:
        if self.limits.tpm is None:
            return now
        budget = self.limits.tpm - min(tokens_needed, self.limits.tpm)
        used = sum(amount for _, amount in self._tokens)
        if used <= budget:
            return now
        for at, amount in self._tokens:  # oldest first: when enough of them leave the window
            used -= amount
            if used <= budget:
                return at + WINDOW_S + WINDOW_MARGIN_S
        return now

    def keys_in_turn(self) -> list[str]:
        """The project's keys, starting after the one used last (round robin)."""
        start = self._next_key % len(self.keys)
        return self.keys[start:] + self.keys[:start]

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def take(self, now: float, key: str, tokens_reserved: int) -> None:
        """Record one request now, before it is sent."""
        self._in_flight += 1
        self._last_sent = now
        self._tokens.append([now, tokens_reserved])
        self.used_today += 1
        self._next_key = self.keys.index(key) + 1

    def untake(self, sent_at: float, tokens_reserved: int) -> None:
        """Undo a `take` whose request never went out."""
        self._in_flight -= 1
        self.used_today -= 1
        if [sent_at, tokens_reserved] in self._tokens:
            self._tokens.remove([sent_at, tokens_reserved])

    def restore_window(self, answered_at: list[float]) -> None:
        """Answers from before a restart, on this run's time scale, oldest first."""
        self._answered_at.extendleft(reversed(answered_at))

    def settle(self, now: float, *, refused: bool = False) -> None:
        """A request came back: from now on it counts at this time, the latest it can have arrived.
        One the server refused with a 429 does not count against the day (the server says so)."""
        if refused:
            self.used_today -= 1
        self._in_flight -= 1
        self._answered_at.append(now)

    def correct_tokens(self, sent_at: float, delta: int) -> None:
        """The reply's real token count replaces the reservation `take` made at `sent_at`: it counts
        from the send, as the server counted it, and leaves the window with it."""
        for entry in self._tokens:
            if entry[0] == sent_at:
                entry[1] += delta
                return

    def _forget_before(self, horizon: float) -> None:
        while self._answered_at and self._answered_at[0] < horizon:
            self._answered_at.popleft()
        while self._tokens and self._tokens[0][0] < horizon:
            self._tokens.popleft()


@dataclass(frozen=True)
class Grant:
    """Send the request now through `bucket` with `key`; the slot is already counted."""

    bucket: Bucket
    key: str
    tokens_reserved: int
    sent_at: float = 0.0


def build_buckets(
    caption: CaptionConfig,
    keys: list[ApiKey],
    *,
    day: str,
    used_today: dict[tuple[str, str], int],
    learned: dict[tuple[str, str], dict[str, int]],
    models: Sequence[ModelQuota] | None = None,
) -> list[Bucket]:
    """One bucket per (project, model) of `models` (default: every configured one), in priority
    order for `caption.route`.

    `model_first`: the best model in every project before any worse model; `key_first`: all
    models of the first project, then the next (the original scripts' order)."""
    projects: dict[tuple[str, str], list[str]] = {}
    for key in keys:
        projects.setdefault((key.project, key.provider), []).append(key.label)
    buckets = []
    for p_index, ((project, provider), labels) in enumerate(projects.items()):
        overrides = {quota.name: quota for quota in caption.project_limits.get(project, [])}
        for m_index, quota in enumerate(caption.models if models is None else models):
            if quota.provider != provider:
                continue
            limits = _limits(overrides.get(quota.name, quota), learned.get((project, quota.name), {}))
            bucket = Bucket(project, quota.name, limits, list(labels), day=day, paced=caption.even_pacing)
            bucket.used_today = used_today.get((project, quota.name), 0)
            order = (m_index, p_index) if caption.route == "model_first" else (p_index, m_index)
            buckets.append((order, bucket))
    return [bucket for _, bucket in sorted(buckets, key=lambda pair: pair[0])]


def _limits(quota: ModelQuota, learned: dict[str, int]) -> Limits:
    return Limits(
        rpm=learned.get("rpm", quota.rpm),
        rpd=learned.get("rpd", quota.rpd),
        tpm=learned.get("tpm", quota.tpm),
        max_in_flight=quota.max_in_flight,
    )
