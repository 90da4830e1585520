"""Resize stage vs a plain one-image-at-a-time Pillow loop on the same frames; writes BENCHMARKS.md.

    python bench/bench_resize.py [--frames 200] [--real ../shared/data/frames]

Both sides do the same work per frame (center square, LANCZOS to 512, JPEG q95 4:4:4); the stage
time is a whole `run` (scan, hashing, state writes, process pool start) with captioning off.
PSNR compares the stage's pixels before JPEG encoding with plain LANCZOS on the fully decoded
frame, on the synthetic frames, the real frames, and the real frames upscaled 2x (which makes
the stage's reduced JPEG decoding kick in). Target: >= 2x the plain loop; >= 40 dB on every frame.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.report import machine, publish  # noqa: E402
from ghibli_async.config import Config, PathsConfig, StagesConfig  # noqa: E402
from ghibli_async.imaging import square_image  # noqa: E402
from ghibli_async.pipeline import Pipeline  # noqa: E402

SIZE = 512


def film_like_frame(seed: int, size: int = 1000) -> Image.Image:
    """Flat cel-like shapes on a painted gradient, softened, with grain: decodes like a real frame."""
    rng = random.Random(seed)
    gradient = np.linspace(0, 1, size)[:, None, None] * np.array([rng.randrange(60, 200) for _ in range(3)])
    base = Image.fromarray((gradient + rng.randrange(30, 60)).clip(0, 255).astype(np.uint8).repeat(size, axis=1))
    draw = ImageDraw.Draw(base)
    for _ in range(25):
        x, y, r = rng.randrange(size), rng.randrange(size), rng.randrange(20, 200)
        colour = tuple(rng.randrange(256) for _ in range(3))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour, outline=(20, 20, 20), width=3)
    grain = np.random.default_rng(seed).normal(0, 6, (size, size, 3))
    softened = np.asarray(base.filter(ImageFilter.GaussianBlur(1.2)), dtype=np.float64)
    return Image.fromarray((softened + grain).clip(0, 255).astype(np.uint8))


def center_box(width: int, height: int) -> tuple[float, float, float, float]:
    side = min(width, height)
    return ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)


def plain_loop(frames: list[Path], out_dir: Path) -> float:
    started = time.perf_counter()
    for index, path in enumerate(frames, start=1):
        img = Image.open(path).convert("RGB")
        img = img.resize((SIZE, SIZE), Image.Resampling.LANCZOS, box=center_box(*img.size))
        img.save(out_dir / f"{index}.jpg", quality=95, subsampling=0)
    return time.perf_counter() - started


def stage_run(input_dir: Path, work: Path) -> float:
    config = Config(
        paths=PathsConfig(input_dir=input_dir, output_dir=work / "train", work_dir=work / "work"),
        stages=StagesConfig(filter=False, resize=True, caption=False),
    )
    started = time.perf_counter()
    report = asyncio.run(Pipeline(config, keys=[]).run())
    elapsed = time.perf_counter() - started
    assert report.outcomes("resize")["done"] == len(list(input_dir.iterdir())), report.stages
    return elapsed


def psnr(reference: Image.Image, candidate: Image.Image) -> float:
    diff = np.asarray(reference, dtype=np.float64) - np.asarray(candidate, dtype=np.float64)
    mse = float((diff**2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def psnr_of(path: Path) -> float | None:
    """The stage's centre square against plain LANCZOS; None for a frame under the size (the stage
    rejects it as too small)."""
    with Image.open(path) as img:
        reference = img.convert("RGB").resize((SIZE, SIZE), Image.Resampling.LANCZOS, box=center_box(*img.size))
    candidate, _ = square_image(str(path), Config().resize.model_copy(update={"fit": "center_crop"}))
    return None if candidate is None else psnr(reference, candidate)


def real_frames(folder: Path | None, scratch: Path) -> list[Path]:
    """The real frames, and each of them upscaled 2x (to exercise reduced decoding)."""
    if folder is None or not folder.is_dir():
        return []
    frames = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    upscaled = []
    for path in frames:
        with Image.open(path) as img:
            big = img.convert("RGB").resize((img.width * 2, img.height * 2), Image.Resampling.BICUBIC)
        upscaled.append(scratch / f"x2_{path.stem}.jpg")
        big.save(upscaled[-1], quality=92)
    return frames + upscaled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=200)
    default_real = Path(__file__).resolve().parents[2] / "shared" / "data" / "frames"
    parser.add_argument("--real", type=Path, default=default_real, help="folder of real frames for the PSNR check")
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        frames_dir = scratch / "frames"
        frames_dir.mkdir()
        frames = []
        for seed in range(args.frames):
            frames.append(frames_dir / f"frame{seed}.jpg")
            film_like_frame(seed).save(frames[-1], quality=90)

        plain_dir = scratch / "plain"
        plain_dir.mkdir()
        plain_loop(frames[:10], plain_dir)  # warm the page cache and Pillow's imports alike
        plain_s = plain_loop(frames, plain_dir)
        stage_s = stage_run(frames_dir, scratch / "stage")  # cold, as a CLI run: pool start-up included
        warm_s = stage_run(frames_dir, scratch / "stage_warm")  # forkserver already running
        shutil.rmtree(plain_dir)

        real = real_frames(args.real, scratch)
        synthetic_psnr = [value for path in frames if (value := psnr_of(path)) is not None]
        measured = [psnr_of(path) for path in real]
        real_psnr = [value for value in measured if value is not None]
        too_small = len(measured) - len(real_psnr)

    plain_rate, stage_rate, warm_rate = args.frames / plain_s, args.frames / stage_s, args.frames / warm_s
    worst = min(synthetic_psnr + real_psnr)
    rows = [
        "| side | images/s |",
        "|---|---|",
        f"| plain loop (1 process) | {plain_rate:.1f} |",
        f"| resize stage (`run`, {os.cpu_count()} workers) | {stage_rate:.1f} |",
        f"| **ratio** | **{stage_rate / plain_rate:.2f}×** (target ≥ 2×) |",
        f"| resize stage, second run in the same process (worker start-up already paid) | {warm_rate:.1f} |",
        f"| ratio without start-up | {warm_rate / plain_rate:.2f}× |",
    ]
    psnr_line = (
        f"PSNR before JPEG encoding, stage vs plain LANCZOS: worst {min(synthetic_psnr):.1f} dB on the "
        f"{len(synthetic_psnr)} synthetic frames"
        + (
            f", worst {min(real_psnr):.1f} dB on {len(real_psnr)} real frames and their 2× upscales"
            + (
                f" ({too_small} real frames under 512 px left out: the stage rejects them as too small)"
                if too_small
                else ""
            )
            if real_psnr
            else ""
        )
        + f" (inf = identical); target ≥ 40 dB on every frame: {'met' if worst >= 40 else 'NOT met'}."
    )
    body = "\n".join(
        [
            f"{date.today().isoformat()}, {machine()}.",
            f"{args.frames} synthetic film-like 1000×1000 JPEG frames (q90); the plain loop: center square,",
            "LANCZOS to 512; the stage: its default `person_crop` (the bars check on every frame, no boxes",
            "with the filter off, so the centre square), JPEG q95 4:4:4. Stage time = one whole `run` with",
            "captioning off, worker start-up included. PSNR compares the stage's `center_crop` fit.",
            "",
            *rows,
            "",
            psnr_line,
            "",
            "Why not 2×: per frame the stage does the same work as the plain loop (reduced decoding only",
            "starts at a short side of 2048 px; 1000 px frames get none), so two processes on two cores",
            "are the ceiling, and the run also pays worker start-up (~0.3 s), hashing for duplicate",
            "detection, one state transaction per image and the hand-off to the workers.",
        ]
    )
    publish("Resize stage (`bench/bench_resize.py`)", body, write=not args.no_write)


if __name__ == "__main__":
    main()
