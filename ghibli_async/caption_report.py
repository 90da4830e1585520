"""The caption checks over the whole dataset (after each caption pass: `refresh_caption_checks`),
and `caption-report`: what the checks found, per check and model, the phrases most captions share
(for the trigger), and one JSON line per captioned frame (`--json`) with its checks and doubt."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import asdict, dataclass, field

from ghibli_async.caption.checks import (
    VERIFY,
    check_caption,
    dataset_findings,
    doubt,
    identity_phrases,
    phrase_shares,
)
from ghibli_async.config import Config
from ghibli_async.facts import Finding
from ghibli_async.state import State
from ghibli_async.state.results import CheckedCaption


@dataclass(frozen=True)
class CaptionRow:
    number: int
    source: str
    model: str | None
    caption: str
    edited: bool
    findings: list[Finding] = field(default_factory=list)

    @property
    def doubt(self) -> float:
        return 0.0 if self.edited else doubt(self.findings)  # a person wrote or kept it: no doubt

    def json(self) -> str:
        row = {
            "number": self.number,
            "source": self.source,
            "model": self.model,
            "caption": self.caption,
            "edited": self.edited,
            "checks": [asdict(finding) for finding in self.findings],
            "doubt": self.doubt,
        }
        return json.dumps(row, ensure_ascii=False)


def caption_rows(state: State, config: Config) -> list[CaptionRow]:
    """Every captioned frame with the checks that fired on it: as it came, and over the dataset as
    it is now."""
    return _rows_of(state.results.captions_checked(), config)


def _rows_of(checked: list[CheckedCaption], config: Config) -> list[CaptionRow]:
    """Each caption's checks under today's config (a check turned off or a banned word added since
    counts now), the verifier's stored judgement, and the dataset-wide checks."""
    rows = [
        CaptionRow(number, source, model, caption, edited, [*check_caption(caption, config.caption), *_judged(checks)])
        for number, source, model, caption, edited, checks, _ in checked
    ]
    hashes = {number: phash for number, *_, phash in checked if phash}
    near = config.filter.duplicates.max_distance
    wide = dataset_findings({row.number: row.caption for row in rows}, config.caption, hashes, near)
    for row in rows:
        row.findings.extend(wide.get(row.number, []))
    return rows


def _judged(stored: str | None) -> list[Finding]:
    """The verifier's disagreement stored with a caption (the one check no rerun can redo)."""
    return [Finding(**item) for item in json.loads(stored or "[]") if item["check"] == VERIFY]


def refresh_caption_checks(state: State, config: Config) -> int:
    """Store every caption's checks as today's config has them, with the dataset-wide ones (they
    raise its doubt, and the review page orders by it); returns how many frames' checks changed.
    Nothing is asked again for them."""
    checked = state.results.captions_checked()
    stored = {number: checks for number, *_, checks, _ in checked}
    changed = {
        row.number: row.findings
        for row in _rows_of(checked, config)
        if not row.edited and _as_json(row.findings) != (stored[row.number] or None)
    }
    state.results.update_caption_checks({number: (_as_json(f), doubt(f)) for number, f in changed.items()})
    return len(changed)


async def refresh_caption_checks_aside(config: Config) -> int:
    """`refresh_caption_checks` in a worker thread over a connection of its own: seconds at 50k
    captions, which the event loop (a run's progress and heartbeat, the review page) need not wait on."""
    return await asyncio.to_thread(_refresh_at, config)


def _refresh_at(config: Config) -> int:
    with State.open(config.state_path) as state:
        return refresh_caption_checks(state, config)


def _as_json(findings: list[Finding]) -> str | None:
    return json.dumps([asdict(finding) for finding in findings], ensure_ascii=False) if findings else None


def format_caption_report(rows: list[CaptionRow], config: Config) -> str:
    if not rows:
        return "No captions yet."
    by_check: Counter[tuple[str, str]] = Counter()
    for row in rows:
        by_check.update((finding.check, row.model or "by hand") for finding in row.findings)
    flagged = [row for row in rows if row.findings]
    lines = [f"Captions: {len(rows)}; with a check fired: {len(flagged)}"]
    if by_check:
        lines.append("Checks fired, per model:")
        lines += [f"  {check:<14} {model:<32} {n:>6}" for (check, model), n in sorted(by_check.items())]
    captions = [row.caption for row in rows]
    frequent = ", ".join(f"'{phrase}' {share:.0%}" for phrase, share in phrase_shares(captions, config.caption)[:5])
    lines.append(f"Most frequent phrases: {frequent or 'none'}")
    phrases = identity_phrases(captions, config.caption)
    if phrases:
        shown = ", ".join(f"'{phrase}' {share:.0%}" for phrase, share in phrases[:5])
        lines.append(f"Phrases in most captions (fold them into the trigger?): {shown}")
    doubtful = sorted(flagged, key=lambda row: -row.doubt)[:10]
    if doubtful:
        lines.append("Most doubtful:")
        for row in doubtful:
            reasons = "; ".join(finding.reason for finding in row.findings)
            lines.append(f"  {row.number:>6}.jpg  doubt {row.doubt:.2f}  {reasons}")
    lines.append("`caption-report --json` gives one line per frame; the review page orders by caption doubt.")
    return "\n".join(lines)
