"""Memory of a `run --wait` service over many quota days; writes BENCHMARKS.md.

    python bench/bench_service.py [--images 10000] [--per-day 1000]

One service (the same `Service` the CLI runs) captions `--images` small frames through the fake
Gemini server, which allows `--per-day` requests a Pacific day: the service captions a day's
worth, sleeps until the reset, and goes on, for images / per-day quota days. Server and service
share one virtual clock, so the days pass in seconds; the fake server runs in this process too,
but its log of requests is emptied as it is counted, so what grows is the service's alone.
Sampled at each 1,000 captions: the process's resident memory then (RSS) and its peak so far.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import sys
import tempfile
from datetime import date
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from fake_gemini import FakeGemini, ModelLimits  # noqa: E402
from virtual_time import VirtualClock, run_virtual  # noqa: E402

from bench.report import machine, publish  # noqa: E402
from ghibli_async.config import ApiKey, load_config  # noqa: E402
from ghibli_async.logs import configure_logging  # noqa: E402
from ghibli_async.pipeline import Pipeline  # noqa: E402
from ghibli_async.service import Service, ServiceReport  # noqa: E402

SAMPLE_EVERY_S = 300.0  # virtual seconds between looks at the captions served so far
KEY = ApiKey("key#1", "GEMINI_API_KEY_1", "secret-1", "project-1")


def make_frames(folder: Path, count: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for number in range(1, count + 1):
        pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"frame{number:05d}.png", compress_level=1)


def rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_config(root: Path, base_url: str, per_day: int) -> Path:
    config = root / "config.yaml"
    config.write_text(
        "paths: {input_dir: frames, output_dir: out/train, work_dir: work}\n"
        "stages: {filter: false}\n"
        "resize: {size: 64}\n"
        f"caption:\n  base_url: {base_url}\n  concurrency: 4\n"
        f"  models:\n    - {{name: flash, rpm: 60, rpd: {per_day}, tpm: 1000000}}\n",
        encoding="utf-8",
    )
    return config


def serve(root: Path, images: int, per_day: int) -> tuple[ServiceReport, list[tuple[int, float, float]]]:
    clock = VirtualClock()
    fake = FakeGemini(
        clock, {KEY.secret: KEY.project}, {"flash": ModelLimits(rpm=60, rpd=per_day)}, latency=lambda: 1.5
    )
    samples: list[tuple[int, float, float]] = []  # (captions served, RSS MB, peak MB)

    served = 0

    def count_served() -> int:
        nonlocal served
        served += sum(1 for seen in fake.seen if seen.kind == "ok")
        fake.seen.clear()  # the fake's own log must not pass for the service's growth
        return served

    async def sample() -> None:
        next_mark = 1000
        while True:
            await asyncio.sleep(SAMPLE_EVERY_S)
            if count_served() >= next_mark:
                samples.append((served, rss_mb(), peak_mb()))
                next_mark = served + 1000

    async def scenario() -> ServiceReport:
        runner = await fake.start()
        sampler = asyncio.create_task(sample())
        try:
            pipeline = Pipeline(load_config(write_config(root, fake.base_url, per_day)), keys=[KEY], clock=clock)
            return await Service(pipeline, wait=True).run()
        finally:
            sampler.cancel()
            await runner.cleanup()

    report = run_virtual(scenario())
    if count_served() > samples[-1][0]:
        samples.append((served, rss_mb(), peak_mb()))  # the last day's, after the service ended
    return report, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--per-day", type=int, default=1000)
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    configure_logging()
    root = Path(tempfile.mkdtemp(prefix="bench-service-"))
    try:
        make_frames(root / "frames", args.images)
        report, samples = serve(root, args.images, args.per_day)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    first, last = samples[0], samples[-1]
    late = [rss for _, rss, _ in samples[len(samples) // 2 :]]
    late_spread = max(late) - min(late)
    rows = "\n".join(f"| {served:,} | {rss:.0f} | {peak:.0f} |" for served, rss, peak in samples)
    body = f"""Machine: {machine()}; {date.today().isoformat()}.
`python bench/bench_service.py --images {args.images} --per-day {args.per_day}`: one `run --wait`
service, {args.images:,} frames (64 px noise, resized to 64), one key and one model that the fake server
allows {args.per_day:,} requests a Pacific day (60 a minute, 1.5 s each): {report.passes} passes,
one a quota day, each followed by a sleep until the reset; ended with exit {int(report.end)}.
Days pass on a virtual clock; the fake server shares the process, its request log emptied as counted.

| captions served | RSS (MB) | peak RSS so far (MB) |
|---:|---:|---:|
{rows}

Peak memory at {last[0]:,} captions is {last[2] / first[2]:.2f}× the peak at {first[0]:,} ({first[2]:.0f} → \
{last[2]:.0f} MB); resident memory {last[1] / first[1]:.2f}× ({first[1]:.0f} → {last[1]:.0f} MB), of which the
second half of the days moved it by {late_spread:.0f} MB: the first passes warm caches (SQLite pages, the
allocator's arenas), then it stays level; nothing is kept per image between passes.
Not shown: memory of the worker processes (they resize on day one, then are shut down each pass);
a real day's wall-clock waits (here virtual); a person filter (off here: its model is the
largest allocation of a real run, loaded once per pass)."""
    publish("Service memory over quota days (run --wait)", body, write=not args.no_write)


if __name__ == "__main__":
    main()
