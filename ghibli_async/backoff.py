"""The one backoff formula: waits that grow by `multiplier` from `initial_s`, capped at `max_s`."""

from __future__ import annotations

from ghibli_async.config import BackoffConfig


def backoff_delay(backoff: BackoffConfig, failures: int) -> float:
    """The wait after the `failures`-th failure in a row (1, 2, …): initial, ×multiplier, … ≤ max."""
    return min(backoff.initial_s * backoff.multiplier ** max(0, failures - 1), backoff.max_s)
