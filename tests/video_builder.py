"""Small test videos made with PyAV: coloured "shots" with black transitions, optional letterbox."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

FPS = 10
SIZE = (320, 180)


def shot_picture(seed: int, frame: int, bars: int) -> np.ndarray:
    """A scene of its own colour and layout, with a bar moving across it (so frames differ)."""
    rng = np.random.default_rng(seed)
    width, height = SIZE
    picture = np.empty((height, width, 3), np.uint8)
    picture[:] = rng.integers(60, 220, 3)
    for _ in range(4):
        x, y = rng.integers(0, width - 60), rng.integers(0, height - 40)
        picture[y : y + 40, x : x + 60] = rng.integers(0, 256, 3)
    bar_x = (frame * 4) % (width - 10)
    picture[:, bar_x : bar_x + 10] = 250
    if bars:
        picture[:bars] = 0
        picture[-bars:] = 0
    return picture


def make_video(path: Path, shots: list[tuple[int | None, float]], *, bars: int = 0) -> Path:
    """`shots`: (scene seed, seconds) in order; a None seed is a black stretch."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        stream.options = {"g": "20", "preset": "ultrafast"}
        frame_index = 0
        for seed, seconds in shots:
            for _ in range(round(seconds * FPS)):
                picture = (
                    np.zeros((SIZE[1], SIZE[0], 3), np.uint8) if seed is None else shot_picture(seed, frame_index, bars)
                )
                for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                    container.mux(packet)
                frame_index += 1
        for packet in stream.encode():
            container.mux(packet)
    return path


THREE_SHOTS = [(1, 4.0), (None, 1.0), (2, 4.0), (None, 1.0), (3, 4.0)]  # 14 s
