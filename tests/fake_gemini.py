"""A local Gemini API that speaks the real REST wire format, for driving the real google-genai client.

`POST /v1beta/models/{model}:generateContent` with the key in `x-goog-api-key`. It enforces
per-(project, model) quotas the way Google does (requests per minute over a sliding window,
requests per Pacific day), on a clock shared with the engine under test, answers with the real
error bodies (429 QuotaFailure + Help + RetryInfo, 400 API_KEY_INVALID, 404, 503) and safety
blocks, and records every request it saw.
"""

from __future__ import annotations

import base64
import hashlib
import random
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web
from fake_packs import GIRL, PackAnswers, PackedFrame, frames_in, named_caption
from thread_server import serving_in_thread

from ghibli_async.clock import Clock

_RPC = "type.googleapis.com/google.rpc."


@dataclass
class ModelLimits:
    rpm: int = 1000
    rpd: int = 100_000
    tpm: int | None = None  # input tokens per minute
    plain: bool = False  # a hosted Gemma: 400 for a system instruction, JSON mode or a thinking config
    max_images: int | None = None  # 400 for a request with more images


# What a plain model names in its 400 for each request feature (generationConfig / request field).
_FEATURES = {
    "systemInstruction": "Developer instruction",
    "responseMimeType": "JSON mode",
    "thinkingConfig": "Thinking",
}


@dataclass
class Seen:
    """One request as the server saw it."""

    at: float
    project: str | None
    key: str
    model: str
    image: str  # sha256 of the (first) image's bytes
    status: int
    kind: str  # ok, blocked, minute, tokens, day, invalid_key, not_found, unavailable, feature, images
    images: tuple[str, ...] = ()  # every image's sha256, in the request's order


@dataclass
class FakeGemini:
    clock: Clock
    keys: dict[str, str]  # secret -> project
    models: dict[str, ModelLimits]
    latency: Callable[[], float] = lambda: 0.0
    blocked_images: set[str] = field(default_factory=set)  # sha256 of images the blocking models refuse
    blocking_models: set[str] | None = None  # which models refuse them (None: every model)
    unavailable_first: int = 0  # answer the first N requests with 503
    caption_words: int = 22
    captions: Callable[[str, str], str] | None = None  # (model, image sha256) -> the answer's text
    packs: PackAnswers = field(default_factory=PackAnswers)  # how packed requests are answered
    day_turns_late_s: float = 0.0  # the server's quota day turns this long after midnight Pacific
    seen: list[Seen] = field(default_factory=list)
    _windows: dict[tuple[str, str], deque[float]] = field(default_factory=dict)
    _days: dict[tuple[str, str, str], int] = field(default_factory=dict)
    _tokens: dict[tuple[str, str], deque[tuple[float, int]]] = field(default_factory=dict)
    base_url: str = ""
    _served: threading.Condition = field(default_factory=threading.Condition)

    # --- what tests ask ---------------------------------------------------------------------

    def successes(self) -> list[Seen]:
        return [s for s in self.seen if s.kind == "ok"]

    def wait_for_successes(self, count: int, timeout: float = 60.0) -> bool:
        """Block (another thread than the server's) until `count` requests were served."""
        with self._served:
            return self._served.wait_for(lambda: len(self.successes()) >= count, timeout)

    # --- the service ------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.Response:
        model = request.match_info["model"]
        key = request.headers.get("x-goog-api-key", "")
        body = await request.json()
        frames = frames_in(_parts(body))
        now = self.clock.now()
        project = self.keys.get(key)
        status, kind, payload, delay = self._refuse_features(model, body) or self._decide(
            project, model, frames, now, json_mode=bool(body.get("generationConfig", {}).get("responseMimeType"))
        )
        image = frames[0].image if frames else ""
        self.seen.append(Seen(now, project, key, model, image, status, kind, tuple(f.image for f in frames)))
        with self._served:
            self._served.notify_all()
        if delay:
            await self.clock.sleep(delay)
        return web.json_response(payload, status=status)

    def _refuse_features(self, model: str, body: dict[str, Any]) -> tuple[int, str, dict, float] | None:
        if model not in self.models or not self.models[model].plain:
            return None
        asked = {**body, **body.get("generationConfig", {})}
        for field_name, feature in _FEATURES.items():
            if asked.get(field_name):
                message = f"{feature} is not enabled for models/{model}"
                return 400, "feature", _error(400, "INVALID_ARGUMENT", message), 0.0
        return None

    def _decide(
        self, project: str | None, model: str, frames: list[PackedFrame], now: float, *, json_mode: bool
    ) -> tuple[int, str, dict, float]:
        if project is None:
            return 400, "invalid_key", _invalid_key(), 0.0
        if model not in self.models:
            return 404, "not_found", _not_found(model), 0.0
        if self.unavailable_first > 0:
            self.unavailable_first -= 1
            return (
                503,
                "unavailable",
                _error(503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
                0.0,
            )
        limits = self.models[model]
        if limits.max_images is not None and len(frames) > limits.max_images:
            message = f"Only {limits.max_images} image(s) are allowed in one request for models/{model}."
            return 400, "images", _error(400, "INVALID_ARGUMENT", message), 0.0
        window = self._windows.setdefault((project, model), deque())
        tokens = self._tokens.setdefault((project, model), deque())
        while window and window[0] <= now - 60:
            window.popleft()
        while tokens and tokens[0][0] <= now - 60:
            tokens.popleft()
        late = timedelta(seconds=self.day_turns_late_s)
        day = (self.clock.wall() - late).astimezone(ZoneInfo("America/Los_Angeles")).date().isoformat()
        if self._days.get((project, model, day), 0) >= limits.rpd:
            return 429, "day", _quota_exceeded(model, "GenerateRequestsPerDay", limits.rpd, retry_s=37), 0.0
        if len(window) >= limits.rpm:
            retry = max(1, round(window[0] + 60 - now))
            return 429, "minute", _quota_exceeded(model, "GenerateRequestsPerMinute", limits.rpm, retry_s=retry), 0.0
        prompt_tokens = _prompt_tokens(len(frames))
        if limits.tpm is not None and sum(n for _, n in tokens) + prompt_tokens > limits.tpm:
            retry = max(1, round(tokens[0][0] + 60 - now)) if tokens else 60
            exceeded = _quota_exceeded(model, "GenerateContentInputTokensPerModelPerMinute", limits.tpm, retry_s=retry)
            return 429, "tokens", exceeded, 0.0
        window.append(now)
        tokens.append((now, prompt_tokens))
        self._days[(project, model, day)] = self._days.get((project, model, day), 0) + 1
        if any(f.image in self.blocked_images for f in frames) and (
            self.blocking_models is None or model in self.blocking_models
        ):
            return 200, "blocked", _blocked(), self.latency()
        if len(frames) > 1:
            text, cut = self.packs.answer(frames, lambda image: self.caption_text(image, model), fenced=not json_mode)
            return 200, "ok", _response(model, text, len(frames), "MAX_TOKENS" if cut else "STOP"), self.latency()
        return (
            200,
            "ok",
            _response(model, self.caption_text(frames[0].image if frames else "", model), 1),
            self.latency(),
        )

    def caption_text(self, image: str, model: str) -> str:
        if self.captions is not None:
            return self.captions(model, image)
        return named_caption(image, GIRL, self.caption_words)

    # --- running it ---------------------------------------------------------------------------

    async def start(self) -> web.AppRunner:
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.router.add_post("/v1beta/models/{model}:generateContent", self.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}"
        return runner

    @contextmanager
    def serving_in_thread(self) -> Iterator[FakeGemini]:
        """Serve from a thread with its own event loop (for a CLI run in another process)."""
        with serving_in_thread(self.start):
            yield self


def realistic_latency(median_s: float = 2.0, seed: int = 0) -> Callable[[], float]:
    """Log-normal answer times around `median_s`, like generateContent on a small image."""
    rng = random.Random(seed)
    return lambda: rng.lognormvariate(0, 0.35) * median_s


def _parts(body: dict[str, Any]) -> list[tuple[str, str]]:
    """The request's parts in order: ("text", text) or ("image", sha256). The SDK sends
    `inlineData` (camelCase), older ones `inline_data`: accept both."""
    parts = []
    for content in body.get("contents", []):
        for part in content.get("parts", []):
            inline = part.get("inlineData") or part.get("inline_data")
            if inline:
                data = inline["data"]  # the SDK sends URL-safe base64, sometimes without padding
                digest = hashlib.sha256(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))).hexdigest()
                parts.append(("image", digest))
            elif "text" in part:
                parts.append(("text", part["text"]))
    return parts


