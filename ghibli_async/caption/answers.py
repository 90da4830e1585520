"""What a caption service answered, as plain values every provider's client returns.

The reducer decides by these types alone, so the scheduler, the state and the reports never
depend on which provider (or SDK exception) produced an answer.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Answer:
    text: str
    tokens: int | None  # what the request counts against a tokens-per-minute limit (Gemini: its input)


@dataclass(frozen=True)
class Blocked:
    """A safety refusal: the request was served (and counted), but no caption came back."""

    reason: str
    tokens: int | None


@dataclass(frozen=True)
class RateLimited:
    """429. `scope` is `minute`, `day` or `tokens` (input tokens per minute); `quota_value` is the
    limit the server named, when it named one."""

    scope: str
    retry_after: float | None
    quota_value: int | None
    message: str


@dataclass(frozen=True)
class KeyRejected:
    reason: str


@dataclass(frozen=True)
class ModelUnavailable:
    """404 (retired or unknown model) or a 400 that says the request itself does not suit the model."""

    reason: str


@dataclass(frozen=True)
class PackRefused:
    """400: the model (or its server) takes one image per request; the frames go one at a time."""

    reason: str


@dataclass(frozen=True)
class TransientError:
    """5xx, timeout or a lost connection: worth another try after a pause. `server_full`: a 503
    from a server that is up but has no free slot (a local batching server)."""

    reason: str
    server_full: bool = False


NO_IMAGES = "the model does not take images"  # how a ModelUnavailable for a text-only model starts

Reply = Answer | Blocked | RateLimited | KeyRejected | ModelUnavailable | PackRefused | TransientError
