"""Named checks on captions: each one small pure function that says what is wrong, why, how sure
it is (its weight) and which words. A caption's doubt is 1 - the product of (1 - weight) over the
checks that fired; at `caption.review_doubt` or above the caption is asked again once on another
model, then kept with `needs_review` (not exported) and its reasons.

Per caption, as it arrives: word count, banned words, repetition, refusal or meta talk, proper
names, another language, generic content. Over the whole dataset (`dataset_findings`, after each
caption pass and in `caption-report`): length far outside the dataset's own, the same caption on
several frames, and phrases in most captions that the trigger should carry instead.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

from ghibli_async.config import CaptionConfig
from ghibli_async.facts import Finding

_FUNCTION_WORDS = frozenset(
    "a an the and or but of in on at to from with by for into onto over under near behind beside "
    "his her its their this that these those is are was were be being been as while who which "
    "some one two three other another each very he she it they we you i".split()
)
_WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")  # letters and digits: '3e1e' is one word
_REFUSAL = re.compile(
    r"\b(i'?m sorry|i am sorry|i can(?:no|')t|i am unable|i'?m unable|i'?m not able|as an ai|i won'?t be able)\b",
    re.IGNORECASE,
)
_META = re.compile(
    r"\b(th(?:is|e) (?:image|picture|frame|screenshot|still|scene) (?:shows|depicts|features|is|contains|captures)"
    r"|in th(?:is|e) (?:image|picture|frame|screenshot))\b",
    re.IGNORECASE,
)
_GENERIC = re.compile(r"^(an? )?(anime|animated|cartoon|ghibli)( style)? (scene|image|frame|still|picture)$", re.I)


def _body(text: str, trigger: str) -> str:
    """The caption without its trigger (every caption starts with it)."""
    return text[len(trigger) :].lstrip(" ,.;:") if text.startswith(trigger) else text


def _stem(word: str) -> str:
    """`I'm` -> `i`: a contraction is its first word."""
    return re.split(r"['’]", word.lower())[0]


def _words(text: str) -> list[str]:
    return _WORD.findall(text)


def word_count(text: str, rules: CaptionConfig) -> Finding | None:
    words = len(text.split())
    if rules.min_words <= words <= rules.max_words:
        return None
    return Finding("word_count", f"{words} words (allowed {rules.min_words}-{rules.max_words})", 0.8)


def banned_words(text: str, rules: CaptionConfig) -> Finding | None:
    found = [word for word in rules.banned_words if re.search(rf"\b{re.escape(word)}\b", text, re.IGNORECASE)]
    return Finding("banned_words", f"banned word: {', '.join(found)}", 1.0, tuple(found)) if found else None


def repetition(text: str, rules: CaptionConfig) -> Finding | None:
    """A phrase of three or more words said twice, or a word three times in a row (a model in a loop)."""
    words = [word.lower() for word in _words(_body(text, rules.trigger))]
    for run in range(len(words) - 2):
        if words[run] == words[run + 1] == words[run + 2]:
            return Finding("repetition", f"'{words[run]}' three times in a row", 0.9, (words[run],))
    trigrams = Counter(tuple(words[i : i + 3]) for i in range(len(words) - 2))
    repeated = [gram for gram, count in trigrams.items() if count > 1 and not set(gram) <= _FUNCTION_WORDS]
    if not repeated:
        return None
    phrase = " ".join(repeated[0])
    return Finding("repetition", f"'{phrase}' said {trigrams[repeated[0]]} times", 0.8, tuple(repeated[0]))


def refusal(text: str, rules: CaptionConfig) -> Finding | None:
    """A refusal ("I'm sorry, I can't…") or talk about the image instead of what it shows."""
    if found := _REFUSAL.search(text):
        return Finding("refusal", f"a refusal: '{found.group(0)}'", 1.0, tuple(found.group(0).split()))
    if found := _META.search(text):
        return Finding("refusal", f"talks about the image: '{found.group(0)}'", 0.8, tuple(found.group(0).split()))
    return None


def proper_name(text: str, rules: CaptionConfig) -> Finding | None:
    """Capitalised words that are neither the trigger nor a sentence's first word: a character's
    or a place's name, which a style LoRA would learn to draw."""
    names = []
    for index, sentence in enumerate(re.split(r"[.!?]\s+", _body(text, rules.trigger))):
        words = _words(sentence)[1 if index else 0 :]  # right after the trigger no sentence begins
        names += [word for word in words if word[0].isupper() and _stem(word) not in _FUNCTION_WORDS]
    trigger_words = set(_words(rules.trigger))
    names = [name for name in names if name not in trigger_words]
    return Finding("proper_name", f"a name: {', '.join(names)}", 0.7, tuple(names)) if names else None


