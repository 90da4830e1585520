"""Extraction speed: a 2-minute 1080p H.264 test video made with PyAV, each mode timed; writes
BENCHMARKS.md. Reported as "× real time" (video seconds per wall-clock second).

    python bench/bench_extract.py [--seconds 120] [--keyint 240]

Target: >= 10× real time for `interval` (a 2-hour film in <= 12 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.report import machine, publish  # noqa: E402
from ghibli_async.config import ExtractConfig  # noqa: E402
from ghibli_async.video import sample_frames  # noqa: E402

FPS = 24


def make_film(path: Path, seconds: int, keyint: int) -> int:
    """1080p, shots of 3-8 s, each in its own palette with moving detail, so the encoder and the
    decoder do real work and the shots can be told apart."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 1920, 1080, "yuv420p"
        stream.options = {"g": str(keyint), "preset": "ultrafast", "crf": "23"}
        cuts, at = set(), 0
        while at < seconds * FPS:
            cuts.add(at)
            at += FPS * int(rng.integers(3, 9))
        for index in range(seconds * FPS):
            if index in cuts:
                noise = rng.integers(0, 256, (135, 240, 3)).repeat(8, axis=0).repeat(8, axis=1)
                base = (0.7 * rng.integers(30, 220, 3) + 0.3 * noise).astype(np.uint8)
            picture = np.roll(base, index * 3, axis=1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return len(cuts)


def speed(path: Path, seconds: int, config: ExtractConfig) -> tuple[float, int]:
    started = time.perf_counter()
    frames = sum(1 for _ in sample_frames(path, config, start_s=0.0, black_luma=0.08))
    return seconds / (time.perf_counter() - started), frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=120)
    parser.add_argument("--keyint", type=int, default=240, help="frames between keyframes (x264's default is 250)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    modes = {
        "interval, every 5 s, exact": ExtractConfig(mode="interval", every_s=5.0),
        "interval, every 5 s, nearest keyframe": ExtractConfig(mode="interval", every_s=5.0, exact=False),
        "shots": ExtractConfig(mode="shots"),
    }
    with tempfile.TemporaryDirectory() as scratch:
        film = Path(scratch) / "film.mp4"
        shots = make_film(film, args.seconds, args.keyint)
        results = {name: speed(film, args.seconds, config) for name, config in modes.items()}
    rows = [f"| {name} | **{rate:.1f}×** | {frames} |" for name, (rate, frames) in results.items()]
    body = "\n".join(
        [
            f"{date.today().isoformat()}, {machine()}, PyAV {av.__version__}.",
            f"A {args.seconds} s 1920×1080 H.264 video at {FPS} fps, a keyframe every {args.keyint} frames "
            f"({args.keyint / FPS:.0f} s), made with PyAV; frames cropped to the center square and checked "
            f"for black, not written. The video has {shots} shots of 3-8 s.",
            "",
            "| mode | × real time | frames |",
            "|---|---|---|",
            *rows,
            "",
            "Target ≥ 10× real time for `interval`.",
        ]
    )
    publish("Video extraction (`bench/bench_extract.py`)", body, write=not args.no_write)


if __name__ == "__main__":
    main()
