"""Pillow operations of the resize stage: one source file in, one square RGB JPEG out.

Runs in worker processes, so everything here is a plain function of picklable arguments, and
errors are returned as values: one bad file never stops the run.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import ExifTags, Image, ImageOps

from ghibli_async.config import ResizeConfig

# Decode JPEGs at a reduced DCT scale, and box-reduce other formats, only while the result stays
# at least this many times the target size: measured at >= 40 dB PSNR against plain LANCZOS
# (bench/bench_resize.py). A gap of 1.0 fell to 39.1 dB on a real 2000x1080 frame.
_REDUCING_GAP = 2.0

TEMP_SUFFIX = ".part"
# EXIF orientations that turn the picture by 90 degrees (width and height trade places).
_SWAPS_AXES = {5, 6, 7, 8}


@dataclass(frozen=True)
class ResizeOutcome:
    """`status` is `done`, `rejected` (with reason `too_small`) or `failed` (with the reason)."""

    status: str
    reason: str | None = None
    source_size: tuple[int, int] | None = None


def resize_file(source: str, dest: str, settings: ResizeConfig) -> ResizeOutcome:
    """Resize `source` to a `settings.size` square JPEG at `dest`, atomically."""
    try:
        square, outcome = square_image(source, settings)
        if square is not None:
            write_jpeg_atomic(square, Path(dest), settings)
    except Image.DecompressionBombError:
        return ResizeOutcome("failed", "image too large (decompression bomb guard)")
    except Image.UnidentifiedImageError:
        return ResizeOutcome("failed", "not an image Pillow can read")
    except Exception as exc:  # noqa: BLE001 - any decoder error is this file's problem, not the run's
        return ResizeOutcome("failed", f"corrupt image: {exc}")
    return outcome


def square_image(source: str, settings: ResizeConfig) -> tuple[Image.Image | None, ResizeOutcome]:
    """The upright RGB square, before JPEG encoding; None with a `rejected` outcome if too small."""
    with Image.open(source) as img:
        orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
        source_size = img.size[::-1] if orientation in _SWAPS_AXES else img.size
        if _too_small(source_size, settings):
            return None, ResizeOutcome("rejected", "too_small", source_size)
        _decode_reduced(img, settings.size)
        upright = ImageOps.exif_transpose(img) if orientation != 1 else img
        return fit_square(to_rgb(upright, settings.background), settings), ResizeOutcome("done", None, source_size)


def _too_small(size: tuple[int, int], settings: ResizeConfig) -> bool:
    needed = min(size) if settings.fit == "center_crop" else max(size)
    return needed < settings.size and not settings.allow_upscale


def _decode_reduced(img: Image.Image, target: int) -> None:
    """Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the frame is far larger than the target."""
    if img.format == "JPEG":
        width, height = img.size
        wanted = target * _REDUCING_GAP / min(width, height)
        img.draft("RGB", (math.ceil(width * wanted), math.ceil(height * wanted)))


def to_rgb(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Any mode to RGB; transparent pixels become `background` instead of black."""
    if img.mode == "RGB":
        return img
    if img.has_transparency_data:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", img.size, background)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")


def fit_square(img: Image.Image, settings: ResizeConfig) -> Image.Image:
    """Center-crop (or pad with the background) to a square and LANCZOS-resize to the target."""
    size = settings.size
    width, height = img.size
    if settings.fit == "center_crop":
        side = min(width, height)
        box = ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)
        return img.resize((size, size), Image.Resampling.LANCZOS, box=box, reducing_gap=_REDUCING_GAP)
    scale = size / max(width, height)
    inner = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = img.resize(inner, Image.Resampling.LANCZOS, reducing_gap=_REDUCING_GAP)
    canvas = Image.new("RGB", (size, size), settings.background)
    canvas.paste(resized, ((size - inner[0]) // 2, (size - inner[1]) // 2))
    return canvas


def write_jpeg_atomic(img: Image.Image, dest: Path, settings: ResizeConfig) -> None:
    """Write to a temporary name, then rename: a reader (or a rerun after a kill) never sees half a file."""
    temp = dest.with_name(f"{dest.name}.{os.getpid()}{TEMP_SUFFIX}")
    try:
        img.save(temp, "JPEG", quality=settings.quality, subsampling=settings.subsampling)
        os.replace(temp, dest)
    finally:
        temp.unlink(missing_ok=True)