def language(text: str, rules: CaptionConfig) -> Finding | None:
    """Another language than `caption.language` (English: letters outside ASCII, or no English
    function words in a caption of some length)."""
    if rules.language != "en":
        return None
    body = _body(text, rules.trigger)
    letters = [char for char in body if char.isalpha()]
    foreign = sum(1 for char in letters if not char.isascii())
    words = [word.lower() for word in _words(body)]
    if letters and foreign / len(letters) >= 0.15:
        return Finding("language", "not English (letters of another script)", 0.9)
    if len(words) >= 8 and sum(word in _FUNCTION_WORDS for word in words) / len(words) < 0.05:
        return Finding("language", "not English (no English function words)", 0.8)
    return None


def generic(text: str, rules: CaptionConfig) -> Finding | None:
    """No subject: too few content words to say what is in the frame, or a stock phrase."""
    body = _body(text, rules.trigger)
    content = [word for word in _words(body) if word.lower() not in _FUNCTION_WORDS and len(word) > 2]
    if _GENERIC.match(body.strip(" .")):
        return Finding("generic", "a caption that fits any frame", 0.8)
    if len(content) < 3:
        return Finding("generic", f"says little: {len(content)} content words", 0.5)
    return None


CHECKS: dict[str, Callable[[str, CaptionConfig], Finding | None]] = {
    check.__name__: check for check in (word_count, banned_words, repetition, refusal, proper_name, language, generic)
}


def check_caption(text: str, rules: CaptionConfig) -> tuple[Finding, ...]:
    """Every enabled check that fires on one (normalised) caption."""
    enabled = rules.checks
    return tuple(
        found for name, check in CHECKS.items() if getattr(enabled, name) and (found := check(text, rules)) is not None
    )


def doubt(findings: Sequence[Finding]) -> float:
    """How likely the caption is wrong, from the checks that fired (independent evidence)."""
    left = 1.0
    for finding in findings:
        left *= 1.0 - finding.weight
    return round(1.0 - left, 3)


DATASET_CHECKS = frozenset({"length", "duplicate"})  # found over the dataset: found anew after each pass


def dataset_findings(
    captions: Mapping[int, str], rules: CaptionConfig, hashes: Mapping[int, str] | None = None, near: int = 6
) -> dict[int, list[Finding]]:
    """Checks over the whole dataset (frame number -> caption): a length far outside the dataset's
    own (beyond 3 interquartile ranges), and the same caption on frames that are not near-duplicates
    of each other (`hashes`: their perceptual hashes; within `near` bits two frames may well share
    a caption)."""
    found: dict[int, list[Finding]] = {}
    lengths = {number: len(text.split()) for number, text in captions.items()}
    if rules.checks.length and len(lengths) >= 20:
        q1, median, q3 = statistics.quantiles(lengths.values(), n=4)
        spread = max(q3 - q1, median / 4)  # captions of one length would make every other one an outlier
        low, high = q1 - 3 * spread, q3 + 3 * spread
        for number, words in lengths.items():
            if not low <= words <= high:
                reason = f"{words} words, far from the dataset's {q1:.0f}-{q3:.0f}"
                found.setdefault(number, []).append(Finding("length", reason, 0.5))
    if rules.checks.duplicate:
        by_text: dict[str, list[int]] = {}
        for number, text in captions.items():
            by_text.setdefault(" ".join(_body(text, rules.trigger).lower().split()), []).append(number)
        for numbers in by_text.values():
            for number in numbers if len(numbers) > 1 else ():
                others = [other for other in numbers if other != number and not _alike(number, other, hashes, near)]
                if others:
                    shown = ", ".join(map(str, others))
                    found.setdefault(number, []).append(
                        Finding("duplicate", f"the same caption as frame(s) {shown}", 0.6)
                    )
    return found


def _alike(one: int, other: int, hashes: Mapping[int, str] | None, near: int) -> bool:
    """Two frames whose perceptual hashes differ in at most `near` bits: nearly the same picture."""
    if not hashes or one not in hashes or other not in hashes:
        return False
    return bin(int(hashes[one], 16) ^ int(hashes[other], 16)).count("1") <= near


def identity_phrases(captions: Sequence[str], rules: CaptionConfig) -> list[tuple[str, float]]:
    """Three-word phrases in at least `caption.identity_share` of the captions (20 or more): what
    the trigger should carry instead (offered, never removed)."""
    if len(captions) < 20:
        return []
    seen: Counter[str] = Counter()
    for text in captions:
        words = [word.lower() for word in _words(_body(text, rules.trigger))]
        seen.update({" ".join(words[i : i + 3]) for i in range(len(words) - 2)})
    share = {phrase: count / len(captions) for phrase, count in seen.items()}
    return sorted(((p, s) for p, s in share.items() if s >= rules.identity_share), key=lambda item: -item[1])
