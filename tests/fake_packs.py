"""What both fake servers do with a request that carries several frames: read each frame's id from
the `Frame N:` text before its image, caption each frame by name (its caption ends with its
image's digest, so a test can tell whose caption it is), and plant the faults a test asks for."""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

# What a packed answer can get wrong, one fault per answer.
MISSING = "missing"  # the last frame's entry left out
UNKNOWN = "unknown"  # an entry for an id nobody asked for
REPEATED = "repeated"  # the first id answered twice, the second time with another frame's caption
GARBAGE = "garbage"  # prose, no JSON
CUT = "cut"  # cut at the token limit in the middle of the last entry
FAULTS = (MISSING, UNKNOWN, REPEATED, GARBAGE, CUT)

GIRL = (
    "a girl in a red coat walks past a small bakery while her younger brother waves from a wooden "
    "bridge over the quiet river under soft evening light with lanterns glowing and swallows "
    "circling above the tiled roofs of the old harbour town"
)
BOY = (
    "a boy in a blue shirt runs across a windy meadow toward a hill where an old camphor tree "
    "stands beside a stone shrine while clouds drift over green rice fields and a bicycle "
    "leans against the fence of a farmhouse"
)


def named_caption(image: str, scene: str, words: int) -> str:
    """A caption of `words` words that ends with the first 8 hex digits of the image's sha256, so
    a test can tell whose caption it is."""
    return f"Ghibli style, {' '.join(scene.split()[: words - 3])} {image[:8]}"


_LABEL = re.compile(r"^\s*Frame (\S+?):\s*$")


@dataclass(frozen=True)
class PackedFrame:
    id: str  # as the request named it ('' when no `Frame N:` came before the image)
    image: str  # sha256 of the image


def frames_in(parts: list[tuple[str, str]]) -> list[PackedFrame]:
    """The images of a request in order, each with the id of the `Frame N:` text just before it.
    `parts`: ("text", the text) or ("image", its digest)."""
    frames, label = [], ""
    for kind, value in parts:
        if kind == "text":
            match = _LABEL.match(value)
            label = match.group(1) if match else ""
        else:
            frames.append(PackedFrame(label, value))
            label = ""
    return frames


@dataclass
class PackAnswers:
    """How the fake answers packed requests: `faults` holds the fault of each next packed answer
    ('' for none; empty: no faults); `always` is a fault every packed answer carries."""

    faults: deque[str] = field(default_factory=deque)
    always: str = ""
    planted: list[tuple[str, list[str]]] = field(default_factory=list)  # (fault, ids) of each faulty answer

    def answer(self, frames: list[PackedFrame], caption_of: Callable[[str], str], *, fenced: bool) -> tuple[str, bool]:
        """The answer's text, and whether it was cut at the token limit. Entries come in reverse
        order: the answer's order must not matter."""
        fault = self.faults.popleft() if self.faults else self.always
        entries = [{"id": frame.id, "caption": caption_of(frame.image)} for frame in reversed(frames)]
        if fault:
            self.planted.append((fault, [frame.id for frame in frames]))
        if fault == MISSING:
            entries = entries[1:]  # the last frame (first in reverse order) left out
        elif fault == UNKNOWN:
            entries.append({"id": "999999", "caption": caption_of("0" * 64)})
        elif fault == REPEATED and len(entries) > 1:
            entries.append({"id": entries[-1]["id"], "caption": entries[0]["caption"]})
        if fault == GARBAGE:
            return "Here are the frames: a girl, a boy and a cat walk through the town.", False
        text = json.dumps(entries, indent=1)
        if fault == CUT:
            last = text.rindex('"caption"')
            return text[: last + 20], True
        return (f"```json\n{text}\n```" if fenced else text), False
