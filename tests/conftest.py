"""Shared builders: synthetic frames, a project folder with a config, and a CLI runner."""

from __future__ import annotations

import io
import os
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from ghibli_async.cli import main
from ghibli_async.clock import Clock

os.environ.setdefault("YOLO_OFFLINE", "1")  # ultralytics: no update checks or downloads from tests
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # Hugging Face hub (the anime models): the local cache only
from ghibli_async.config import Config, load_config

# Quadrant colours of a synthetic frame, as the viewer should see them (after EXIF rotation).
TOP_LEFT, TOP_RIGHT, BOTTOM_LEFT, BOTTOM_RIGHT = (220, 30, 30), (30, 200, 30), (30, 30, 220), (240, 240, 240)


def quadrant_image(size: tuple[int, int], *, seed: int = 0) -> Image.Image:
    """An RGB frame with four coloured quadrants and a seeded speckle that makes its bytes unique."""
    width, height = size
    img = Image.new("RGB", size)
    img.paste(TOP_LEFT, (0, 0, width // 2, height // 2))
    img.paste(TOP_RIGHT, (width // 2, 0, width, height // 2))
    img.paste(BOTTOM_LEFT, (0, height // 2, width // 2, height))
    img.paste(BOTTOM_RIGHT, (width // 2, height // 2, width, height))
    rng = random.Random(seed)
    for _ in range(40):
        x, y = rng.randrange(width - 8), rng.randrange(height - 8)
        img.paste((rng.randrange(256), rng.randrange(256), rng.randrange(256)), (x, y, x + 6, y + 6))
    return img


def save_frame(path: Path, size: tuple[int, int] = (1000, 1000), *, seed: int = 0, mode: str = "RGB") -> Path:
    """Write a quadrant frame in `mode` (RGBA gets a transparent bottom half), format from the suffix."""
    img = quadrant_image(size, seed=seed)
    if mode == "RGBA":
        img = img.convert("RGBA")
        img.paste((0, 0, 0, 0), (0, size[1] // 2, size[0], size[1]))
    elif mode != "RGB":
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".png":
        img.save(path, compress_level=1)  # fast to write, same pixels
    else:
        img.save(path)
    return path


def save_rotated_jpeg(path: Path, displayed: tuple[int, int], *, seed: int = 0) -> Path:
    """A JPEG stored on its side with EXIF orientation 6: viewers rotate it upright by 90 degrees."""
    upright = quadrant_image(displayed, seed=seed)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # orientation 6 undoes this with ROTATE_270
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(path, exif=exif)
    return path


def save_truncated_jpeg(path: Path, *, seed: int = 0) -> Path:
    buffer = io.BytesIO()
    quadrant_image((1000, 1000), seed=seed).save(buffer, "JPEG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


@dataclass
class Project:
    """A user's folder: config.yaml, frames/, and the default output and work dirs below it."""

    root: Path

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def frames(self) -> Path:
        return self.root / "frames"

    @property
    def config(self) -> Config:
        return load_config(self.config_path)

    def write_config(self, text: str = "", *, person_filter: bool = False) -> Path:
        """The test config: `text` appended; the filter stage off unless asked for."""
        paths = "paths:\n  input_dir: frames\n  output_dir: out/train\n  work_dir: work\n"
        base = paths + f"stages:\n  filter: {str(person_filter).lower()}\n"
        self.config_path.write_text(base + text, encoding="utf-8")
        return self.config_path

    def resized(self) -> dict[int, Image.Image]:
        folder = self.root / "work" / "resized"
        return {int(p.stem): Image.open(p) for p in sorted(folder.iterdir()) if p.suffix == ".jpg"}

    def cli(self, *args: str, clock: Clock | None = None) -> int:
        """Run the CLI in this process, as `python -m ghibli_async --config config.yaml ARGS`; a test
        that ran on a virtual clock passes it, so `status` and the quota day are that clock's."""
        return main(["--config", str(self.config_path), *args], clock=clock)

    def subprocess(self, *args: str, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "ghibli_async", "--config", str(self.config_path), *args],
            cwd=self.root,
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **kwargs,
        )


def clean_env() -> dict[str, str]:
    """The environment without any real Gemini key a developer may have exported."""
    return {name: value for name, value in os.environ.items() if not name.startswith("GEMINI_API_KEY")}


@pytest.fixture(autouse=True)
def _no_real_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("GEMINI_API_KEY"):
            monkeypatch.delenv(name)


@pytest.fixture
def project(tmp_path: Path) -> Project:
    project = Project(tmp_path)
    project.frames.mkdir()
    project.write_config()
    return project


def make_frames(project: Project, count: int, size: tuple[int, int] = (160, 160)) -> None:
    """`count` small distinct PNG frames (fast to make and to resize)."""
    for i in range(1, count + 1):
        save_frame(project.frames / f"frame{i}.png", size, seed=i)


PERSON_MARK = (255, 0, 255)  # the stub detector "sees a person" where this block is


def scene_image(seed: int, size: tuple[int, int] = (480, 480), *, person: bool = False) -> Image.Image:
    """A frame with its own layout of large shapes (so its perceptual hash is its own), fine grain,
    and, for `person`, a magenta block that the stub detector reports as a person."""
    rng = random.Random(seed)
    width, height = size
    img = Image.new("RGB", size, tuple(rng.randrange(20, 90) for _ in range(3)))
    for _ in range(6):
        x, y = rng.randrange(width), rng.randrange(height)
        w, h = rng.randrange(width // 6, width // 2), rng.randrange(height // 6, height // 2)
        colour = (rng.randrange(120, 256), rng.randrange(120, 256), rng.randrange(256))  # never near PERSON_MARK
        img.paste(colour, (x, y, min(width, x + w), min(height, y + h)))
    if person:
        img.paste(PERSON_MARK, (width // 3, height // 4, width // 2, height * 3 // 4))
    grain = Image.effect_noise(size, 40).convert("RGB")
    return Image.blend(img, grain, 0.3)
