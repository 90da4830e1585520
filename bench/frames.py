"""Distinct small frames, resized once, for the caption benches to copy."""

from __future__ import annotations

import asyncio
import random

from PIL import Image

from ghibli_async.config import Config
from ghibli_async.pipeline import Pipeline


def resize_distinct_frames(config: Config, count: int) -> None:
    """`count` frames of distinct noise in the config's input folder, resized into its work dir
    (no keys: nothing is captioned). Noise: flat colours would come out of a small JPEG the same."""
    frames = config.paths.input_dir
    frames.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.frombytes("RGB", (96, 96), random.Random(i).randbytes(96 * 96 * 3)).save(frames / f"f{i}.png")
    asyncio.run(Pipeline(config, keys=[]).run())
