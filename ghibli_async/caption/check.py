"""`check-keys`: one cheap request per key and model, to see what works before a long run."""

from __future__ import annotations

import asyncio
from contextlib import nullcontext
from dataclasses import dataclass

from aiolimiter import AsyncLimiter

from ghibli_async.caption.answers import NO_IMAGES, Answer, Blocked, KeyRejected, ModelUnavailable, RateLimited, Reply
from ghibli_async.caption.buckets import build_buckets
from ghibli_async.caption.clients import CaptionClients
from ghibli_async.config import GEMINI, ApiKey, CaptionConfig

STANDARD_KEY_HINT = (
    "Google refuses standard keys (AIza…) since 2026: create an auth key (AQ.…) in AI Studio and put it in .env"
)


def key_kind(key: ApiKey) -> str:
    """A Gemini key's kind, read from its prefix (the key itself is never shown)."""
    if key.provider != GEMINI:
        return "-"
    if key.secret.startswith("AQ."):
        return "auth"
    return "standard" if key.secret.startswith("AIza") else "unknown"


@dataclass(frozen=True)
class KeyCheck:
    key: str
    project: str
    model: str
    verdict: str  # ok, rate limited, quota spent, invalid key, model not found, unreachable
    detail: str
    kind: str = "-"  # a Gemini key's kind: auth, standard or unknown

    @property
    def works(self) -> bool:
        return self.verdict in ("ok", "rate limited")


async def check_keys(caption: CaptionConfig, keys: list[ApiKey]) -> list[KeyCheck]:
    """One ping per key and model, all at once except that the pings sharing a quota bucket (the
    keys of one project) are spaced 60/rpm seconds apart, so the check never trips the RPM limit
    it is checking. Even spacing is exactly what aiolimiter's AsyncLimiter(1, 60/rpm) gives.
    An OpenAI-compatible endpoint is first asked which models it serves: a model it does not
    list, or a key it refuses, costs no ping."""
    clients = CaptionClients(caption, keys)
    pacers = {
        (bucket.project, bucket.model): AsyncLimiter(1, 60 / bucket.limits.rpm)
        for bucket in build_buckets(caption, keys, day="", used_today={}, learned={})
        if bucket.limits.rpm is not None
    }
    try:
        listed = await _listed_models(clients, keys)

        async def ping(key: ApiKey, model: str) -> Reply:
            served = listed.get(key.label)
            if isinstance(served, KeyRejected):
                return served
            if isinstance(served, list) and served and model not in served:
                return ModelUnavailable(f"not among the {len(served)} models the endpoint lists")
            async with pacers.get((key.project, model)) or nullcontext():
                return await clients.ping(key.label, model)

        pairs = [(key, model.name) for key in keys for model in caption.models if model.provider == key.provider]
        replies = await asyncio.gather(*(ping(key, model) for key, model in pairs))
    finally:
        await clients.aclose()
    return [_check(key, model, reply) for (key, model), reply in zip(pairs, replies)]


def _check(key: ApiKey, model: str, reply: Reply) -> KeyCheck:
    verdict, detail = verdict_of(reply)
    kind = key_kind(key)
    if verdict == "invalid key" and kind == "standard":
        detail = f"{STANDARD_KEY_HINT}; {detail}"
    elif verdict == "invalid key":
        detail = f"check the key in .env (or make a new one); {detail}"
    return KeyCheck(key.label, key.project, model, verdict, detail, kind)


async def _listed_models(clients: CaptionClients, keys: list[ApiKey]) -> dict[str, list[str] | Reply]:
    """key label -> the models its OpenAI-compatible endpoint lists (or why it would not list them)."""
    compatible = [(key.label, client) for key in keys if (client := clients.openai(key.label)) is not None]
    answers = await asyncio.gather(*(client.list_models(label) for label, client in compatible))
    return {label: answer for (label, _), answer in zip(compatible, answers)}


def verdict_of(reply: Reply) -> tuple[str, str]:
    if isinstance(reply, Answer | Blocked):
        return "ok", ""
    if isinstance(reply, RateLimited):
        return ("quota spent" if reply.scope == "day" else "rate limited"), _short(reply.message.split("\n")[0])
    if isinstance(reply, KeyRejected):
        return "invalid key", _short(reply.reason)
    if isinstance(reply, ModelUnavailable):
        return ("no image input" if reply.reason.startswith(NO_IMAGES) else "model not found"), _short(reply.reason)
    return "unreachable", _short(reply.reason)


def _short(text: str, width: int = 120) -> str:
    """At most `width` characters, cut at a word boundary with an ellipsis, never mid-word."""
    if len(text) <= width:
        return text
    cut = text[: width - 1].rsplit(" ", 1)[0].rstrip(" ,;:")
    return f"{cut}…"


def format_checks(checks: list[KeyCheck]) -> str:
    width = max(len(check.model) for check in checks)
    key_width = max(8, *(len(check.key) for check in checks))
    project_width = max(10, *(len(check.project) for check in checks))
    lines = [f"{'key':<{key_width}} {'project':<{project_width}} {'model':<{width}}  {'kind':<8}  result"]
    for check in checks:
        detail = f"  ({check.detail})" if check.detail and not check.works else ""
        columns = f"{check.key:<{key_width}} {check.project:<{project_width}} {check.model:<{width}}  {check.kind:<8}"
        lines.append(f"{columns}  {check.verdict}{detail}")
    working = sum(check.works for check in checks)
    lines.append(f"{working} of {len(checks)} key/model pairs work.")
    return "\n".join(lines)
