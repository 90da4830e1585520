"""Every caption client behind one call: a key's provider picks the client, a model its prompt.

Each SDK is imported only when a key of its provider is configured (each costs ~0.4 s at start).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ghibli_async.caption.answers import Reply
from ghibli_async.caption.packing import Frame
from ghibli_async.caption.text import build_prompt
from ghibli_async.config import GEMINI, ApiKey, CaptionConfig

if TYPE_CHECKING:
    from ghibli_async.caption.gemini import GeminiClient
    from ghibli_async.caption.openai_chat import OpenAIClient


class CaptionClients:
    def __init__(self, caption: CaptionConfig, keys: list[ApiKey]) -> None:
        gemini = [key for key in keys if key.provider == GEMINI]
        compatible = [key for key in keys if key.provider != GEMINI]
        self._compatible = {key.label for key in compatible}
        self._clients: list[GeminiClient | OpenAIClient] = []
        self._by_key: dict[str, GeminiClient | OpenAIClient] = {}
        if gemini:
            from ghibli_async.caption.gemini import GeminiClient

            self._serve(GeminiClient(caption, gemini), gemini)
        if compatible:
            from ghibli_async.caption.openai_chat import OpenAIClient

            self._serve(OpenAIClient(caption, compatible, caption.providers), compatible)
        self._prompts = {model.name: build_prompt(caption, model) for model in caption.models}

    def _serve(self, client: GeminiClient | OpenAIClient, keys: list[ApiKey]) -> None:
        self._clients.append(client)
        self._by_key.update((key.label, client) for key in keys)

    async def generate(self, key: str, model: str, frames: Sequence[Frame]) -> Reply:
        """One request for `frames` (one, or several packed in one request)."""
        return await self._by_key[key].generate(key, model, frames, self._prompts[model])

    async def ask(self, key: str, model: str, frame: Frame, prompt: str) -> Reply:
        """One frame with a question of our own (`caption.verify`) instead of the caption prompt."""
        return await self._by_key[key].generate(key, model, [frame], prompt)

    async def ping(self, key: str, model: str) -> Reply:
        return await self._by_key[key].ping(key, model)

    def openai(self, key: str) -> OpenAIClient | None:
        """The OpenAI-compatible client of this key, if it is one (for listing its models)."""
        client = self._by_key[key]
        return client if key in self._compatible else None  # type: ignore[return-value]

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()