def _prompt_tokens(images: int) -> int:
    return 70 + 258 * images  # the prompt, and 258 tokens per small image


def _response(model: str, text: str, frames: int, finish: str = "STOP") -> dict[str, Any]:
    prompt, answer = _prompt_tokens(frames), 40 * frames
    return {
        "candidates": [{"content": {"parts": [{"text": text}], "role": "model"}, "finishReason": finish, "index": 0}],
        "usageMetadata": {
            "promptTokenCount": prompt,
            "candidatesTokenCount": answer,
            "totalTokenCount": prompt + answer,
        },
        "modelVersion": model,
    }


def _error(code: int, status: str, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    return {"error": error}


def _quota_exceeded(model: str, per: str, value: int, *, retry_s: int) -> dict[str, Any]:
    quota_id = f"{per}PerProjectPerModel-FreeTier"
    message = (
        f"You exceeded your current quota, please check your plan and billing details. "
        f"* Quota exceeded for metric: generativelanguage.googleapis.com/generate_content_free_tier_requests, "
        f"limit: {value}, model: {model}\nPlease retry in {retry_s}.0s."
    )
    return _error(
        429,
        "RESOURCE_EXHAUSTED",
        message,
        [
            {
                "@type": _RPC + "QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                        "quotaId": quota_id,
                        "quotaDimensions": {"location": "global", "model": model},
                        "quotaValue": str(value),
                    }
                ],
            },
            {
                "@type": _RPC + "Help",
                "links": [
                    {
                        "description": "Learn more about Gemini API quotas",
                        "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                    }
                ],
            },
            {"@type": _RPC + "RetryInfo", "retryDelay": f"{retry_s}s"},
        ],
    )


def _invalid_key() -> dict[str, Any]:
    message = "API key not valid. Please pass a valid API key."
    return _error(
        400,
        "INVALID_ARGUMENT",
        message,
        [
            {
                "@type": _RPC + "ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            },
            {"@type": _RPC + "LocalizedMessage", "locale": "en-US", "message": message},
        ],
    )


def _not_found(model: str) -> dict[str, Any]:
    return _error(
        404,
        "NOT_FOUND",
        f"models/{model} is not found for API version v1beta, or is not supported for generateContent. "
        "Call ListModels to see the list of available models and their supported methods.",
    )


def _blocked() -> dict[str, Any]:
    return {
        "promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
        "usageMetadata": {"promptTokenCount": 330, "totalTokenCount": 330},
        "modelVersion": "fake",
    }
