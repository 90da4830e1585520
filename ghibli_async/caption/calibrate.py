"""`calibrate`: what packing several frames per request costs in caption quality, measured on the
real API before a quota day goes into it.

One sample of frames is captioned by one model twice, one frame per request and then k per
request, through the caption engine (the same buckets, quota books, checks and fallbacks). The
table compares each frame's two captions by the overlap of their content words, with their
lengths and the requests each way spent. The one-per-request captions of frames that were still
waiting for one are kept, so that part of the sample is not paid for again by the next run.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Collection
from dataclasses import dataclass, field

from ghibli_async.clock import Clock
from ghibli_async.config import ApiKey, Config
from ghibli_async.errors import UserError
from ghibli_async.stages.caption import CaptionEngine
from ghibli_async.state import State
from ghibli_async.state.results import CaptionJob
from ghibli_async.statuses import Status

_WORD = re.compile(r"[a-z]+")
_FUNCTION_WORDS = frozenset(
    "a an the and or but of in on at to from with by for into onto over under near behind beside "
    "his her its their this that these those is are was were be being been as while who which "
    "some one two three other another each very".split()
)


@dataclass(frozen=True)
class Kept:
    text: str
    needs_review: bool
    model: str
    key: str


@dataclass
class SampleResults:
    """Stands in for the state's results while calibrating: captions are collected, not stored."""

    captions: dict[int, Kept] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)

    def still_wants_caption(self, number: int) -> bool:
        return number not in self.captions and number not in self.failed

    def record_caption(
        self, number: int, caption: str, *, model: str, key_label: str, needs_review: bool = False, **_: object
    ) -> None:
        self.captions[number] = Kept(caption, needs_review, model, key_label)

    def record_caption_failure(self, number: int, status: Status, reason: str, **_: object) -> None:
        self.failed[number] = f"{status.value}: {reason}"

    def record_refusals(self, number: int, refused_by: Collection[str]) -> None:
        self.failed[number] = f"refused by {', '.join(sorted(refused_by))}"


def content_words(caption: str, trigger: str) -> set[str]:
    """The words that say what is in the frame: lower case, without the trigger and function words."""
    text = caption.lower().removeprefix(trigger.lower())
    return {word for word in _WORD.findall(text) if len(word) > 2 and word not in _FUNCTION_WORDS}


def overlap(one: str, other: str, trigger: str) -> float:
    """Shared content words over all content words of the two captions (1.0: the same words)."""
    a, b = content_words(one, trigger), content_words(other, trigger)
    return len(a & b) / len(a | b) if a | b else 1.0


@dataclass(frozen=True)
class FramePair:
    number: int
    single: str | None  # None: no caption (the reason is in `missing`)
    packed: str | None
    missing: str = ""


@dataclass
class Calibration:
    model: str
    frames_per_request: int
    trigger: str
    pairs: list[FramePair]
    requests_single: int
    requests_packed: int
    kept: int  # one-per-request captions stored for frames that were waiting for one

    def text(self) -> str:
        k = self.frames_per_request
        lines = [f"{'frame':>6}  {'words 1':>7}  {f'words {k}':>7}  {'overlap':>7}  captions (1 per request / {k})"]
        scores = []
        for pair in self.pairs:
            if pair.single is None or pair.packed is None:
                lines.append(f"{pair.number:>6}  {'':>7}  {'':>7}  {'':>7}  {pair.missing}")
                continue
            score = overlap(pair.single, pair.packed, self.trigger)
            scores.append(score)
            lines.append(
                f"{pair.number:>6}  {len(pair.single.split()):>7}  {len(pair.packed.split()):>7}  {score:>7.0%}  "
                f"{pair.single}\n{'':>33}{pair.packed}"
            )
        both = [pair for pair in self.pairs if pair.single and pair.packed]
        if both:
            single_words = statistics.fmean(len(p.single.split()) for p in both if p.single)
            packed_words = statistics.fmean(len(p.packed.split()) for p in both if p.packed)
            lines.append(
                f"{self.model}: {len(both)} frames compared; content-word overlap {statistics.fmean(scores):.0%} "
                f"(median {statistics.median(scores):.0%}); words {single_words:.1f} one per request, "
                f"{packed_words:.1f} at {k} per request"
            )
        lines.append(
            f"Requests: {self.requests_single} at one frame per request, {self.requests_packed} at {k} per request "
            f"(a quota day of {self.model} captions about {k}x as many frames at {k} per request)."
        )
        if self.kept:
            lines.append(f"{self.kept} one-per-request captions were kept for frames waiting for one.")
        return "\n".join(lines)


def pick_sample(state: State, models: Collection[str], size: int) -> list[int]:
    """`size` resized frames spread over the dataset, those still waiting for a caption first."""
    waiting = [job.number for job in state.results.caption_jobs(models)]
    others = sorted(state.results.resized_numbers() - set(waiting))
    chosen = _spread(waiting, size)
    return sorted(chosen + _spread(others, size - len(chosen)))


def _spread(numbers: list[int], size: int) -> list[int]:
    if size <= 0 or not numbers:
        return []
    if len(numbers) <= size:
        return list(numbers)
    step = len(numbers) / size
    return [numbers[int(i * step)] for i in range(size)]


async def calibrate(
    state: State, config: Config, keys: list[ApiKey], clock: Clock, *, model: str, frames_per_request: int, size: int
) -> Calibration:
    """Caption `size` frames with `model` one per request and `frames_per_request` per request."""
    chosen = config.caption.model(model)
    numbers = pick_sample(state, [chosen.name], size)
    if not numbers:
        raise UserError(
            "no resized frames to calibrate on yet: run the pipeline with the caption stage off first (--skip-caption)"
        )
    jobs = [CaptionJob(0, number) for number in numbers]
    runs = []
    for k in (1, frames_per_request):
        alone = [chosen.model_copy(update={"images_per_request": k})]
        caption = config.caption.model_copy(update={"models": alone, "verify": None})  # it captions, whatever it does
        results = SampleResults()
        engine = CaptionEngine(state, config.model_copy(update={"caption": caption}), keys, clock, results=results)
        report = await engine.run(jobs=jobs)
        runs.append((results, report.requests))
    (single, single_requests), (packed, packed_requests) = runs
    pairs = [
        FramePair(
            number,
            single.captions[number].text if number in single.captions else None,
            packed.captions[number].text if number in packed.captions else None,
            single.failed.get(number) or packed.failed.get(number) or "no caption (quota or a stop)",
        )
        for number in numbers
    ]
    kept = _keep_single_captions(state, single)
    return Calibration(
        chosen.name, frames_per_request, config.caption.trigger, pairs, single_requests, packed_requests, kept
    )


def _keep_single_captions(state: State, single: SampleResults) -> int:
    kept = 0
    for number, caption in single.captions.items():
        if state.results.still_wants_caption(number):
            state.results.record_caption(
                number, caption.text, model=caption.model, key_label=caption.key, needs_review=caption.needs_review
            )
            kept += 1
    return kept
