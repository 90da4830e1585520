"""The Gemini client wrapper: one generateContent call in, one plain reply value out.

Every way the service can answer (a caption, a safety block, a 429 per minute or per day, a bad
key, a missing model, a server or network error) becomes one of the provider-neutral `Reply`
types of `caption.answers`, so the reducer decides by what the service said, never by exceptions.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import Any

import structlog
from google import genai
from google.genai import errors, types

from ghibli_async.caption.answers import (
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
from ghibli_async.config import ApiKey, CaptionConfig, ModelQuota

_BLOCK_FINISH_REASONS = {
    "SAFETY",
    "PROHIBITED_CONTENT",
    "IMAGE_SAFETY",
    "IMAGE_PROHIBITED_CONTENT",
    "OTHER",
    "BLOCKLIST",
    "SPII",
}
log = structlog.get_logger(__name__)

_TYPE_PREFIX = "type.googleapis.com/google.rpc."
# A model without a request feature says "<feature> is not enabled for models/<name>" (400): the
# hosted Gemma models refuse a system instruction, JSON mode and a thinking config.
_NOT_ENABLED = re.compile(r"(?P<feature>[\w ]+?) is not enabled for models/")
_FEATURE_FIELDS = {  # words of the feature's name -> the request fields that carry it
    "thinking": ("thinking_config",),
    "instruction": ("system_instruction",),
    "json": ("response_mime_type", "response_schema"),
}


def _transport_errors() -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = [OSError, asyncio.TimeoutError]
    for module, name in (("aiohttp", "ClientError"), ("httpx", "HTTPError"), ("httpx2", "HTTPError")):
        try:
            found.append(getattr(__import__(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(found)


_TRANSPORT_ERRORS = _transport_errors()


class GeminiClient:
    """One `google-genai` client per key; the SDK's own retries are off (the engine retries)."""

    def __init__(self, caption: CaptionConfig, keys: list[ApiKey]) -> None:
        self._caption = caption
        options = types.HttpOptions(
            api_version="v1beta",
            base_url=caption.base_url,  # None: the SDK's default, or GOOGLE_GEMINI_BASE_URL if set
            timeout=int(caption.request_timeout_s * 1000),
            retry_options=types.HttpRetryOptions(attempts=1),
        )
        self._clients = {key.label: genai.Client(api_key=key.secret, http_options=options) for key in keys}
        self._configs = {model.name: self._request_config(model) for model in caption.models}
        self._left_out: dict[str, set[str]] = {}  # model -> request fields it refused

    async def generate(self, key: str, model: str, frames: Sequence[Frame], prompt: str) -> Reply:
        """One request: a single frame and the prompt, or k frames, each after its `Frame N:` line,
        then the prompt with the packed answer's form (JSON mode where the model has it)."""
        if len(frames) == 1:
            contents: list[Any] = [_image_part(frames[0].image), prompt]
        else:
            contents = [part for frame in frames for part in (frame_label(frame.number), _image_part(frame.image))]
            contents.append(pack_instruction(prompt, [frame.number for frame in frames]))
        reply = await self._call(key, model, contents, self._config(model, len(frames)))
        # A model names one refused feature per answer (Gemma: JSON mode, then thinking): each is
        # left out in turn, at most once each.
        while isinstance(reply, ModelUnavailable) and self._drop_refused_feature(model, reply.reason, len(frames)):
            reply = await self._call(key, model, contents, self._config(model, len(frames)))
        return reply

    def _config(self, model: str, frames: int) -> types.GenerateContentConfig:
        """The model's request config for this many frames, without the fields it refused."""
        config = self._configs[model]
        update: dict[str, Any] = {}
        if frames > 1:
            update = {
                "response_mime_type": "application/json",
                "response_schema": PACK_SCHEMA,
                "max_output_tokens": (config.max_output_tokens or 0) * frames,
            }
        update.update((name, None) for name in self._left_out.get(model, ()))
        return config.model_copy(update=update) if update else config

    def _drop_refused_feature(self, model: str, reason: str, frames: int) -> bool:
        """The model refused a feature this request carried: leave it out for this model from now on
        (said once) rather than lose the model. False when there is nothing to leave out."""
        match = _NOT_ENABLED.search(reason)
        if match is None:
            return False
        feature = match.group("feature")
        fields = next((fields for word, fields in _FEATURE_FIELDS.items() if word in feature.lower()), ())
        sent = self._config(model, frames)
        carried = {name for name in fields if getattr(sent, name) is not None}
        if not carried:
            return False
        self._left_out.setdefault(model, set()).update(carried)
        log.warning("model_feature_dropped", model=model, feature=feature)
        return True

    async def ping(self, key: str, model: str) -> Reply:
        """The cheapest real request (a few tokens of text): proves the key, the model and the quota."""
        ping_config = types.GenerateContentConfig(max_output_tokens=8)
        return await self._call(key, model, "Reply with the single word OK.", ping_config)

    async def _call(self, key: str, model: str, contents: Any, config: types.GenerateContentConfig) -> Reply:
        try:
            response = await self._clients[key].aio.models.generate_content(
                model=model, contents=contents, config=config
            )
        except errors.APIError as exc:
            return classify_api_error(exc.code, exc.details)
        except _TRANSPORT_ERRORS as exc:
            where = self._caption.base_url or "Google's Gemini API"
            return TransientError(f"cannot reach {where}: {type(exc).__name__}: {exc}".rstrip(": "))
        return read_response(response)

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aio.aclose()

    def _request_config(self, model: ModelQuota) -> types.GenerateContentConfig:
        caption = self._caption
        budget = model.thinking_budget if model.thinking_budget is not None else caption.thinking_budget
        level = model.thinking_level or caption.thinking_level
        thinking = None
        if budget is not None or level is not None:
            thinking = types.ThinkingConfig(thinking_budget=budget, thinking_level=level.upper() if level else None)
        return types.GenerateContentConfig(
            temperature=model.temperature if model.temperature is not None else caption.temperature,
            max_output_tokens=model.max_output_tokens or caption.max_output_tokens,
            thinking_config=thinking,
            safety_settings=[
                types.SafetySetting(category=rule.category, threshold=rule.threshold) for rule in caption.safety
            ],
        )


