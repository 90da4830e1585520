"""Distinct small frames, resized once, for the caption benches to copy."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from PIL import Image

from ghibli_async.config import CaptionConfig, Config, PathsConfig, ResizeConfig, StagesConfig
from ghibli_async.pipeline import Pipeline


def caption_bench_config(work: Path, caption: CaptionConfig) -> Config:
    """Frames, output and work dir under `work`, resized to 64 px, the filter off (every frame is
    captioned: these benches measure captioning), and `caption`."""
    return Config(
        paths=PathsConfig(input_dir=work / "frames", output_dir=work / "out", work_dir=work / "work"),
        stages=StagesConfig(filter=False),
        resize=ResizeConfig(size=64),
        caption=caption,
    )


def resize_distinct_frames(config: Config, count: int) -> None:
    """`count` frames of distinct noise in the config's input folder, resized into its work dir
    (no keys: nothing is captioned). Noise: flat colours would come out of a small JPEG the same."""
    frames = config.paths.input_dir
    frames.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.frombytes("RGB", (96, 96), random.Random(i).randbytes(96 * 96 * 3)).save(frames / f"f{i}.png")
    asyncio.run(Pipeline(config, keys=[]).run())
