"""Distinct small frames, resized once, for the caption benches to copy."""

from __future__ import annotations

import asyncio

from PIL import Image

from ghibli_async.config import Config
from ghibli_async.pipeline import Pipeline


def resize_distinct_frames(config: Config, count: int) -> None:
    """`count` frames of distinct colours in the config's input folder, resized into its work dir
    (no keys: nothing is captioned)."""
    frames = config.paths.input_dir
    frames.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (96, 96), (i % 256, (i // 256) % 256, 90)).save(frames / f"f{i}.png")
    asyncio.run(Pipeline(config, keys=[]).run())
