"""Where a frame is cut and what size it becomes: pure arithmetic on sizes and boxes, no pixels.

`crop_window` is the largest window of an aspect inside a frame, placed to keep the most of the
frame's stored person boxes (the centre when there are none): a square crop must not cut away the
people at a 16:9 frame's sides, which a caption would then describe. `bucket_size` is the
aspect-ratio bucket today's trainers (kohya, OneTrainer, SimpleTuner, ai-toolkit) train at: the
frame's aspect to the nearest multiple of 64 on each side, area at most size², never upscaled.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

BUCKET_STEP = 64  # trainers' latent grids: both sides multiples of this

Corners = tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels (or fractions)


def crop_window(width: int, height: int, aspect: float, boxes: Sequence[Corners] = ()) -> Corners:
    """The largest window of `aspect` (width / height) inside a `width` x `height` frame, slid
    along the free axis to cover the most box area of `boxes` (pixels); centred on a tie."""
    if width / height > aspect:  # wider than the window: it slides left and right
        side = height * aspect
        left = _best_offset(width, side, [(b[0], b[2], b[3] - b[1]) for b in boxes])
        return left, 0.0, left + side, float(height)
    side = width / aspect
    top = _best_offset(height, side, [(b[1], b[3], b[2] - b[0]) for b in boxes])
    return 0.0, top, float(width), top + side


def _best_offset(length: float, window: float, spans: Sequence[tuple[float, float, float]]) -> float:
    """Where a `window`-long interval in [0, length] covers the most of `spans` (start, end,
    weight: each span's extent on the other axis); the centre position wins a tie, then the
    nearest to it. Candidates: the centre, and each span's start or end at either edge."""
    free = length - window
    centre = free / 2
    if free <= 0 or not spans:
        return max(0.0, centre)
    candidates = {centre, 0.0, free}
    for start, end, _ in spans:
        candidates.update((start, end - window))
    fits = sorted((min(max(0.0, c), free) for c in candidates), key=lambda c: abs(c - centre))
    return max(fits, key=lambda c: _covered(c, window, spans))  # max keeps the first (nearest centre) of equals


def _covered(offset: float, window: float, spans: Sequence[tuple[float, float, float]]) -> float:
    return sum(max(0.0, min(end, offset + window) - max(start, offset)) * weight for start, end, weight in spans)


def bucket_size(width: int, height: int, side: int, step: int = BUCKET_STEP) -> tuple[int, int]:
    """The bucket a `width` x `height` frame trains in: both sides multiples of `step`, area at most
    `side`², neither side larger than the frame's (never upscaled). Of the largest bucket for each
    width (as kohya builds its buckets), the one nearest the frame's aspect; the larger on a tie."""
    aspect, area = width / height, min(side * side, width * height)
    candidates = [(bucket_w, min(height, area // bucket_w) // step * step) for bucket_w in range(step, width + 1, step)]
    fitting = [(w, h) for w, h in candidates if h >= step]
    if not fitting:  # a frame under one step on a side: the smallest bucket
        return step, step
    return min(fitting, key=lambda wh: (abs(math.log(wh[0] / wh[1] / aspect)), -wh[0] * wh[1]))


def bucket_spread(sizes: Counter[tuple[int, int]]) -> str:
    """`1344×768 120, 768×448 3`: the most used bucket first."""
    spread = sorted(sizes.items(), key=lambda item: (-item[1], item[0]))
    return ", ".join(f"{width}×{height} {count}" for (width, height), count in spread)
