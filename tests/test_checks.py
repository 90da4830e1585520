"""The named caption checks on their own: one row per kind of fault real captioners make, and the
clean captions they must leave alone."""

from __future__ import annotations

import pytest

from ghibli_async.caption.checks import check_caption, dataset_findings, doubt, identity_phrases
from ghibli_async.config import CaptionConfig
from ghibli_async.facts import Finding

RULES = CaptionConfig(banned_words=["Totoro"])
CLEAN = [
    "Ghibli style, a girl in a red coat walks past a small bakery at dusk, lanterns glowing",
    "Ghibli style, an old man reads a newspaper on a wooden bench beside a quiet canal",
    "Ghibli style, two children run up a grassy hill toward a huge camphor tree. Clouds drift above",
    "Ghibli style, a cat sleeps on a sunny windowsill 3e1e967e",
]


@pytest.mark.parametrize("caption", CLEAN)
def test_clean_captions_raise_no_check(caption: str) -> None:
    assert check_caption(caption, RULES) == ()


@pytest.mark.parametrize(
    ("caption", "check", "words"),
    [
        ("Ghibli style, a girl walks walks walks down the road past the station at noon", "repetition", ("walks",)),
        (
            "Ghibli style, a boy on a bicycle rides past the shop, a boy on a bicycle rides past the shop",
            "repetition",
            ("a", "boy", "on"),
        ),
        ("Ghibli style, I'm sorry, but I can't describe people in this image for you", "refusal", ("I'm", "sorry")),
        ("Ghibli style, This image shows a girl standing in a field of flowers at noon", "refusal", ()),
        (
            "Ghibli style, Satsuki and Mei run through the tall grass toward the old house",
            "proper_name",
            ("Satsuki", "Mei"),
        ),
        (
            "Ghibli style, Totoro sits under the tree beside the bus stop in the rain at night",
            "banned_words",
            ("Totoro",),
        ),
        ("Ghibli style, 少女が夕暮れの町を歩いている風景が静かに描かれている様子です", "language", ()),
        ("Ghibli style, una niña camina por la calle junto al río bajo la luz suave", "language", ()),
        ("Ghibli style, ein Mädchen mit einem Strohhut geht in der Abenddämmerung über die Brücke", "language", ()),
        ("Ghibli style, une fille avec un chapeau de paille marche sur le pont au coucher du soleil", "language", ()),
        ("Ghibli style, anime scene", "generic", ()),
    ],
)
def test_each_fault_is_named_with_its_reason_and_words(caption: str, check: str, words: tuple[str, ...]) -> None:
    found = {finding.check: finding for finding in check_caption(caption, RULES)}
    assert check in found, found
    assert found[check].reason and 0 < found[check].weight <= 1
    if words:
        assert found[check].words[: len(words)] == words


def test_a_check_can_be_turned_off() -> None:
    rules = RULES.model_copy(update={"checks": RULES.checks.model_copy(update={"proper_name": False})})
    assert check_caption("Ghibli style, Satsuki and Mei run through the tall grass toward the old house", rules) == ()


def test_doubt_adds_independent_evidence() -> None:
    assert doubt([]) == 0.0
    assert doubt([Finding("a", "", 0.5), Finding("b", "", 0.5)]) == 0.75
    assert doubt([Finding("refusal", "", 1.0)]) == 1.0


SUBJECTS = "girl boy woman man cat dog fox child farmer witch".split()
PLACES = "river station field kitchen forest harbour bridge garden market hillside".split()
LIGHTS = "dawn noon dusk night rain snow fog sunset storm spring".split()


def varied(n: int) -> str:
    """Thirty captions of 18 words, no two alike."""
    return (
        f"Ghibli style, a {SUBJECTS[n % 10]} waits by the {PLACES[n // 10 % 10]} at {LIGHTS[n * 7 % 10]} "
        f"holding a {['lantern', 'basket', 'kite'][n // 10]} near an old wooden fence"
    )


def test_over_the_dataset_lengths_far_off_and_repeated_captions_are_found() -> None:
    captions = {n: varied(n) for n in range(30)}
    captions[31] = "Ghibli style, " + " ".join(f"word{i}" for i in range(50))
    captions[32] = captions[33] = "Ghibli style, a girl waits at the bus stop in the rain"
    captions[34] = "Ghibli style, a girl waits at the bus stop in the snow"  # one word changed
    found = dataset_findings(captions, RULES)
    assert [f.check for f in found[31]] == ["length"]
    assert [f.reason for f in found[32]] == ["nearly the same caption as frame(s) 33, 34"]
    assert [f.reason for f in found[34]] == ["nearly the same caption as frame(s) 32, 33"]
    assert set(found) == {31, 32, 33, 34}


def test_phrases_in_most_captions_are_offered_for_the_trigger() -> None:
    captions = [f"Ghibli style, soft watercolor background, scene {n} with a house" for n in range(25)]
    phrases = dict(identity_phrases(captions, RULES))
    assert phrases["soft watercolor background"] == 1.0
    assert identity_phrases(captions[:10], RULES) == []  # too few captions to say


def test_the_same_caption_on_nearly_the_same_picture_is_not_a_fault() -> None:
    captions = {1: "Ghibli style, a girl waits at the bus stop in the rain", 2: "", 3: ""}
    captions[2] = captions[3] = captions[1]
    hashes = {1: "f0f0f0f0f0f0f0f0", 2: "f0f0f0f0f0f0f0f1", 3: "0f0f0f0f0f0f0f0f"}  # 2 is 1 a bit off; 3 is not
    found = dataset_findings(captions, RULES, hashes, near=6)
    assert [f.reason for f in found[1]] == ["the same caption as frame(s) 3"]
    assert [f.reason for f in found[3]] == ["the same caption as frame(s) 1, 2"]