def read_response(response: types.GenerateContentResponse) -> Answer | Blocked:
    """A 200 reply: the caption text, or the block reason when there is no text."""
    usage = response.usage_metadata
    # Gemini's TPM limit meters input tokens: count those (a packed request's k images are most of them).
    tokens = (usage.prompt_token_count or usage.total_token_count) if usage else None
    feedback = response.prompt_feedback
    if feedback is not None and feedback.block_reason is not None:
        return Blocked(f"prompt blocked: {_enum_name(feedback.block_reason)}", tokens)
    candidate = response.candidates[0] if response.candidates else None
    parts = candidate.content.parts if candidate and candidate.content and candidate.content.parts else []
    text = "".join(part.text for part in parts if part.text and not part.thought)
    finish = _enum_name(candidate.finish_reason) if candidate and candidate.finish_reason else ""
    if finish in _BLOCK_FINISH_REASONS or not text.strip():
        return Blocked(f"no caption: finish reason {finish or 'none'}", tokens)
    return Answer(text, tokens)


def classify_api_error(code: int | None, details: Any) -> Reply:
    """Sort an HTTP error by what the body says (`details` is the whole JSON error body)."""
    error = details.get("error", {}) if isinstance(details, dict) else {}
    message = str(error.get("message") or details or "")[:300]
    rpc = {
        item.get("@type", "").removeprefix(_TYPE_PREFIX): item
        for item in error.get("details", [])
        if isinstance(item, dict)
    }
    if code == 429:
        return _rate_limited(rpc, message)
    if code in (401, 403) or rpc.get("ErrorInfo", {}).get("reason") in ("API_KEY_INVALID", "API_KEY_EXPIRED"):
        return KeyRejected(f"{code} {error.get('status', '')}: {message}")
    if code == 404:
        return ModelUnavailable(f"404 not found: {message}")
    if code == 400 and TOO_MANY_IMAGES.search(message):
        return PackRefused(f"400 bad request: {message}")
    if code == 400:
        return ModelUnavailable(f"400 bad request: {message}")
    return TransientError(f"{code} {error.get('status', '')}: {message}")


def _rate_limited(rpc: dict[str, dict[str, Any]], message: str) -> RateLimited:
    violation = (rpc.get("QuotaFailure", {}).get("violations") or [{}])[0]
    quota_id = str(violation.get("quotaId", ""))
    if "PerDay" in quota_id:
        scope = "day"
    elif "Token" in quota_id:
        scope = "tokens"
    else:
        scope = "minute"
    value = str(violation.get("quotaValue", ""))
    return RateLimited(
        scope=scope,
        retry_after=_seconds(rpc.get("RetryInfo", {}).get("retryDelay")),
        quota_value=int(value) if value.isdigit() else None,
        message=message,
    )


def _image_part(image: bytes) -> types.Part:
    return types.Part.from_bytes(data=image, mime_type="image/jpeg")


def _seconds(duration: Any) -> float | None:
    """A google.protobuf.Duration in JSON form ("37s", "1.5s") as seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d*)?)s", str(duration or ""))
    return float(match.group(1)) if match else None


def _enum_name(value: Any) -> str:
    return getattr(value, "name", None) or str(value)
