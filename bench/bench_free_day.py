"""Frames a day on one free Gemini project, at 1, 4 and 8 frames per request; writes BENCHMARKS.md.

    python bench/bench_free_day.py [--minutes 20]

One project, one key, today's free table (Flash 5/min 20/day, Flash-Lite 15/min 500/day, Gemma 3
30/min 14,400/day and 15,000 input tokens/min) on the fake Gemini server, which enforces RPM and
input TPM and counts 70 + 258 tokens per image like Gemini does for small images; answers after a
log-normal delay (median 2 s); engine and server on one virtual clock. The daily limits are lifted
for the measurement (Flash would be spent after four minutes): each model's steady frames per
minute (after the first minute) is measured against its bound, min(rpm, TPM / input tokens per
request) x frames per request, and a quota day's frames are then min(rpd x k, that rate x 1440).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from collections import Counter
from datetime import date
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "tests"), str(Path(__file__).resolve().parents[1])]

from fake_gemini import FakeGemini, ModelLimits, realistic_latency  # noqa: E402
from virtual_time import VirtualClock, run_virtual  # noqa: E402

from bench.frames import caption_bench_config, resize_distinct_frames  # noqa: E402
from bench.report import machine, publish  # noqa: E402
from ghibli_async.config import (  # noqa: E402
    ApiKey,
    CaptionConfig,
    Config,
    ModelQuota,
)
from ghibli_async.stages.caption import CaptionEngine  # noqa: E402
from ghibli_async.state import State  # noqa: E402

FREE = {  # (rpm, rpd, input tpm) of one free project, mid-2026
    "gemini-flash-latest": (5, 20, 250_000),
    "gemini-flash-lite-latest": (15, 500, 250_000),
    "gemma-3-27b-it": (30, 14_400, 15_000),
}
KEY = ApiKey("key#1", "GEMINI_API_KEY_1", "secret", "free-project")
STEADY_AFTER_S = 60.0
PROMPT_TOKENS, IMAGE_TOKENS = 70, 258  # what the fake (like Gemini for a small image) counts


def config_for(work: Path, base_url: str, frames_per_request: int) -> Config:
    models = [
        ModelQuota(name=name, rpm=rpm, rpd=10**6, tpm=tpm, images_per_request=frames_per_request)
        for name, (rpm, _, tpm) in FREE.items()
    ]
    return caption_bench_config(work, CaptionConfig(models=models, base_url=base_url))


def bound_per_minute(rpm: int, tpm: int, k: int) -> float:
    """Frames a minute one model can take at k frames per request: its RPM or its input TPM binds."""
    return min(rpm, tpm / (PROMPT_TOKENS + IMAGE_TOKENS * k)) * k


async def measure(work: Path, k: int, minutes: float) -> dict[str, float]:
    """Steady frames per minute of each model over `minutes` of captioning at k frames per request."""
    clock = VirtualClock()
    limits = {name: ModelLimits(rpm=rpm, rpd=10**6, tpm=tpm) for name, (rpm, _, tpm) in FREE.items()}
    fake = FakeGemini(clock, {KEY.secret: KEY.project}, limits, latency=realistic_latency(2.0))
    runner = await fake.start()
    try:
        config = config_for(work, fake.base_url, k)
        with State.open(config.state_path) as state:
            engine = CaptionEngine(state, config, [KEY], clock)
            started = clock.now()

            async def stop_later() -> None:
                await clock.sleep(minutes * 60)
                engine.stop_politely()

            stopper = asyncio.create_task(stop_later())
            await engine.run()
            stopper.cancel()
    finally:
        await runner.cleanup()
    assert not [seen for seen in fake.seen if seen.status == 429], "the engine went over a limit"
    end = STEADY_AFTER_S + 60 * int((minutes * 60 - STEADY_AFTER_S - 30) // 60)  # whole minutes, before the stop
    frames: Counter[str] = Counter()
    for seen in fake.successes():
        if STEADY_AFTER_S <= seen.at - started < end:
            frames[seen.model] += len(seen.images)
    return {model: frames[model] / ((end - STEADY_AFTER_S) / 60) for model in FREE}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="emulated minutes of captioning per k")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    packs = (1, 4, 8)
    most = int(sum(bound_per_minute(rpm, tpm, max(packs)) for rpm, _, tpm in FREE.values()) * (args.minutes + 1))

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        resize_distinct_frames(config_for(work, "", 1), most)
        for k in packs:
            run_dir = work / f"k{k}"
            shutil.copytree(work / "work", run_dir / "work")  # the same resized frames, no captions yet
            rows.append((k, run_virtual(measure(run_dir, k, args.minutes))))

    lines = [
        f"{date.today().isoformat()}, {machine()}.",
        "One free project, one key: "
        + "; ".join(f"{m} {r}/min {d}/day {t} TPM" for m, (r, d, t) in FREE.items())
        + ".",
        f"Fake Gemini enforcing RPM and input TPM ({PROMPT_TOKENS} + {IMAGE_TOKENS} tokens per image), answers "
        f"after a log-normal delay (median 2 s), virtual clock, {args.minutes:.0f} emulated minutes per row.",
        "",
        "| frames / request | frames / min, steady | bound | % of bound | frames / quota day | per model (day) |",
        "|---|---|---|---|---|---|",
    ]
    for k, rates in rows:
        bound = sum(bound_per_minute(rpm, tpm, k) for rpm, _, tpm in FREE.values())
        per_day = {model: min(rpd * k, rates[model] * 1440) for model, (_, rpd, _) in FREE.items()}
        detail = ", ".join(f"{model.removeprefix('gemini-')} {day:,.0f}" for model, day in per_day.items())
        lines.append(
            f"| {k} | {sum(rates.values()):.1f} | {bound:.1f} | **{100 * sum(rates.values()) / bound:.0f}%** "
            f"| **{sum(per_day.values()):,.0f}** | {detail} |"
        )
    lines += [
        "",
        "A quota day's frames = min(rpd x k, the measured steady rate x 1440) per model: the daily "
        "limits were lifted to measure the rate (Flash would be spent in four minutes). At 4 and 8 "
        "frames per request Gemma's 15,000 input tokens a minute bind before its 30 requests do; "
        "the engine learns the tokens per frame from the answers and paces to the TPM. Not shown: "
        "caption quality at k > 1 (run `calibrate` on your frames first), answers a real model "
        "gets wrong (each such frame costs one more request), and real images above 384 px, which "
        "Gemini counts as more tokens (tiles of 258) than these small ones.",
    ]
    publish("Frames a day on one free project (`bench/bench_free_day.py`)", "\n".join(lines), write=not args.no_write)


if __name__ == "__main__":
    main()
