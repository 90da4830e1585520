"""The prompt, and the clean-up every answer goes through before it is checked (caption/checks.py)."""

from __future__ import annotations

import re

from ghibli_async.config import CaptionConfig, ModelQuota

_MARKDOWN = re.compile(r"(\*\*|__|`+|^#+\s*|^\s*[-*•]\s+)", re.MULTILINE)
_LABEL = re.compile(r"^\s*(caption|description)\s*:\s*", re.IGNORECASE)
_QUOTES = "\"'“”‘’«»"


def build_prompt(caption: CaptionConfig, model: ModelQuota | None = None) -> str:
    """The model's own prompt if it has one (a local captioning model often wants its own), else
    the shared one; `{trigger}` is replaced either way."""
    prompt = model.prompt if model is not None and model.prompt else caption.prompt
    return prompt.replace("{trigger}", caption.trigger)


def normalize_caption(raw: str, trigger: str, separator: str = ", ") -> str:
    """One line, no markdown or quotes, no final full stop, and `trigger` + `separator` first,
    exactly once (the original data had `Ghibli stylea young boy`)."""
    text = " ".join(_MARKDOWN.sub("", raw).split()).strip(_QUOTES + " ")
    text = _LABEL.sub("", text).strip(_QUOTES + " ").rstrip(" .")
    while text.casefold().startswith(trigger.casefold()):  # a model that wrote it twice, too
        text = text[len(trigger) :].lstrip(" ,.:;-–—")
    rest = text.lstrip(" ,.:;-–—").strip(_QUOTES + " ")
    return f"{trigger}{separator}{rest}" if rest else trigger
