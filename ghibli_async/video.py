"""Sampling frames from a video file with PyAV (FFmpeg ships inside its wheel).

`sample_frames` yields (seconds, RGB picture) pairs, already cropped, black/fade frames left out.
It decodes no more than it needs: interval mode seeks to each target time (to the keyframe before
it, then forward; with `exact: false` it takes that keyframe and decodes nothing else).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
from PIL import Image

from ghibli_async.config import ExtractConfig
from ghibli_async.imaging import content_box

_SMALL = (64, 36)  # the grey thumbnail that scene changes and black frames are measured on
_SEEK_GAP_S = 8.0  # a target this far ahead is reached by seeking, a nearer one by decoding on


def video_duration(path: Path) -> float:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if stream.duration is not None:
            return float(stream.duration * stream.time_base)
        return (container.duration or 0) / av.time_base


def sample_frames(
    path: Path, config: ExtractConfig, *, start_s: float, black_luma: float
) -> Iterator[tuple[float, Image.Image]]:
    """Frames to keep from `path`, from `start_s` on (to resume an interrupted video)."""
    duration = video_duration(path)
    end = duration - config.skip_end_s
    start = max(start_s, config.skip_start_s)
    picks = _interval(path, config, start, end) if config.mode == "interval" else _shots(path, config, start, end)
    for seconds, frame in picks:
        if _mean_luma(frame) > black_luma:
            yield seconds, crop(frame.to_image(), config.crop)


def _interval(path: Path, config: ExtractConfig, start: float, end: float) -> Iterator[tuple[float, av.VideoFrame]]:
    """Exact: the first frame at or after each target time; decoding goes on forward while the next
    target is near, and seeks (to the keyframe before it) when it is far. Not exact: the keyframe
    before each target, decoding keyframes only; a keyframe serving two targets is given once."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame threads: both cores on one video
        if not config.exact:
            stream.codec_context.skip_frame = "NONKEY"
        target, frames, position, last_given = start, None, None, None
        while target < end:
            if frames is None or not config.exact or position is None or target - position > _SEEK_GAP_S:
                container.seek(int(target / stream.time_base), stream=stream, backward=True)
                frames = (frame for frame in container.decode(stream) if frame.time is not None)
            found = next((f for f in frames if not config.exact or f.time >= target - 1e-3), None)
            if found is None:
                return
            position = found.time
            seconds = target if config.exact else found.time
            if seconds != last_given:
                last_given = seconds
                yield seconds, found
            target += config.every_s


def _shots(path: Path, config: ExtractConfig, start: float, end: float) -> Iterator[tuple[float, av.VideoFrame]]:
    """One frame `min_shot_s / 2` into every shot that lasts `min_shot_s`; more, `every_s` apart,
    up to `max_per_shot`. A shot starts where a small colour copy changes by `scene_change` on
    average (colour, not grey: two shots of one brightness in other palettes still differ)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if start > 0:
            container.seek(int(start / stream.time_base), stream=stream, backward=True)
        previous, shot_start, emitted, next_pick = None, start, 0, start + config.min_shot_s / 2
        candidate: tuple[float, av.VideoFrame] | None = None
        for frame in container.decode(stream):
            if frame.time is None or frame.time < start:
                continue
            if frame.time >= end:
                break
            small = _small(frame, "rgb24")
            if previous is not None and float(np.abs(small - previous).mean()) > config.scene_change:
                shot_start, emitted, candidate = frame.time, 0, None
                next_pick = shot_start + config.min_shot_s / 2
            previous = small
            if candidate is None and emitted < config.max_per_shot and frame.time >= next_pick:
                candidate = (frame.time, frame)
            if candidate is not None and frame.time - shot_start >= config.min_shot_s:
                yield candidate
                emitted, candidate = emitted + 1, None
                next_pick = frame.time + config.every_s


def _small(frame: av.VideoFrame, pixel_format: str) -> np.ndarray:
    return frame.reformat(width=_SMALL[0], height=_SMALL[1], format=pixel_format).to_ndarray().astype(np.float32) / 255


def _mean_luma(frame: av.VideoFrame) -> float:
    return float(_small(frame, "gray").mean())


def crop(img: Image.Image, mode: str) -> Image.Image:
    """`trim_bars`: the whole frame without black letterbox/pillarbox bars (the geometry is decided
    at resize, so one extraction serves every target); `center_square`: the middle square, as the
    original capture tool took it; `none`: the frame as decoded."""
    if mode == "none":
        return img
    if mode == "trim_bars":
        return img.crop(content_box(img))
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    return img.crop((left, top, left + side, top + side))


def frame_name(video: Path, seconds: float) -> str:
    """`<video stem>_<hh-mm-ss.mmm>.png`: sorts in time order, and says where the frame is."""
    millis = round(seconds * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{video.stem}_{hours:02d}-{minutes:02d}-{secs:02d}.{millis:03d}.png"


def seconds_of(name: str) -> float | None:
    """The timestamp in a `frame_name`, or None for another file."""
    stamp = name.rsplit("_", 1)[-1].removesuffix(".png")
    try:
        clock, millis = stamp.split(".")
        hours, minutes, secs = (int(part) for part in clock.split("-"))
        return hours * 3600 + minutes * 60 + secs + int(millis) / 1000
    except ValueError:
        return None
