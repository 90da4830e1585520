"""Pillow operations of the resize stage: one source file in, one square RGB JPEG out.

Runs in worker processes, so everything here is a plain function of picklable arguments, and
errors are returned as values: one bad file never stops the run.
"""

from __future__ import annotations

import errno
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps

from ghibli_async.atomic import atomic_path
from ghibli_async.config import ResizeConfig
from ghibli_async.facts import Measurements
from ghibli_async.geometry import BUCKET_STEP, Corners, bucket_size, crop_window
from ghibli_async.statuses import TOO_SMALL, Status

# Decode JPEGs at a reduced DCT scale, and box-reduce other formats, only while the result stays
# at least this many times the target size: measured at >= 40 dB PSNR against plain LANCZOS
# (bench/bench_resize.py). A gap of 1.0 fell to 39.1 dB on a real 2000x1080 frame.
_REDUCING_GAP = 2.0

# EXIF orientations that turn the picture by 90 degrees (width and height trade places).
_SWAPS_AXES = {5, 6, 7, 8}


_MACHINE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EIO, errno.EROFS, errno.EMFILE, errno.ENFILE}
)


@dataclass(frozen=True)
class ResizeOutcome:
    """`status` is `done`, `rejected` (with reason `too_small`) or `failed` (with the reason); when
    the machine failed (`machine`: disk full, permissions) the frame stays `pending`."""

    status: Status
    reason: str | None = None
    source_size: tuple[int, int] | None = None
    machine: bool = False
    output_size: tuple[int, int] | None = None  # the written image's (a bucket's) width and height
    window: Corners | None = None  # what of the frame it shows, in fractions (the review page maps boxes)


def resize_file(source: str, dest: str, settings: ResizeConfig, persons: Sequence[Corners] = ()) -> ResizeOutcome:
    """Resize `source` to a JPEG at `dest` in the geometry `settings.fit` says, atomically;
    `persons`: the frame's person boxes (fractions), which a person-aware crop keeps."""
    try:
        square, outcome = square_image(source, settings, persons)
        if square is not None:
            write_jpeg_atomic(square, Path(dest), settings)
    except Image.DecompressionBombError:
        return ResizeOutcome(Status.FAILED, "image too large (decompression bomb guard)")
    except Image.UnidentifiedImageError:
        return ResizeOutcome(Status.FAILED, "not an image Pillow can read")
    except Exception as exc:  # noqa: BLE001 - any decoder error is this file's problem, not the run's
        if (problem := machine_problem(exc)) is not None:
            return ResizeOutcome(Status.PENDING, problem, machine=True)
        return ResizeOutcome(Status.FAILED, f"corrupt image: {exc}")
    return outcome


def machine_problem(exc: BaseException) -> str | None:
    """What the machine did wrong (disk full, permissions, I/O, read-only), or None when the error
    is the file's own: only the latter marks a frame failed."""
    if isinstance(exc, OSError) and exc.errno in _MACHINE_ERRNOS:
        return f"{os.strerror(exc.errno)}" + (f": {exc.filename}" if exc.filename else "")
    return None


def square_image(
    source: str, settings: ResizeConfig, persons: Sequence[Corners] = ()
) -> tuple[Image.Image | None, ResizeOutcome]:
    """The upright RGB image to write, before JPEG encoding; None with a `rejected` outcome if too small."""
    with Image.open(source) as img:
        orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
        source_size = img.size[::-1] if orientation in _SWAPS_AXES else img.size
        if too_small(source_size, settings):
            return None, ResizeOutcome(Status.REJECTED, TOO_SMALL, source_size)
        _decode_reduced(img, settings.size)
        upright = ImageOps.exif_transpose(img) if orientation != 1 else img
        fitted, window = fit_frame(to_rgb(upright, settings.background), settings, persons)
        return fitted, ResizeOutcome(Status.DONE, None, source_size, output_size=fitted.size, window=window)


def too_small(size: tuple[int, int], settings: ResizeConfig) -> bool:
    """Below the target size (the short side for a crop, the long one for a pad), without upscaling."""
    if settings.fit == "bucket":  # a bucket is never larger than the frame: only a sliver is too small
        return min(size) < BUCKET_STEP
    needed = max(size) if settings.fit == "pad" else min(size)
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


def fit_frame(img: Image.Image, settings: ResizeConfig, persons: Sequence[Corners] = ()) -> tuple[Image.Image, Corners]:
    """The frame in its target geometry, LANCZOS-resized: a square (person-aware or centred crop,
    or padded with the background), or its aspect-ratio bucket (bars trimmed first); and the
    window the result shows, as fractions of the frame (beyond 0..1 where it is padding)."""
    width, height = img.size
    fitted, box = _fit(img, settings, persons)
    return fitted, (box[0] / width, box[1] / height, box[2] / width, box[3] / height)


