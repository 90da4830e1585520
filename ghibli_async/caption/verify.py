"""`caption.verify`: a model of another family is shown a frame and its caption and says whether
the caption matches. A disagreement is a check that fired (`verify`, with the verifier's reason)
and raises the caption's doubt: at `caption.review_doubt` the frame waits for review. Each caption
is judged once (a new caption anew), for a share of the frames picked by their number, so a rerun
picks the same ones. The requests go through the same buckets and quota books as captions, after
the caption pass; when the verifier's quota is spent the rest are judged in a later run."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass

import aiofiles
import structlog

from ghibli_async.backoff import backoff_delay
from ghibli_async.caption.answers import Answer, Blocked, RateLimited, Reply, TransientError
from ghibli_async.caption.buckets import Grant, seconds_into_quota_day
from ghibli_async.caption.checks import VERIFY, doubt
from ghibli_async.caption.clients import CaptionClients
from ghibli_async.caption.ledger import QuotaLedger
from ghibli_async.caption.packing import Frame
from ghibli_async.caption.reducer import Attempt, reduce_question
from ghibli_async.clock import Clock
from ghibli_async.config import ApiKey, Config, VerifyConfig
from ghibli_async.facts import Finding
from ghibli_async.state import State
from ghibli_async.workdir import output_name

log = structlog.get_logger(__name__)

PROMPT = (
    'A caption written for this frame of an animated film reads:\n"{caption}"\n'
    "Does it describe what the frame shows (who is there, what they do, where)? Answer in one line: "
    "MATCH, or MISMATCH: and what is wrong."
)
WEIGHT = 0.7  # another model disagreeing: at the default review_doubt the frame waits for review
TRIES = 3  # requests for one frame (rate limits, lost connections) before it waits for a later run
_VERDICT = re.compile(r"^\W*(mismatch|match)\b\W*(.*)", re.IGNORECASE | re.DOTALL)


def family(model: str) -> str:
    """`gemini-flash-latest` -> `gemini`, `gemma-3-27b-it` -> `gemma`, `Qwen/Qwen2.5-VL-7B` -> `qwen2.5`."""
    return model.rsplit("/", 1)[-1].split("-", 1)[0].lower()


def sampled(number: int, share: float) -> bool:
    """Whether frame `number` is among the `share` of frames judged (the same ones every run)."""
    return int(hashlib.sha256(f"verify:{number}".encode()).hexdigest()[:8], 16) < share * 0x100000000


def read_verdict(text: str) -> tuple[bool, str] | None:
    """(agrees, what is wrong) from the verifier's answer; None when it answered neither."""
    found = _VERDICT.match(text.strip().strip("*`\"'"))
    if found is None:
        return None
    if found.group(1).lower() == "match":
        return True, ""
    reason = " ".join(found.group(2).split()).strip("*`\"' .") or "no reason given"
    return False, reason


@dataclass
class VerifyReport:
    judged: int = 0
    disagreed: int = 0
    unreadable: int = 0  # answers that said neither MATCH nor MISMATCH, or were blocked
    requests: int = 0
    left: int = 0  # sampled but not judged this run (quota, errors, a stop): a later run judges them

    def line(self, verifier: str) -> str:
        said = f"{self.judged} caption(s) judged by {verifier}, {self.disagreed} disagreed with"
        if self.unreadable:
            said += f", {self.unreadable} answer(s) unreadable"
        return said + (f"; {self.left} left for a later run" if self.left else "")


class Verifier:
    def __init__(self, state: State, config: Config, keys: list[ApiKey], clock: Clock) -> None:
        assert config.caption.verify is not None
        self.rules: VerifyConfig = config.caption.verify
        self.caption = config.caption
        self.state = state
        self.clock = clock
        self.images_dir = config.resized_dir
        judge = [model for model in config.caption.models if model.name == self.rules.model]
        self.ledger = QuotaLedger.open(state.quota, config.caption, keys, clock, judge)
        self.client = CaptionClients(config.caption, keys)
        self.report = VerifyReport()
        self._stop = False

    def stop_politely(self) -> None:
        self._stop = True
        self.ledger.wake()

    async def run(self) -> VerifyReport:
        """Judge the sampled captions not judged yet."""
        wanted = [
            row
            for row in self.state.results.captions_to_verify()
            if family(row[2]) != family(self.rules.model) and sampled(row[0], self.rules.share)
        ]
        try:
            for index, (number, caption, _, checks) in enumerate(wanted):
                reply = None if self._stop else await self._ask(number, caption)
                if reply is None:  # spent, stopped or failing: the rest wait for a later run
                    self.report.left = len(wanted) - index
                    break
                self._record(number, caption, checks, reply)
        finally:
            await self.client.aclose()
        return self.report

    async def _ask(self, number: int, caption: str) -> Answer | Blocked | None:
        """The verifier's answer (or its safety block) about one frame; None when none came."""
        attempt = Attempt(number)
        for tries in range(1, TRIES + 1):
            grant = await self.ledger.acquire(attempt, give_up=self._stopping, on_wait=lambda *_: None)
            if not isinstance(grant, Grant):
                return None
            try:
                async with aiofiles.open(self.images_dir / output_name(number), "rb") as stream:
                    image = await stream.read()
            except OSError:
                self.ledger.release(grant)
                return None
            reply = await self._send(grant, Frame(number, image), caption)
            if isinstance(reply, Answer | Blocked):
                return reply
            if isinstance(reply, TransientError):
                await self.clock.sleep(backoff_delay(self.caption.backoff, tries))
        return None

    def _stopping(self) -> str | None:
        return "stopped" if self._stop else None

    async def _send(self, grant: Grant, frame: Frame, caption: str) -> Reply:
        self.ledger.count_sent(grant)
        self.report.requests += 1
        prompt = PROMPT.format(caption=caption)
        reply = await self.client.ask(grant.key, grant.bucket.model, frame, prompt)
        since = seconds_into_quota_day(self.clock.wall())
        self.ledger.settle(
            grant,
            reduce_question(grant, reply, self.caption, since_reset_s=since),
            refused=isinstance(reply, RateLimited),
        )
        return reply

    def _record(self, number: int, caption: str, checks: str | None, answer: Answer | Blocked) -> None:
        """The verdict stored with the caption; an answer that says neither (or a block) is stored
        as no verdict, so it is not paid for again."""
        verdict = read_verdict(answer.text) if isinstance(answer, Answer) else None
        findings = [Finding(**item) for item in json.loads(checks or "[]")]
        if verdict is None:
            self.report.unreadable += 1
            log.info("verify_unreadable", image=number, answer=answer.text[:120] if isinstance(answer, Answer) else "")
        else:
            self.report.judged += 1
        if verdict is not None and not verdict[0]:
            self.report.disagreed += 1
            findings.append(Finding(VERIFY, f"{self.rules.model} disagrees: {verdict[1]}", WEIGHT))
            log.info("verify_disagrees", image=number, verifier=self.rules.model, reason=verdict[1])
        stored = json.dumps([asdict(f) for f in findings], ensure_ascii=False) if findings else None
        found = doubt(findings)
        self.state.results.record_verdict(
            number, caption, self.rules.model, stored, found, found >= self.caption.review_doubt
        )
