"""Captions the way real captioners write them, for the fake servers: varied clean captions with
ordinary dirt to clean (markdown, a `Caption:` label, quotes, a full stop, a missing or doubled
trigger), and each kind of fault real models make, planted in a share of each model's answers.
It records which answer carried which fault, so a test or bench can tell what the checks should
find. Deterministic: every answer is drawn from a generator seeded by (seed, model, image, try)."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

REPETITION, REFUSAL, NAME, LANGUAGE, GENERIC, LENGTH, DUPLICATE = (
    "repetition",
    "refusal",
    "proper_name",
    "language",
    "generic",
    "length",
    "duplicate",
)
FAULTS = (REPETITION, REFUSAL, NAME, LANGUAGE, GENERIC, LENGTH, DUPLICATE)  # each named after its check
TRIGGER = "Ghibli style"

_SUBJECTS = [
    "a young girl with short brown hair",
    "an old woman in a grey shawl",
    "a boy in a striped shirt",
    "two children holding hands",
    "a tall man in a long coat",
    "a girl in a yellow raincoat",
    "a small boy clutching a butterfly net",
    "a teenage girl with a long braid",
    "a farmer wearing a straw hat",
    "a woman tying an apron",
    "three kids with backpacks",
    "a pilot pushing up his goggles",
    "an elderly man leaning on a cane",
    "a witch on a broom",
    "a soldier in a green uniform",
    "a baker dusted with flour",
    "a fisherman mending nets",
    "a mother and her daughter",
    "a boy wrapped in a red scarf",
    "a girl wearing a blue ribbon",
]
_ACTIONS = [
    "stands on",
    "walks along",
    "sits beside",
    "runs across",
    "looks out over",
    "waves from",
    "rests under",
    "reads a letter near",
    "carries a basket past",
    "rides a bicycle down",
    "kneels by",
    "waits at",
    "climbs toward",
    "laughs near",
    "sweeps",
    "peers into",
    "dances on",
    "naps beside",
    "points at",
    "hurries through",
]
_PLACES = [
    "a wooden porch",
    "a dirt road between rice paddies",
    "a quiet fishing harbour",
    "the edge of a cliff",
    "a crowded market street",
    "an overgrown railway track",
    "a mossy stone shrine",
    "a kitchen full of copper pots",
    "a windswept hilltop",
    "a bakery counter",
    "the deck of a small boat",
    "a sunflower field",
    "a bus stop in the countryside",
    "a library with tall shelves",
    "a bathhouse corridor",
    "a flower garden",
    "the roof of a red tram",
    "a bamboo grove",
    "a clock tower balcony",
    "a pebble beach",
]
_DETAILS = [
    "with laundry drying in the wind",
    "as cherry petals drift down",
    "while a black cat watches",
    "with a train passing far away",
    "as paper lanterns sway overhead",
    "while crows circle the treetops",
    "with puddles reflecting the clouds",
    "as steam rises from a kettle",
    "while seagulls cry above",
    "with ivy covering the walls",
    "as fireflies begin to glow",
    "while a dog sniffs the grass",
    "with kites flying high",
    "as leaves scatter across the path",
    "while smoke curls from chimneys",
    "with bicycles parked nearby",
    "as waves crash below",
    "while bells ring somewhere",
    "with potted plants lining the steps",
    "as a breeze ruffles the curtains",
]
_LIGHTS = [
    "in soft morning light",
    "under a cloudy summer sky",
    "at golden dusk",
    "in light rain",
    "beneath a starry night",
    "on a snowy afternoon",
    "in hazy midday heat",
    "under pink sunset clouds",
    "in thick fog",
    "on a bright spring day",
    "under a stormy sky",
    "in pale winter sunlight",
    "at the blue hour",
    "by warm lamplight",
    "in dappled forest shade",
]
_NAMES = ["Satsuki", "Chihiro", "Kiki", "Sophie", "Haku", "Pazu", "Sheeta", "Ashitaka", "Howl", "Ponyo", "Arrietty"]
_REFUSALS = [
    "I'm sorry, but I can't help with identifying or describing people in images.",
    "I am unable to caption this image.",
    "I'm not able to describe this picture in detail, sorry.",
]
_META = ["This image shows {body}", "The picture depicts {body}", "In this frame, {body}", "The scene features {body}"]
_FOREIGN = [
    "una niña {x} camina por la calle junto al río bajo la luz suave de la tarde",
    "une fille {x} marche sur le pont au coucher du soleil avec son chat",
    "ein Junge {x} sitzt auf der Bank neben dem Bahnhof und wartet auf den Zug",
    "una ragazza {x} cammina nel giardino con il suo cane sotto la pioggia",
    "um menino {x} corre pela praia ao pôr do sol com uma pipa",
    "少女{x}が夕暮れの町を歩いている静かな風景",
]
_GENERIC = [
    "a beautiful anime scene with vibrant colors and detailed background art in a classic animated film style",
    "an anime style illustration, high quality, detailed, soft lighting, beautiful atmosphere, masterpiece",
    "a scene from an animated movie with lovely colors and a nice aesthetic",
    "anime scene",
]
_RAMBLE = [
    "the composition leads the eye from the foreground figure toward the distant horizon",
    "every surface is painted with careful attention to texture and the changing weather",
    "small birds hop along the railing and a faded poster peels from the wall behind",
    "the colour palette mixes warm ochres with cool greens and muted blues throughout",
    "in the far background rolling hills fade into a pale hazy distance",
]


@dataclass
class FaultyCaptions:
    """`(model, image) -> answer text` for a fake server. `share`: the part of each model's answers
    that carries each kind of fault (0.015: about one answer in ten faulty); `identity`: a phrase
    added to `identity_share` of the clean captions (what the trigger should carry)."""

    share: float = 0.015
    seed: int = 0
    dirt: float = 0.3  # answers with ordinary dirt to clean
    identity: str | None = None
    identity_share: float = 0.85
    planted: dict[tuple[str, str], str] = field(default_factory=dict)  # (model, image) -> fault of its last answer
    copied_from: dict[tuple[str, str], str] = field(default_factory=dict)  # a duplicate's source image
    answers: list[tuple[str, str]] = field(default_factory=list)  # (fault or '', text) of every answer
    _asked: Counter[tuple[str, str]] = field(default_factory=Counter)
    _given: list[tuple[str, str]] = field(default_factory=list)  # (image, clean body) of answers so far

    def __call__(self, model: str, image: str) -> str:
        tries = self._asked[(model, image)]
        self._asked[(model, image)] += 1
        rng = random.Random(f"{self.seed}:{model}:{image}:{tries}")
        body = self._clean(rng, model, image)
        index = int(rng.random() / self.share) if self.share else len(FAULTS)
        fault = FAULTS[index] if index < len(FAULTS) else ""
        if fault == DUPLICATE and not [given for given in self._given if given[0] != image]:
            fault = ""  # nothing to copy yet
        self.planted[(model, image)] = fault
        if not fault:
            self._given.append((image, body))
        text = self._dirty(rng, self._plant(rng, fault, body, model, image))
        self.answers.append((fault, text))
        return text

    def _clean(self, rng: random.Random, model: str, image: str) -> str:
        """What a model sees in this frame: the same scene for every model, told in its own words."""
        scene = random.Random(f"{self.seed}:{image}")
        subject, place = scene.choice(_SUBJECTS), scene.choice(_PLACES)
        parts = [subject, rng.choice(_ACTIONS), place]
        parts += rng.sample([rng.choice(_DETAILS), rng.choice(_LIGHTS)], rng.randint(1, 2))
        if self.identity and rng.random() < self.identity_share:
            parts.append(self.identity)
        return " ".join(parts[:3]) + "".join(f", {part}" for part in parts[3:])

    def _plant(self, rng: random.Random, fault: str, body: str, model: str, image: str) -> str:
        if fault == REPETITION:
            words = body.split()
            loop = " ".join(words[-3:]) if rng.random() < 0.5 else f"{words[-1]} {words[-1]}"
            return f"{TRIGGER}, {body} {loop} {loop}"
        if fault == REFUSAL:
            if rng.random() < 0.5:
                return rng.choice(_REFUSALS)
            return f"{TRIGGER}, " + rng.choice(_META).format(body=body)
        if fault == NAME:
            return f"{TRIGGER}, {rng.choice(_NAMES)}, {body}"
        if fault == LANGUAGE:
            return f"{TRIGGER}, " + rng.choice(_FOREIGN).format(x=rng.choice(["", "pequeña", "petite", "klein"]))
        if fault == GENERIC:
            return f"{TRIGGER}, {rng.choice(_GENERIC)}"
        if fault == LENGTH:
            if rng.random() < 0.3:
                return f"{TRIGGER}, {' '.join(body.split()[:6])}"  # a model that gave up early
            clauses = rng.sample(_RAMBLE, len(_RAMBLE))
            while len(body.split()) < 48:  # about twice a caption's usual length, under max_words (60)
                body += ", " + clauses.pop()
            return f"{TRIGGER}, {body}"
        if fault == DUPLICATE:
            source, copied = rng.choice([given for given in self._given if given[0] != image])
            self.copied_from[(model, image)] = source
            if rng.random() < 0.5:
                words = copied.split()
                at = rng.randrange(len(words))
                words[at] = "quietly" if words[at] != "quietly" else "slowly"
                copied = " ".join(words)
            return f"{TRIGGER}, {copied}"
        return f"{TRIGGER}, {body}"

    def _dirty(self, rng: random.Random, text: str) -> str:
        """Ordinary dirt the clean-up removes: none of it is a fault."""
        if rng.random() >= self.dirt:
            return text
        body = text.removeprefix(f"{TRIGGER}, ")
        return rng.choice(
            [
                f"**Caption:** {text}",
                f'"{text}"',
                f"{text}.",
                f"{TRIGGER}, {TRIGGER}, {body}",
                body,
                f"{TRIGGER}: {body}",
                f"Caption: {text}\n",
                f"  {text}\n\n",
                f"{TRIGGER}. {body[0].upper()}{body[1:]}" if body.startswith(("a ", "an ", "two", "three")) else text,
            ]
        )
