"""A local OpenAI-compatible server (chat completions with images, model list) that speaks the real
wire format, for driving the real `openai` SDK: `error` objects, `Retry-After` and `x-ratelimit-*`
headers, `finish_reason: content_filter`, 401/404/400 as vLLM, Ollama and OpenAI send them.

It can stand for a hosted API (keys, a requests-per-minute limit) or a local GPU server (no key,
answers that take longer the more requests are in flight, as a batching server's do). It records
every request and the most it ever had in flight at once.
"""

from __future__ import annotations

import base64
import hashlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from fake_packs import BOY, PackAnswers, PackedFrame, frames_in, named_caption

from ghibli_async.clock import Clock


@dataclass
class ServedModel:
    rpm: int | None = None
    vision: bool = True
    max_images: int | None = None  # vLLM's --limit-mm-per-prompt: 400 for a request with more images
    json_mode: bool = True  # False: 400 for a response_format


@dataclass
class Seen:
    at: float
    key: str | None
    model: str
    image: str  # sha256 of the (first) image's bytes ("" for a text-only request)
    status: int
    kind: str  # ok, filtered, minute, invalid_key, not_found, no_images, images, json_mode
    images: tuple[str, ...] = ()  # every image's sha256, in the request's order


@dataclass
class FakeOpenAI:
    clock: Clock
    models: dict[str, ServedModel]
    keys: set[str] | None = None  # None: a local server that takes any key (or none)
    latency: Callable[[int], float] = lambda in_flight: 0.0  # seconds, given the requests in flight
    filtered_images: set[str] = field(default_factory=set)  # sha256 of images the content filter stops
    retry_after_s: int = 20
    batch: int | None = None  # a local server with this many slots: one more request gets a 503
    caption_words: int = 22
    packs: PackAnswers = field(default_factory=PackAnswers)  # how packed requests are answered
    seen: list[Seen] = field(default_factory=list)
    most_in_flight: int = 0
    base_url: str = ""
    _in_flight: int = 0
    _windows: dict[tuple[str | None, str], deque[float]] = field(default_factory=dict)

    def successes(self) -> list[Seen]:
        return [s for s in self.seen if s.kind == "ok"]

    async def completions(self, request: web.Request) -> web.Response:
        body = await request.json()
        key = request.headers.get("Authorization", "").removeprefix("Bearer ") or None
        model, frames = body.get("model", ""), frames_in(_parts(body))
        image, images = (frames[0].image if frames else ""), tuple(frame.image for frame in frames)
        now = self.clock.now()
        status, kind, payload, headers = self._decide(key, model, frames, now, body.get("response_format"))
        self.seen.append(Seen(now, key, model, image, status, kind, images))
        if status == 200 and self.batch is not None and self._in_flight >= self.batch:
            status, kind = 503, "full"
            payload = {"error": {"message": "the server is busy: no free slot", "type": "unavailable_error"}}
        if status != 200:
            self.seen[-1] = Seen(now, key, model, image, status, kind, images)
            return web.json_response(payload, status=status, headers=headers)
        self._in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self._in_flight)
        try:
            await self.clock.sleep(self.latency(self._in_flight))
        finally:
            self._in_flight -= 1
        return web.json_response(payload, headers=headers)

    async def list_models(self, request: web.Request) -> web.Response:
        if self.keys is not None and request.headers.get("Authorization", "").removeprefix("Bearer ") not in self.keys:
            return web.json_response(_invalid_key(), status=401)
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "fake"} for name in self.models]
        return web.json_response({"object": "list", "data": data})

    def _decide(
        self, key: str | None, model: str, frames: list[PackedFrame], now: float, response_format: Any
    ) -> tuple[int, str, dict, dict]:
        image = frames[0].image if frames else ""
        if self.keys is not None and key not in self.keys:
            return 401, "invalid_key", _invalid_key(), {}
        served = self.models.get(model)
        if served is None:
            return 404, "not_found", _not_found(model), {}
        if image and not served.vision:
            return 400, "no_images", _no_images(model), {}
        if served.max_images is not None and len(frames) > served.max_images:
            message = f"At most {served.max_images} image(s) may be provided in one request."
            return 400, "images", _error(message, "BadRequestError", None), {}
        if response_format and not served.json_mode:
            message = "response_format of type json_schema is not supported by this model"
            return 400, "json_mode", _error(message, "BadRequestError", None, "response_format"), {}
        if served.rpm is not None:
            window = self._windows.setdefault((key, model), deque())
            while window and window[0] <= now - 60:
                window.popleft()
            headers = {"x-ratelimit-limit-requests": str(served.rpm)}
            if len(window) >= served.rpm:
                headers |= {"retry-after": str(self.retry_after_s), "x-ratelimit-remaining-requests": "0"}
                return 429, "minute", _rate_limited(model, served.rpm), headers
            window.append(now)
        if any(frame.image in self.filtered_images for frame in frames):
            return 200, "filtered", _completion(model, None, "content_filter"), {}
        if len(frames) > 1:
            text, cut = self.packs.answer(frames, self.caption_text, fenced=not response_format)
            if response_format and not cut and text.startswith("["):
                text = f'{{"captions": {text}}}'  # the schema's top level is an object
            return 200, "ok", _completion(model, text, "length" if cut else "stop"), {}
        return 200, "ok", _completion(model, self.caption_text(image), "stop"), {}

    def caption_text(self, image: str) -> str:
        return named_caption(image, BOY, self.caption_words)

    async def start(self) -> web.AppRunner:
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.completions)
        app.router.add_get("/v1/models", self.list_models)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.base_url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
        return runner


def batching_latency(base_s: float = 2.0, per_request_s: float = 0.1) -> Callable[[int], float]:
    """A GPU server that batches: each answer takes longer the more requests share the batch."""
    return lambda in_flight: base_s + per_request_s * in_flight


def _parts(body: dict[str, Any]) -> list[tuple[str, str]]:
    """The request's parts in order: ("text", text) or ("image", sha256)."""
    parts = []
    for message in body.get("messages", []):
        content = message.get("content")
        for part in content if isinstance(content, list) else []:
            if part.get("type") == "image_url":
                url = part["image_url"]["url"]
                parts.append(("image", hashlib.sha256(base64.b64decode(url.split(",", 1)[1])).hexdigest()))
            elif part.get("type") == "text":
                parts.append(("text", part["text"]))
    return parts


def _completion(model: str, text: str | None, finish_reason: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": {"prompt_tokens": 300, "completion_tokens": 40, "total_tokens": 340},
    }


def _error(message: str, kind: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _invalid_key() -> dict[str, Any]:
    return _error("Incorrect API key provided: sk-wr***ng.", "invalid_request_error", "invalid_api_key")


def _not_found(model: str) -> dict[str, Any]:
    return _error(f"The model `{model}` does not exist.", "NotFoundError", "model_not_found", "model")


def _no_images(model: str) -> dict[str, Any]:  # vLLM's words for a text-only model given an image
    return _error(f"{model} is not a multimodal model", "BadRequestError", None)


def _rate_limited(model: str, rpm: int) -> dict[str, Any]:
    return _error(
        f"Rate limit reached for {model} on requests per min (RPM): Limit {rpm}, Used {rpm}, Requested 1.",
        "requests",
        "rate_limit_exceeded",
    )
