"""Extract stage: frames from the videos in the input folder, as PNG files in the work dir.

Each frame is named `<video stem>_<hh-mm-ss.mmm>.png` and written atomically, so the files
themselves say how far a video got: an interrupted video resumes after its last frame, a finished
one (recorded in the state) is skipped. The frames then flow through scan, filter, resize and
caption like any other image. Two videos are decoded at once (PyAV decodes outside the GIL).
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from tqdm.auto import tqdm

from ghibli_async.atomic import atomic_path, remove_partials
from ghibli_async.config import Config
from ghibli_async.inputs import list_inputs
from ghibli_async.stages.base import PlanContext, RunContext, StageReport, plural
from ghibli_async.state import State
from ghibli_async.statuses import VideoStatus
from ghibli_async.video import frame_name, sample_frames, seconds_of, video_duration

log = structlog.get_logger(__name__)

_VIDEOS_AT_ONCE = 2


class ExtractStage:
    name = "extract"
    label = "extracted"
    uses_pool = False
    after_stop = False
    status_column: str | None = None
    skip: str | None = "extract frames from videos"

    def plan(self, context: PlanContext) -> None:
        if not context.config.stages.extract:
            context.says(self.name, "off")
            return
        todo = [video for video in context.inputs.videos if str(video) not in context.extracted]
        context.says(
            self.name, f"{plural(len(todo), 'video')} to extract frames from (their frames are not counted below)"
        )

    def enabled(self, config: Config) -> bool:
        return config.stages.extract

    async def run(self, context: RunContext) -> StageReport:
        if not context.inputs.videos:
            return StageReport()
        stop = threading.Event()  # the decoding threads look at it between frames
        with context.stop.listening(stop.set):
            extracted = await run_extract(context.state, context.config, context.inputs.videos, stop)
        if extracted.frames:  # new frame files on disk: walk the folders once more
            context.inputs = list_inputs(context.config)
        failed = f", {len(extracted.failed)} failed: {', '.join(extracted.failed[:5])}" if extracted.failed else ""
        return StageReport(
            Counter(frames=extracted.frames, videos=extracted.videos_done, failed=len(extracted.failed)),
            shown=extracted.frames,
            line=f"frames from {extracted.videos_done} video(s){failed}",
        )


@dataclass
class ExtractReport:
    frames: int = 0
    videos_done: int = 0
    failed: list[str] = field(default_factory=list)


async def run_extract(state: State, config: Config, videos: list[Path], stop: threading.Event) -> ExtractReport:
    """Extract every video not done yet; `stop` (set on Ctrl-C) ends each video at its next frame,
    and a stopped video stays unfinished: the next run resumes after its last frame on disk."""
    report = ExtractReport()
    todo = [video for video in videos if state.sources.video_status(str(video)) != VideoStatus.DONE]
    gate = asyncio.Semaphore(_VIDEOS_AT_ONCE)

    async def one(position: int, video: Path) -> None:
        async with gate:
            if stop.is_set():
                return
            try:
                frames, error = await asyncio.to_thread(
                    extract_video, video, frames_dir(config, video), config, position, stop
                )
            except asyncio.CancelledError:
                stop.set()  # the thread ends at its next frame instead of at the end of the film
                raise
        if stop.is_set():
            return
        status = VideoStatus.FAILED if error else VideoStatus.DONE
        state.sources.record_video(str(video), status, frames=frames, reason=error)
        report.frames += frames
        if error:
            report.failed.append(video.name)
            log.warning("video_failed", path=str(video), reason=error, effect="skipped; the rest goes on")
        else:
            report.videos_done += 1

    await asyncio.gather(*(one(i % _VIDEOS_AT_ONCE, video) for i, video in enumerate(todo)))
    if todo:
        log.info("extract_done", videos=report.videos_done, frames=report.frames, failed=len(report.failed))
    return report


def frames_dir(config: Config, video: Path) -> Path:
    """One folder per video; the path hash keeps two `ep1.mkv` in different folders apart."""
    tag = hashlib.blake2b(str(video).encode(), digest_size=3).hexdigest()
    return config.extracted_dir / f"{video.stem}-{tag}"


def extract_video(
    video: Path, out_dir: Path, config: Config, position: int, stop: threading.Event | None = None
) -> tuple[int, str | None]:
    """Write the video's frames (resuming after the last one on disk), until done or `stop` is
    set; returns (frames on disk, error)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_partials(out_dir)
    done = [t for t in (seconds_of(p.name) for p in out_dir.glob("*.png")) if t is not None]
    extract = config.extract
    start = max(done) + (extract.every_s if extract.mode == "interval" else extract.min_shot_s) if done else 0.0
    written = len(done)
    try:
        duration = video_duration(video)
        with tqdm(total=round(duration), desc=video.name[:24], unit="s", position=position, leave=False) as bar:
            bar.update(round(start))
            for seconds, picture in sample_frames(
                video, extract, start_s=start, black_luma=config.filter.dark.max_brightness
            ):
                if stop is not None and stop.is_set():
                    break
                target = out_dir / frame_name(video, seconds)
                with atomic_path(target) as temp:
                    picture.save(temp, "PNG", compress_level=1)
                written += 1
                bar.update(max(0, round(seconds) - bar.n))
    except Exception as exc:  # noqa: BLE001 - a damaged video is this file's problem, not the run's
        return written, f"cannot decode: {type(exc).__name__}: {str(exc)[:160]}"
    return written, None
