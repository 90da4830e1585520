"""Caption checks against planted faults: recall per kind, precision, requests spent asking again;
writes BENCHMARKS.md.

    python bench/bench_caption_checks.py [--frames 1500] [--share 0.015] [--seeds 5]

The fake Gemini server serves two models (Flash-Lite, and a hosted Gemma that refuses JSON mode
and system instructions); each answers with varied captions (tests/fake_captions.py) carrying
ordinary dirt to clean, and plants each kind of fault (repetition, refusal or meta talk, a proper
name, another language, generic content, a length far from the usual, the same or nearly the same
caption as another frame) in `share` of its answers; it records which answer carried which. The
engine captions every frame once through the real buckets on a virtual clock (a doubtful caption
is asked again once on the other model), the dataset-wide checks run as after every pass, and
`caption-report --json`'s lines (one per frame) are scored: a planted fault still in a final
caption is caught when its own check fired on that frame; a flag is right when the frame's final
caption carries a planted fault, or is the original a planted duplicate copied. Each of `seeds`
runs captions the same frames with its own fake captioner seed; the counts are summed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "tests"), str(Path(__file__).resolve().parents[1])]

from fake_captions import DUPLICATE, FAULTS, LENGTH, FaultyCaptions  # noqa: E402
from fake_gemini import FakeGemini, ModelLimits, realistic_latency  # noqa: E402
from virtual_time import VirtualClock, run_virtual  # noqa: E402

from bench.frames import caption_bench_config, resize_distinct_frames  # noqa: E402
from bench.report import machine, publish  # noqa: E402
from ghibli_async.caption.checks import check_caption, doubt, identity_phrases  # noqa: E402
from ghibli_async.caption.text import normalize_caption  # noqa: E402
from ghibli_async.caption_report import caption_rows, refresh_caption_checks  # noqa: E402
from ghibli_async.config import (  # noqa: E402
    ApiKey,
    CaptionConfig,
    Config,
    ModelQuota,
)
from ghibli_async.stages.caption import CaptionEngine  # noqa: E402
from ghibli_async.state import State  # noqa: E402
from ghibli_async.workdir import output_name  # noqa: E402

MODELS = {"gemini-flash-lite-latest": ModelLimits(rpm=15, rpd=10**6), "gemma-3-27b-it": ModelLimits(rpm=30, plain=True)}
KEY = ApiKey("key#1", "GEMINI_API_KEY_1", "secret", "free-project")
IDENTITY = "soft watercolor background"


def config_for(work: Path, base_url: str) -> Config:
    models = [ModelQuota(name=name, rpm=limits.rpm, rpd=limits.rpd, tpm=250_000) for name, limits in MODELS.items()]
    return caption_bench_config(work, CaptionConfig(models=models, base_url=base_url))


async def caption_all(work: Path, writer: FaultyCaptions) -> tuple[list[dict], int]:
    """Every frame captioned once, the checks over the dataset stored: `caption-report --json`'s
    rows and the requests the server answered."""
    clock = VirtualClock()
    fake = FakeGemini(clock, {KEY.secret: KEY.project}, dict(MODELS), latency=realistic_latency(2.0), captions=writer)
    runner = await fake.start()
    try:
        config = config_for(work, fake.base_url)
        with State.open(config.state_path) as state:
            await CaptionEngine(state, config, [KEY], clock).run()
            refresh_caption_checks(state, config)
            rows = [json.loads(row.json()) for row in caption_rows(state, config)]
    finally:
        await runner.cleanup()
    return rows, len(fake.successes())


@dataclass
class Tally:
    """What one or more runs found, per fault kind ('' for a clean answer)."""

    answers: Counter[str] = field(default_factory=Counter)  # every answer the fake gave
    arrived: Counter[str] = field(default_factory=Counter)  # answers their own check caught as they came
    final: Counter[str] = field(default_factory=Counter)  # planted faults still in a final caption
    caught: Counter[str] = field(default_factory=Counter)  # of those, flagged by their own check
    flagged: int = 0  # frames with any check fired in the report
    right: int = 0  # of those, carrying a planted fault or the original a planted duplicate copied
    frames: int = 0
    requests: int = 0
    review: int = 0
    precisions: list[float] = field(default_factory=list)  # one per run
    offered: list[str] = field(default_factory=list)  # phrases offered for the trigger, in any run

    def add(self, other: Tally) -> None:
        for name in ("answers", "arrived", "final", "caught"):
            getattr(self, name).update(getattr(other, name))
        for name in ("flagged", "right", "frames", "requests", "review"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.precisions += other.precisions
        self.offered += [phrase for phrase in other.offered if phrase not in self.offered]


def score(rows: list[dict], writer: FaultyCaptions, digests: dict[int, str], rules: CaptionConfig) -> Tally:
    """Planted faults still in final captions, which of them their own check flagged, how many of
    all flags were right, and what the checks caught as each answer arrived."""
    tally = Tally(frames=len(rows))
    planted = {row["number"]: writer.planted[(row["model"], digests[row["number"]])] for row in rows}
    by_digest = {digest: number for number, digest in digests.items()}
    originals = {  # frames whose caption a planted duplicate in the final dataset copied
        by_digest[writer.copied_from[(row["model"], digests[row["number"]])]]
        for row in rows
        if planted[row["number"]] == DUPLICATE
    }
    for row in rows:
        fault, checks = planted[row["number"]], {check["check"] for check in row["checks"]}
        if fault:
            tally.final[fault] += 1
            tally.caught[fault] += fault in checks
        if checks:
            tally.flagged += 1
            tally.right += bool(fault) or row["number"] in originals
        tally.review += row["doubt"] >= rules.review_doubt
    for fault, text in writer.answers:
        found = check_caption(normalize_caption(text, rules.trigger, rules.separator), rules)
        tally.answers[fault] += 1
        tally.arrived[fault] += fault in {f.check for f in found} if fault else doubt(found) >= rules.review_doubt
    tally.precisions.append(tally.right / max(tally.flagged, 1))
    tally.offered = [phrase for phrase, _ in identity_phrases([row["caption"] for row in rows], rules)]
    return tally


def run_seed(work: Path, seed: int, share: float, digests: dict[int, str]) -> Tally:
    """One run of the fake captioner with `seed` over the resized frames in `work` (copied first)."""
    run_dir = work / f"seed{seed}"
    shutil.copytree(work / "work", run_dir / "work")
    writer = FaultyCaptions(share=share, seed=seed, identity=IDENTITY)
    rows, requests = run_virtual(caption_all(run_dir, writer))
    tally = score(rows, writer, digests, config_for(run_dir, "").caption)
    tally.requests = requests
    return tally


def table(tally: Tally, args: argparse.Namespace) -> str:
    faulty = sum(tally.answers[fault] for fault in FAULTS)
    lines = [
        f"{date.today().isoformat()}, {machine()}.",
        f"{args.frames:,} frames x {args.seeds} runs (fake captioner seeds 0-{args.seeds - 1}), two models "
        f"(Flash-Lite, Gemma 3 27B) on the fake Gemini server; each plants each kind of fault in {args.share:.1%} "
        f"of its answers ({faulty:,} of {tally.answers.total():,} answers faulty) and dirt to clean in 30%; a "
        "caption asked again goes to the other model. Counts summed over the runs.",
        "",
        "| fault | planted (all answers) | caught as it arrived | still in a final caption | flagged by its check "
        "in `caption-report --json` | recall |",
        "|---|---|---|---|---|---|",
    ]
    for fault in FAULTS:
        recall = f"**{tally.caught[fault] / tally.final[fault]:.2f}**" if tally.final[fault] else "-"
        arrived = "over the dataset" if fault in (LENGTH, DUPLICATE) else f"{tally.arrived[fault]}"
        found = f"{tally.final[fault]} | {tally.caught[fault]}"
        lines.append(f"| {fault} | {tally.answers[fault]} | {arrived} | {found} | {recall} |")
    lines += [
        "",
        f"Precision over all flags: **{tally.right / max(tally.flagged, 1):.2f}** ({tally.right} of {tally.flagged} "
        f"flagged frames carry a planted fault or are the original a planted duplicate copied; per run "
        f"{min(tally.precisions):.2f}-{max(tally.precisions):.2f}). Requests: {tally.requests:,} for "
        f"{tally.frames:,} frames: **{(tally.requests - tally.frames) / tally.frames:.3f}** extra requests per frame "
        f"spent on asking again; {tally.arrived['']} of {tally.answers['']:,} clean answers were asked again. "
        f"Frames left for review (doubt >= 0.7): {tally.review}. Phrases offered for the trigger: "
        f"{', '.join(repr(p) for p in tally.offered) or 'none'} (planted in 85% of clean captions: '{IDENTITY}').",
        "",
        "The wrong flags are clean captions nearly the same as another frame's: the fake describes a frame "
        "from 20 subjects x 20 places, so a few frames share all but one content word by chance. "
        "Faults found as an answer arrives (repetition, refusal, name, language, generic) are asked again on "
        "the other model, so few stay in a final caption: those that do are the ones both models got wrong. "
        "Length and duplicates are found over the dataset after the pass and are not asked again. Not shown: "
        "real captioners' faults beyond these kinds and phrasings (a caption that is fluent, English and wrong "
        "about the frame needs `caption.verify` or a person), names the checks cannot tell from ordinary "
        "capitalised words at a caption's start, and real films, where consecutive frames of one shot may "
        "rightly share nearly the same caption (flagged unless their pictures are near-duplicates).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=1500)
    parser.add_argument("--share", type=float, default=0.015, help="answers of each model planted with each fault")
    parser.add_argument("--seeds", type=int, default=5, help="runs, each with its own fake captioner seed")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    total = Tally()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        config = config_for(work, "")
        resize_distinct_frames(config, args.frames)
        digests = {
            number: hashlib.sha256((config.resized_dir / output_name(number)).read_bytes()).hexdigest()
            for number in range(1, args.frames + 1)
        }
        for seed in range(args.seeds):
            total.add(run_seed(work, seed, args.share, digests))
    publish(
        "Caption checks against planted faults (`bench/bench_caption_checks.py`)",
        table(total, args),
        write=not args.no_write,
    )


if __name__ == "__main__":
    main()
