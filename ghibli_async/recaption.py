"""Caption again with another model, from the review page: the frames a person sent back go to a
model that has not captioned them, through the same buckets, quota books and checks as a run.
One caption pass at a time, on the review server's event loop; frames sent back meanwhile go in
the next pass. A frame left pending (quota spent, the server stopped) is taken by the next run."""

from __future__ import annotations

import asyncio
from collections.abc import Collection

import structlog

from ghibli_async.caption_report import refresh_caption_checks_aside
from ghibli_async.clock import Clock
from ghibli_async.config import ApiKey, Config, required_caption_keys
from ghibli_async.stages.caption import CaptionEngine, CaptionReport, caption_line
from ghibli_async.state import State
from ghibli_async.state.review import SentBack

log = structlog.get_logger(__name__)


class Recaptioner:
    def __init__(self, state: State, config: Config, clock: Clock) -> None:
        self._state = state
        self._config = config
        self._clock = clock
        self._waiting: set[int] = set()  # frame numbers sent back, not yet in a pass
        self._in_pass: set[int] = set()
        self._task: asyncio.Task[None] | None = None
        self.last = ""  # how the last pass ended, in one line

    def send_back(self, image_ids: Collection[int]) -> SentBack:
        """Send these frames' captions back and start captioning them (UserError: no keys)."""
        keys = required_caption_keys(self._config)
        sent = self._state.review.send_back(list(image_ids), _usable_models(self._config, keys))
        if sent.numbers:
            self._waiting.update(sent.numbers)
            if self._task is None:
                self._task = asyncio.create_task(self._passes(keys))
        return sent

    def status(self) -> dict[str, object]:
        return {"running": self._task is not None, "waiting": len(self._waiting | self._in_pass), "last": self.last}

    async def _passes(self, keys: list[ApiKey]) -> None:
        try:
            while self._waiting:
                self._in_pass, self._waiting = self._waiting, set()
                report = await self._caption(self._in_pass, keys)
                self.last = caption_line(report) + (f"; {report.stopped}" if report.stopped else "")
                log.info("recaption_done", frames=len(self._in_pass), summary=self.last)
                self._in_pass = set()
        except Exception as exc:  # the page shows it; the frames stay pending for the next run
            self.last = f"captioning stopped: {exc}"
            log.exception("recaption_failed")
        finally:
            self._task = None

    async def _caption(self, numbers: set[int], keys: list[ApiKey]) -> CaptionReport:
        models = [model.name for model in self._config.caption.captioners]
        jobs = [job for job in self._state.results.caption_jobs(models) if job.number in numbers]
        report = await CaptionEngine(self._state, self._config, keys, self._clock).run(jobs=jobs)
        await refresh_caption_checks_aside(self._config)
        return report

    async def aclose(self) -> None:
        """Stop a pass under way (its frames stay pending for the next run)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def _usable_models(config: Config, keys: list[ApiKey]) -> list[str]:
    """The configured models some key can reach."""
    providers = {key.provider for key in keys}
    return [model.name for model in config.caption.captioners if model.provider in providers]
