"""Named checks on captions: each one small pure function that says what is wrong, why, how sure
it is (its weight) and which words. A caption's doubt is 1 - the product of (1 - weight) over the
checks that fired; at `caption.review_doubt` or above the caption is asked again once on another
model, then kept with `needs_review` (not exported) and its reasons.

Per caption, as it arrives: word count, banned words, repetition, refusal or meta talk, proper
names, another language, generic content. Over the whole dataset (`dataset_findings`, after each
caption pass and in `caption-report`): length far from the dataset's median, the same or nearly
the same caption on frames that are not near-duplicates, and phrases in most captions that the
trigger should carry instead.
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
# Function words of the languages a captioner most often drifts into (none of them English words).
_OTHER_LANGUAGES = {
    language: frozenset(words.split())
    for language, words in {
        "Spanish": "el la los las una unos unas y del con por para en sobre junto al que su sus es está bajo",
        "French": "le la les une des et du avec sur dans sous pour est son sa ses au aux qui près",
        "German": "der das ein eine einen einem und mit auf im zum zur von ist ihr unter neben vor dem",
        "Italian": "il lo gli una e di del della con su nel nella per sotto è suo sua tra",
        "Portuguese": "os um uma e do da com em no na sobre para sob seu sua é ao",
    }.items()
}
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
# Words about style, medium and quality: true of any frame, so no subject.
_STYLE_WORDS = frozenset(
    "anime animated animation cartoon ghibli style styled scene image picture frame still shot illustration "
    "drawing painting painted artwork art film movie beautiful lovely nice pretty detailed vibrant colors "
    "colours colorful colourful soft lighting atmosphere aesthetic quality high masterpiece classic "
    "background hand-drawn studio cinematic screenshot wallpaper".split()
)


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
    """Another language than `caption.language` (English: letters of another script, or more
    function words of another language than of English)."""
    if rules.language != "en":
        return None
    body = _body(text, rules.trigger)
    letters = [char for char in body if char.isalpha()]
    foreign = sum(1 for char in letters if not char.isascii())
    if letters and foreign / len(letters) >= 0.15:
        return Finding("language", "not English (letters of another script)", 0.9)
    words = [word.lower() for word in _words(body)]
    english = sum(word in _FUNCTION_WORDS for word in words)
    name, most = max(
        ((name, sum(word in known for word in words)) for name, known in _OTHER_LANGUAGES.items()),
        key=lambda item: item[1],
    )
    if most >= 2 and most > english:
        return Finding("language", f"not English (reads as {name})", 0.9)
    return None


def generic(text: str, rules: CaptionConfig) -> Finding | None:
    """No subject: only words about style, medium and quality (a caption that fits any frame), or
    too few content words to say what is in the frame."""
    content = [word.lower() for word in _words(_body(text, rules.trigger))]
    content = [word for word in content if word not in _FUNCTION_WORDS and len(word) > 2]
    subject = [word for word in content if word not in _STYLE_WORDS]
    if len(subject) < 2 and len(content) > len(subject):  # words about style, hardly a subject
        return Finding("generic", "a caption that fits any frame (words about style only)", 0.8)
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


VERIFY = "verify"  # a verifier's disagreement (caption/verify.py): stored, the one check no rerun redoes


def dataset_findings(
    captions: Mapping[int, str], rules: CaptionConfig, hashes: Mapping[int, str] | None = None, near: int = 6
) -> dict[int, list[Finding]]:
    """Checks over the whole dataset (frame number -> caption): a length far from the dataset's
    own, and the same or nearly the same caption on frames that are not near-duplicates of each
    other (`hashes`: their perceptual hashes; within `near` bits two frames may well share one)."""
    found: dict[int, list[Finding]] = {}
    if rules.checks.length:
        for number, finding in _length_outliers(captions).items():
            found.setdefault(number, []).append(finding)
    if rules.checks.duplicate:
        for number, finding in _duplicates(captions, rules.trigger, hashes, near).items():
            found.setdefault(number, []).append(finding)
    return found


def _length_outliers(captions: Mapping[int, str]) -> dict[int, Finding]:
    """Captions under half or over 1.75 times the dataset's median length (20 captions or more): a
    model that rambled or gave up, among ones that did neither."""
    lengths = {number: len(text.split()) for number, text in captions.items()}
    if len(lengths) < 20:
        return {}
    median = statistics.median(lengths.values())
    return {
        number: Finding("length", f"{words} words, far from the dataset's median {median:.0f}", 0.5)
        for number, words in lengths.items()
        if not median / 2 <= words <= median * 1.75
    }


def _duplicates(
    captions: Mapping[int, str], trigger: str, hashes: Mapping[int, str] | None, near: int
) -> dict[int, Finding]:
    """Frames whose captions have the same content words, or all but one (one word changed, added
    or left out), grouped through keys of each caption's content words less one of them."""
    content = {number: _content_words(text, trigger) for number, text in captions.items()}
    groups: dict[frozenset[str], set[int]] = {}
    for number, words in content.items():
        for key in (words, *(words - {word} for word in words)) if len(words) >= 3 else ():
            groups.setdefault(key, set()).add(number)
    partners: dict[int, set[int]] = {}
    for members in groups.values():
        for number in members if len(members) > 1 else ():
            partners.setdefault(number, set()).update(members - {number})
    found = {}
    for number, others in partners.items():
        others = {other for other in others if not _alike(number, other, hashes, near)}
        if not others:
            continue
        same = all(content[other] == content[number] for other in others)
        shown = ", ".join(map(str, sorted(others)[:5])) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        reason = f"{'the same' if same else 'nearly the same'} caption as frame(s) {shown}"
        found[number] = Finding("duplicate", reason, 0.6 if same else 0.5)
    return found


def _content_words(text: str, trigger: str) -> frozenset[str]:
    return frozenset(word.lower() for word in _words(_body(text, trigger)) if word.lower() not in _FUNCTION_WORDS)


def _alike(one: int, other: int, hashes: Mapping[int, str] | None, near: int) -> bool:
    """Two frames whose perceptual hashes differ in at most `near` bits: nearly the same picture."""
    if not hashes or one not in hashes or other not in hashes:
        return False
    return bin(int(hashes[one], 16) ^ int(hashes[other], 16)).count("1") <= near


def phrase_shares(captions: Sequence[str], rules: CaptionConfig) -> list[tuple[str, float]]:
    """Every three-word phrase with the share of captions it is in, most frequent first."""
    seen: Counter[str] = Counter()
    for text in captions:
        words = [word.lower() for word in _words(_body(text, rules.trigger))]
        seen.update({" ".join(words[i : i + 3]) for i in range(len(words) - 2)})
    ranked = sorted(seen.items(), key=lambda item: (-item[1], item[0]))  # ties alphabetically: the same every run
    return [(phrase, count / len(captions)) for phrase, count in ranked]


def identity_phrases(captions: Sequence[str], rules: CaptionConfig) -> list[tuple[str, float]]:
    """Three-word phrases in at least `caption.identity_share` of the captions (20 or more): what
    the trigger should carry instead (offered, never removed)."""
    if len(captions) < 20:
        return []
    return [(phrase, share) for phrase, share in phrase_shares(captions, rules) if share >= rules.identity_share]
