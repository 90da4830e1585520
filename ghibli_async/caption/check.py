"""`check-keys`: one cheap request per key and model, to see what works before a long run."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiolimiter import AsyncLimiter

from ghibli_async.caption.answers import Answer, Blocked, KeyRejected, ModelUnavailable, RateLimited, Reply
from ghibli_async.caption.buckets import build_buckets
from ghibli_async.caption.gemini import GeminiClient
from ghibli_async.config import ApiKey, CaptionConfig


@dataclass(frozen=True)
class KeyCheck:
    key: str
    project: str
    model: str
    verdict: str  # ok, rate limited, quota spent, invalid key, model not found, unreachable
    detail: str

    @property
    def works(self) -> bool:
        return self.verdict in ("ok", "rate limited")


async def check_keys(caption: CaptionConfig, keys: list[ApiKey]) -> list[KeyCheck]:
    """One ping per key and model, all at once except that the pings sharing a quota bucket (the
    keys of one project) are spaced 60/rpm seconds apart, so the check never trips the RPM limit
    it is checking. Even spacing is exactly what aiolimiter's AsyncLimiter(1, 60/rpm) gives."""
    client = GeminiClient(caption, keys)
    pacers = {
        (bucket.project, bucket.model): AsyncLimiter(1, 60 / bucket.limits.rpm)
        for bucket in build_buckets(caption, keys, day="", used_today={}, learned={})
    }

    async def ping(key: ApiKey, model: str) -> Reply:
        async with pacers[(key.project, model)]:
            return await client.ping(key.label, model)

    pairs = [(key, model.name) for key in keys for model in caption.models]
    try:
        replies = await asyncio.gather(*(ping(key, model) for key, model in pairs))
    finally:
        await client.aclose()
    return [KeyCheck(key.label, key.project, model, *_verdict(reply)) for (key, model), reply in zip(pairs, replies)]


def _verdict(reply: Reply) -> tuple[str, str]:
    if isinstance(reply, Answer | Blocked):
        return "ok", ""
    if isinstance(reply, RateLimited):
        return ("quota spent" if reply.scope == "day" else "rate limited"), reply.message.split("\n")[0][:120]
    if isinstance(reply, KeyRejected):
        return "invalid key", reply.reason[:120]
    if isinstance(reply, ModelUnavailable):
        return "model not found", reply.reason[:120]
    return "unreachable", reply.reason[:120]


def format_checks(checks: list[KeyCheck]) -> str:
    width = max(len(check.model) for check in checks)
    lines = [f"{'key':<8} {'project':<10} {'model':<{width}}  result"]
    for check in checks:
        detail = f"  ({check.detail})" if check.detail and not check.works else ""
        lines.append(f"{check.key:<8} {check.project:<10} {check.model:<{width}}  {check.verdict}{detail}")
    working = sum(check.works for check in checks)
    lines.append(f"{working} of {len(checks)} key/model pairs work.")
    return "\n".join(lines)
