"""The filter's decisions, from stored measurements and detector boxes only (pure, no I/O).

Because nothing here looks at pixels, changing a threshold re-decides every frame on the next run
without decoding or detecting again.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ghibli_async.config import DetectorConfig, FilterConfig
from ghibli_async.facts import Box, Decision, FrameFacts
from ghibli_async.statuses import Override, Status


def decide_all(frames: Sequence[FrameFacts], config: FilterConfig) -> dict[int, Decision]:
    """Every frame's decision; near-duplicates among the otherwise kept ones keep only the best."""
    decisions = {frame.image_id: decide(frame, config) for frame in frames}
    if config.duplicates.enabled:
        candidates = [f for f in frames if decisions[f.image_id].status == Status.KEPT and f.override != Override.KEEP]
        for group in near_duplicate_groups([f.phash for f in candidates], config.duplicates.max_distance):
            members = [candidates[i] for i in group]
            best = max(members, key=lambda f: (f.numbered, f.sharpness, -f.image_id))
            for frame in members:
                if frame is not best:
                    decisions[frame.image_id] = Decision(Status.REJECTED, f"duplicate_of:{best.image_id}")
    return decisions


def decide(frame: FrameFacts, config: FilterConfig) -> Decision:
    """One frame on its own: the user's override, then dark/flat, blur, and the person detectors."""
    if frame.override:
        return Decision(Status.KEPT if frame.override == Override.KEEP else Status.REJECTED, "override")
    dark = config.dark
    if dark.enabled and (frame.brightness <= dark.max_brightness or frame.contrast < dark.min_contrast):
        return Decision(Status.REJECTED, "dark")
    if config.blur.enabled and frame.sharpness < config.blur.min_sharpness:
        return Decision(Status.REJECTED, "blurry")
    if not person_found(frame.boxes, config):
        return Decision(Status.REJECTED, "no_person")
    return Decision(Status.KEPT, None)


def person_found(boxes: dict[str, list[Box]], config: FilterConfig) -> bool:
    fired = [
        any(_counts(box, detector, config) for box in boxes.get(detector.key, [])) for detector in config.detectors
    ]
    return any(fired) if config.mode == "any" else all(fired)


def box_counts(box: Box, detector_key: str, config: FilterConfig) -> bool:
    """Whether this box is a person under the current thresholds (its detector's own confidence)."""
    detector = next((d for d in config.detectors if d.key == detector_key), None)
    return detector is not None and _counts(box, detector, config)


def _counts(box: Box, detector: DetectorConfig, config: FilterConfig) -> bool:
    return box.score >= detector.confidence and box.area >= config.min_box_fraction


def best_score(boxes: list[Box]) -> float:
    return max((box.score for box in boxes), default=0.0)


def near_duplicate_groups(hashes: Sequence[str], max_distance: int) -> list[list[int]]:
    """Groups (of 2+ indices) of hashes within `max_distance` bits of each other, transitively.

    Pigeonhole: two 64-bit hashes that differ in at most d bits agree exactly on at least one of
    d + 1 disjoint bit slices. So only hashes sharing a slice value are compared, in numpy,
    instead of all pairs (50,000 hashes: seconds, not hours)."""
    if len(hashes) < 2:
        return []
    values = np.frombuffer(bytes.fromhex("".join(hashes)), dtype=">u8").astype(np.uint64)
    parent = list(range(len(values)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for lo, hi in _slices(max_distance + 1):
        keys = (values >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1)
        order = np.argsort(keys, kind="stable")
        bounds = np.flatnonzero(np.diff(keys[order])) + 1
        for members in np.split(order, bounds):
            if len(members) < 2:
                continue
            xor = values[members][:, None] ^ values[members][None, :]
            close = np.argwhere(np.triu(_popcount(xor) <= max_distance, k=1))
            for a, b in close:
                parent[root(int(members[a]))] = root(int(members[b]))
    groups: dict[int, list[int]] = {}
    for i in range(len(values)):
        groups.setdefault(root(i), []).append(i)
    return [members for members in groups.values() if len(members) > 1]


def _slices(count: int) -> list[tuple[int, int]]:
    edges = np.linspace(0, 64, min(count, 64) + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def _popcount(values: np.ndarray) -> np.ndarray:
    as_bytes = values.astype(">u8").view(np.uint8).reshape(*values.shape, 8)
    return np.unpackbits(as_bytes, axis=-1).sum(axis=-1)