def _fit(img: Image.Image, settings: ResizeConfig, persons: Sequence[Corners]) -> tuple[Image.Image, Corners]:
    size = settings.size
    width, height = img.size
    if settings.fit in ("person_crop", "bucket"):
        left, top, right, bottom = content_box(img)  # letterbox / pillarbox bars are not the frame
        boxes = [
            (x1 * width - left, y1 * height - top, x2 * width - left, y2 * height - top) for x1, y1, x2, y2 in persons
        ]
        inner_w, inner_h = right - left, bottom - top
        target = bucket_size(inner_w, inner_h, size) if settings.fit == "bucket" else (size, size)
        x1, y1, x2, y2 = crop_window(inner_w, inner_h, target[0] / target[1], boxes)
        box = (left + x1, top + y1, left + x2, top + y2)
        return img.resize(target, Image.Resampling.LANCZOS, box=box, reducing_gap=_REDUCING_GAP), box
    if settings.fit == "center_crop":
        side = min(width, height)
        box = ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)
        return img.resize((size, size), Image.Resampling.LANCZOS, box=box, reducing_gap=_REDUCING_GAP), box
    scale = size / max(width, height)
    inner = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = img.resize(inner, Image.Resampling.LANCZOS, reducing_gap=_REDUCING_GAP)
    canvas = Image.new("RGB", (size, size), settings.background)
    canvas.paste(resized, ((size - inner[0]) // 2, (size - inner[1]) // 2))
    side = max(width, height)  # the square canvas, in frame pixels, centred on the frame
    return canvas, ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)


_BAR_LUMA = 0.06  # a row or column this dark on average is a letterbox / pillarbox bar


def content_box(img: Image.Image) -> tuple[int, int, int, int]:
    """The frame without black bars at its edges (left, top, right, bottom); the whole frame when
    it is dark all over. Looked for on a copy about 256 px on its short side (a fifth of the cost
    at 1080p); where a bar ends inside a block of that copy, the block goes with the bar."""
    factor = max(1, min(img.size) // 256)
    small = img.convert("L").reduce(factor) if factor > 1 else img.convert("L")
    grey = np.asarray(small, dtype=np.float32) / 255
    rows = np.flatnonzero(grey.mean(axis=1) > _BAR_LUMA)
    cols = np.flatnonzero(grey.mean(axis=0) > _BAR_LUMA)
    if not len(rows) or not len(cols):
        return (0, 0, img.width, img.height)
    height, width = grey.shape

    def edge(first: int, last: int, count: int, full: int) -> tuple[int, int]:
        start = 0 if first == 0 else min(full, (first + 1) * factor) if factor > 1 else first
        end = full if last == count - 1 else last * factor if factor > 1 else last + 1
        return start, max(end, start + 1)

    left, right = edge(int(cols[0]), int(cols[-1]), width, img.width)
    top, bottom = edge(int(rows[0]), int(rows[-1]), height, img.height)
    return left, top, right, bottom


def write_jpeg_atomic(img: Image.Image, dest: Path, settings: ResizeConfig) -> None:
    """A reader (or a rerun after a kill) never sees half a file."""
    with atomic_path(dest) as temp:
        img.save(temp, "JPEG", quality=settings.quality, subsampling=settings.subsampling)


@dataclass(frozen=True)
class FrameLook:
    """What the filter needs from one frame, from a single decode: a downscaled RGB copy for the
    detectors and the numbers for the junk-frame checks (luma 0-1, perceptual hash as 16 hex)."""

    pixels: np.ndarray | None = None
    brightness: float = 0.0
    contrast: float = 0.0
    sharpness: float = 0.0
    phash: str = ""
    error: str | None = None
    machine: bool = False  # the error is the machine's (see `machine_problem`), not the file's

    @property
    def measurements(self) -> Measurements:
        return Measurements(self.brightness, self.contrast, self.sharpness, self.phash)


_GREY_SIDE = 256  # sharpness is measured at this size, so it does not depend on the frame's size


def look_at_frame(source: str, detect_size: int) -> FrameLook:
    """Decode once (reduced when the JPEG allows), upright, RGB, at most `detect_size` on a side."""
    try:
        with Image.open(source) as img:
            if img.format == "JPEG":
                img.draft("RGB", (detect_size, detect_size))
            upright = ImageOps.exif_transpose(img)
            rgb = to_rgb(upright, (255, 255, 255))
            rgb.thumbnail((detect_size, detect_size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    except Image.UnidentifiedImageError:
        return FrameLook(error="not an image Pillow can read")
    except Exception as exc:  # noqa: BLE001 - any decoder error is this file's problem, not the run's
        if (problem := machine_problem(exc)) is not None:
            return FrameLook(error=problem, machine=True)
        return FrameLook(error=f"corrupt image: {exc}")
    grey = rgb.convert("L")
    small = np.asarray(grey.resize(_grey_size(grey.size), Image.Resampling.BILINEAR), dtype=np.float64) / 255
    return FrameLook(
        pixels=np.asarray(rgb),
        brightness=float(small.mean()),
        contrast=float(small.std()),
        sharpness=_laplacian_variance(small),
        phash=perceptual_hash(grey),
    )


def _grey_size(size: tuple[int, int]) -> tuple[int, int]:
    scale = _GREY_SIDE / min(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _laplacian_variance(grey: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian: low on blurred frames, high on crisp line art."""
    lap = grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:] - 4 * grey[1:-1, 1:-1]
    return float(lap.var())


_DCT_SIZE = 32
_DCT = np.cos(np.pi * (2 * np.arange(_DCT_SIZE)[None, :] + 1) * np.arange(_DCT_SIZE)[:, None] / (2 * _DCT_SIZE))


def perceptual_hash(grey: Image.Image) -> str:
    """pHash: the signs of the 8x8 lowest DCT frequencies of a 32x32 grey copy against their median."""
    pixels = np.asarray(grey.resize((_DCT_SIZE, _DCT_SIZE), Image.Resampling.LANCZOS), dtype=np.float64)
    low = (_DCT @ pixels @ _DCT.T)[:8, :8].flatten()
    bits = low > np.median(low[1:])
    return f"{int(''.join('1' if bit else '0' for bit in bits), 2):016x}"
