"""Several frames in one request: how a packed request names its frames and how its answer is read.

The quota day counts requests, not images, so k frames per request caption k times as many frames
a day. Each image follows a text part naming it (`Frame 17:`, the frame's number in the dataset);
the answer is a JSON array of `{"id": "17", "caption": "…"}`. Reading it is strict about identity
(a caption counts only for an id that was asked for exactly once) and lenient about form (a
```json fence, prose around the array, an answer cut at the token limit keep their whole entries),
so no frame can get another frame's caption and a bad answer costs only the frames it left out.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

# After this many packed answers in a row that a frame was missing from, it goes alone.
MISSES_BEFORE_SINGLE = 2

# Gemini's response_schema and OpenAI's json_schema response_format carry the same schema.
PACK_SCHEMA: dict[str, Any] = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {"id": {"type": "string"}, "caption": {"type": "string"}},
        "required": ["id", "caption"],
    },
}

# What servers say when a request carries more images than the model (or the server) takes.
TOO_MANY_IMAGES = re.compile(
    r"at most \d+ image|image items in the same prompt|limit[-_ ]mm[-_ ]per[-_ ]prompt|too many images"
    r"|only (one|1|a single) image|multiple images (are )?not supported|more than one image",
    re.IGNORECASE,
)


class Frame(NamedTuple):
    """One frame going out: its number in the dataset (its id in a packed request) and its JPEG."""

    number: int
    image: bytes


def frame_label(number: int) -> str:
    return f"Frame {number}:"


def pack_instruction(prompt: str, numbers: Sequence[int]) -> str:
    """The text after the k images: the usual prompt for each frame, then the answer's form."""
    ids = ", ".join(str(number) for number in numbers)
    return (
        f"{prompt}\n\nYou were shown {len(numbers)} separate frames, each right after a line 'Frame N:'. "
        f"Write one caption for each frame, as instructed above, about that frame alone. Answer with only "
        f'a JSON array holding one object per frame, {{"id": "N", "caption": "..."}}, for the ids {ids}.'
    )


@dataclass(frozen=True)
class PackReading:
    """What a packed answer gave: a raw caption per frame it answered well, and what was wrong."""

    captions: dict[int, str] = field(default_factory=dict)
    problems: tuple[str, ...] = ()

    def missing(self, numbers: Sequence[int]) -> list[int]:
        return [number for number in numbers if number not in self.captions]


def read_pack(text: str, numbers: Sequence[int]) -> PackReading:
    """The captions of the frames `numbers` in a packed answer. A frame keeps its caption only when
    exactly one entry names its id and that entry's caption is a non-empty string."""
    entries = _entries(text)
    if not entries:
        return PackReading(problems=("no JSON array of captions in the answer",))
    asked = {str(number): number for number in numbers}
    named = Counter(str(entry.get("id", "")).strip() for entry in entries)
    problems = []
    if unknown := sorted(set(named) - set(asked)):
        problems.append(f"ids nobody asked for: {', '.join(unknown)}")
    if repeated := sorted(name for name, count in named.items() if count > 1 and name in asked):
        problems.append(f"ids answered more than once: {', '.join(repeated)}")
    captions = {}
    for entry in entries:
        name = str(entry.get("id", "")).strip()
        caption = entry.get("caption")
        if name in asked and named[name] == 1 and isinstance(caption, str) and caption.strip():
            captions[asked[name]] = caption
    if missing := [str(number) for number in numbers if number not in captions and named[str(number)] <= 1]:
        problems.append(f"no caption for ids: {', '.join(missing)}")
    return PackReading(captions, tuple(problems))


def _entries(text: str) -> list[dict[str, Any]]:
    """The JSON objects of the answer: the whole array when it parses, else every complete object
    in it (an answer cut at the token limit, or prose around the array)."""
    body = text.strip()
    fenced = re.search(r"```(?:json)?\s*(.*?)(?:```|$)", body, re.DOTALL)
    if fenced:
        body = fenced.group(1).strip()
    try:
        whole = json.loads(body)
    except ValueError:
        whole = None
    if isinstance(whole, dict):  # {"id": …} alone, or the array under some key ({"captions": […]})
        whole = next((value for value in whole.values() if isinstance(value, list)), [whole])
    if isinstance(whole, list):
        return [item for item in whole if isinstance(item, dict)]
    decoder = json.JSONDecoder()
    found, at = [], body.find("{")
    while at != -1:
        try:
            item, end = decoder.raw_decode(body, at)
        except ValueError:
            at = body.find("{", at + 1)
            continue
        if isinstance(item, dict):
            found.append(item)
        at = body.find("{", end)
    return found
