"""The OpenAI-compatible client: one chat-completions call in, one provider-neutral reply out.

vLLM, Ollama, LM Studio, llama.cpp's server, OpenRouter and OpenAI all take an image as a base64
data URL in a chat message. The SDK's own retries are off (every call is one request; the engine
retries), and every answer becomes an `Answer`, `Blocked`, `RateLimited`, `KeyRejected`,
`ModelUnavailable` or `TransientError`, read from the status, the `error` body and the headers.
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import Any

import openai
import structlog
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam
from PIL import Image

from ghibli_async.caption.answers import (
    NO_IMAGES,
    Answer,
    Blocked,
    KeyRejected,
    ModelUnavailable,
    PackRefused,
    RateLimited,
    Reply,
    TransientError,
)
from ghibli_async.caption.packing import PACK_SCHEMA, TOO_MANY_IMAGES, Frame, frame_label, pack_instruction
from ghibli_async.config import ApiKey, CaptionConfig, ProviderConfig

log = structlog.get_logger(__name__)

_NO_KEY = "none"  # the SDK wants some key; a local server without --api-key ignores it
_NOT_A_VISION_MODEL = re.compile(
    r"image|vision|multimodal|multi-modal|does not support (the )?(content|input)|unsupported content", re.I
)
_MODEL_MISSING = re.compile(r"model.*(not found|does not exist|not exist|unknown|not available)|no such model", re.I)
_PER_DAY = re.compile(r"per[- _]?day|daily|RPD\b", re.I)
_NO_JSON_MODE = re.compile(r"^4\d\d: .*(response_format|json_schema|structured output|guided)", re.I)
_TOKENS = re.compile(r"tokens? per min|TPM\b", re.I)


def _tiny_jpeg() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (128, 128, 128)).save(buffer, "JPEG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


_TINY_JPEG = _tiny_jpeg()
_PACK_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "captions",
        "schema": {"type": "object", "properties": {"captions": PACK_SCHEMA}, "required": ["captions"]},
    },
}


def _image_part(image: bytes) -> dict[str, Any]:
    picture = f"data:image/jpeg;base64,{base64.b64encode(image).decode('ascii')}"
    return {"type": "image_url", "image_url": {"url": picture}}


class OpenAIClient:
    """One `AsyncOpenAI` per key (or per keyless local server)."""

    def __init__(self, caption: CaptionConfig, keys: list[ApiKey], providers: Mapping[str, ProviderConfig]) -> None:
        self._caption = caption
        self._clients = {
            key.label: AsyncOpenAI(
                api_key=key.secret or _NO_KEY,
                base_url=providers[key.provider].base_url,
                max_retries=0,
                timeout=caption.request_timeout_s,
            )
            for key in keys
        }
        self._no_json_mode: set[str] = set()  # models that refused a response_format

    async def generate(self, key: str, model: str, frames: Sequence[Frame], prompt: str) -> Reply:
        """One request: the prompt and a single frame, or k frames, each after its `Frame N:` text
        part, then the prompt with the packed answer's form (a JSON schema response_format)."""
        settings = self._caption.model(model)
        temperature = settings.temperature if settings.temperature is not None else self._caption.temperature
        max_tokens = (settings.max_output_tokens or self._caption.max_output_tokens) * len(frames)
        if len(frames) == 1:
            content = [{"type": "text", "text": prompt}, _image_part(frames[0].image)]
            return await self._call(key, model, content, max_tokens=max_tokens, temperature=temperature)
        content = [
            part
            for frame in frames
            for part in ({"type": "text", "text": frame_label(frame.number)}, _image_part(frame.image))
        ]
        content.append({"type": "text", "text": pack_instruction(prompt, [frame.number for frame in frames])})
        json_mode = None if model in self._no_json_mode else _PACK_FORMAT
        reply = await self._call(
            key, model, content, max_tokens=max_tokens, temperature=temperature, response_format=json_mode
        )
        if json_mode and isinstance(reply, TransientError) and _NO_JSON_MODE.search(reply.reason):
            self._no_json_mode.add(model)  # the answer's form is then asked for by instruction alone
            log.warning("model_feature_dropped", model=model, feature="JSON mode")
            reply = await self._call(key, model, content, max_tokens=max_tokens, temperature=temperature)
        return reply

    async def ping(self, key: str, model: str) -> Reply:
        """The cheapest real request (a tiny image and a few tokens): proves the key, the model, that
        it takes images, and the quota."""
        content = [
            {"type": "text", "text": "Reply with the single word OK."},
            {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{_TINY_JPEG}"}},
        ]
        return await self._call(key, model, content, max_tokens=8, temperature=None)

    async def list_models(self, key: str) -> list[str] | Reply:
        """The model names the endpoint serves, or why it would not say."""
        try:
            page = await self._clients[key].models.list()
        except openai.APIStatusError as exc:
            return classify_status_error(exc.status_code, exc.body, exc.response.headers)
        except openai.APIConnectionError as exc:
            return TransientError(self._unreachable(key, exc))
        except openai.APIResponseValidationError as exc:
            return TransientError(f"{type(exc).__name__}: {exc}")
        return [model.id for model in page.data]

    async def _call(
        self,
        key: str,
        model: str,
        content: Any,
        *,
        max_tokens: int,
        temperature: float | None,
        response_format: dict[str, Any] | None = None,
    ) -> Reply:
        extra: dict[str, Any] = {} if temperature is None else {"temperature": temperature}
        if response_format is not None:
            extra["response_format"] = response_format
        messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": content}]
        try:
            response = await self._clients[key].chat.completions.create(
                model=model,
                messages=messages,
                max_tokens=max_tokens,
                stream=False,
                **extra,
            )
        except openai.APIStatusError as exc:
            return classify_status_error(exc.status_code, exc.body, exc.response.headers)
        except openai.APIConnectionError as exc:  # timeouts too
            return TransientError(self._unreachable(key, exc))
        except openai.APIResponseValidationError as exc:
            log.debug("caption_unreadable_answer", model=model, body=str(exc.body)[:2000])
            return TransientError(f"unreadable answer: {exc}")
        return read_completion(response)

    def _unreachable(self, key: str, exc: Exception) -> str:
        """A connection error names the endpoint it tried (the SDK's own says only 'Connection error.')."""
        return f"cannot reach {self._clients[key].base_url}: {type(exc).__name__}: {exc}"

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.close()


def read_completion(response: Any) -> Answer | Blocked | TransientError:
    """A 200 reply: the caption, a refusal (content filter or the model's own), or an odd shape."""
    tokens = response.usage.total_tokens if getattr(response, "usage", None) else None
    choice = response.choices[0] if getattr(response, "choices", None) else None
    if choice is None or choice.message is None:
        log.debug("caption_unknown_answer", body=_dump(response))
        return TransientError("an answer without choices")
    text = choice.message.content or ""
    if choice.finish_reason == "content_filter":
        return Blocked("content filter", tokens)
    if getattr(choice.message, "refusal", None):
        return Blocked(f"refused: {str(choice.message.refusal)[:200]}", tokens)
    if not text.strip():
        return Blocked(f"no caption: finish reason {choice.finish_reason or 'none'}", tokens)
    return Answer(text, tokens)


def classify_status_error(status: int, body: Any, headers: Mapping[str, str]) -> Reply:
    """Sort an HTTP error by its status, its `error` object and its rate-limit headers."""
    error = body if isinstance(body, dict) else {}
    message = str(error.get("message") or body or "")[:300]
    code = str(error.get("code") or "")
    if status == 429:
        return _rate_limited(code, message, headers)
    if status in (401, 403) or code in ("invalid_api_key", "account_deactivated"):
        return KeyRejected(f"{status}: {message}")
    if status == 404 or code == "model_not_found":
        return ModelUnavailable(f"{status} model not found: {message}")
    if status in (400, 422) and TOO_MANY_IMAGES.search(message):
        return PackRefused(f"{status}: {message}")
    if status in (400, 422) and _NOT_A_VISION_MODEL.search(message):
        return ModelUnavailable(f"{NO_IMAGES}: {message}")
    if status in (400, 422) and _MODEL_MISSING.search(message):
        return ModelUnavailable(f"{status} model not found: {message}")
    if status < 500 and status not in (408, 409):
        log.debug("caption_unknown_error", status=status, body=str(body)[:2000])
    return TransientError(f"{status}: {message}", server_full=status == 503)


def _rate_limited(code: str, message: str, headers: Mapping[str, str]) -> RateLimited:
    lower = {name.lower(): value for name, value in headers.items()}
    if code == "insufficient_quota" or _PER_DAY.search(message):
        scope, limit = "day", lower.get("x-ratelimit-limit-requests-day") or lower.get("x-ratelimit-limit")
    elif _TOKENS.search(message) or lower.get("x-ratelimit-remaining-tokens") == "0":
        scope, limit = "tokens", lower.get("x-ratelimit-limit-tokens")
    else:
        scope, limit = "minute", lower.get("x-ratelimit-limit-requests") or lower.get("x-ratelimit-limit")
    return RateLimited(
        scope=scope,
        retry_after=_retry_after(lower),
        quota_value=int(limit) if limit and limit.isdigit() else None,
        message=message,
    )


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait: `retry-after-ms`, `retry-after` (seconds or an HTTP date), else the reset
    of whichever budget is at zero (`x-ratelimit-reset-requests: 6m0s`)."""
    if (millis := _number(headers.get("retry-after-ms"))) is not None:
        return millis / 1000
    if (seconds := _number(headers.get("retry-after"))) is not None:
        return seconds
    if headers.get("retry-after"):
        try:
            moment = parsedate_to_datetime(headers["retry-after"])
            date = parsedate_to_datetime(headers.get("date", "")) if headers.get("date") else None
        except (TypeError, ValueError):
            return None
        return max(0.0, (moment - date).total_seconds()) if date else None
    for budget in ("requests", "tokens"):
        if headers.get(f"x-ratelimit-remaining-{budget}") == "0":
            return _duration(headers.get(f"x-ratelimit-reset-{budget}", ""))
    return None


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _duration(text: str) -> float | None:
    """OpenAI's reset format: `1s`, `6m0s`, `20ms`, `1h2m3.5s`."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    if not parts:
        return None
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(value) * scale[unit] for value, unit in parts)


def _dump(response: Any) -> str:
    dump = getattr(response, "model_dump_json", None)
    return (dump() if dump else str(response))[:2000]
