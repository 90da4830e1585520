"""Plain records of what was measured and decided about a frame, shared by the detectors, the
filter's rules, the state and the review page (so the state needs no image or detector code)."""

from __future__ import annotations

from dataclasses import dataclass

from ghibli_async.statuses import Override, Status


@dataclass(frozen=True)
class Box:
    """A detection; corners as fractions (0-1) of the frame's width and height."""

    x1: float
    y1: float
    x2: float
    y2: float
    score: float
    label: str

    @property
    def area(self) -> float:
        return max(0.0, self.x2 - self.x1) * max(0.0, self.y2 - self.y1)


@dataclass(frozen=True)
class Measurements:
    """The junk-frame numbers of one frame (luma 0-1, perceptual hash as 16 hex)."""

    brightness: float
    contrast: float
    sharpness: float
    phash: str


@dataclass(frozen=True)
class FrameFacts:
    """Everything stored about a frame that its filter decision depends on."""

    image_id: int
    brightness: float
    contrast: float
    sharpness: float
    phash: str
    boxes: dict[str, list[Box]]  # detector key -> every box down to the score floor
    override: Override | None  # the user's word wins
    numbered: bool  # already has an output number: prefer it when near-duplicates compete


@dataclass(frozen=True)
class Decision:
    status: Status  # KEPT | REJECTED
    reason: str | None


@dataclass(frozen=True)
class Finding:
    """A caption check that fired (caption/checks.py), stored with the caption."""

    check: str  # the check's name (its entry under caption.checks)
    reason: str
    weight: float  # 0..1: how sure the check is that the caption is wrong
    words: tuple[str, ...] = ()  # the offending words, for the review page to mark
