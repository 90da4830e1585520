"""caption.verify: a model of another family judges a share of the captions; a disagreement raises
the caption's doubt (and at review_doubt keeps it out of the dataset until a person looks)."""

from __future__ import annotations

import hashlib
import json
import sqlite3

import pytest
from caption_harness import run_pipeline, serving, write_caption_config, write_env
from conftest import Project, make_frames
from fake_gemini import FakeGemini, ModelLimits
from virtual_time import VirtualClock, run_virtual

from ghibli_async.caption.verify import family, read_verdict, sampled


@pytest.mark.parametrize(
    ("answer", "verdict"),
    [
        ("MATCH", (True, "")),
        ("**Match.**", (True, "")),
        ("MISMATCH: there is no umbrella in the frame.", (False, "there is no umbrella in the frame")),
        ("mismatch - the girl is sitting, not running", (False, "the girl is sitting, not running")),
        ("MISMATCH", (False, "no reason given")),
        ("The caption is mostly right.", None),
    ],
)
def test_the_verifiers_answer_is_read(answer: str, verdict: tuple[bool, str] | None) -> None:
    assert read_verdict(answer) == verdict


def test_families_and_the_share_judged() -> None:
    assert family("gemini-flash-latest") == family("gemini-flash-lite-latest") == "gemini"
    assert family("gemma-3-27b-it") == "gemma" and family("Qwen/Qwen2.5-VL-7B-Instruct") == "qwen2.5"
    picked = [number for number in range(1, 10_001) if sampled(number, 0.1)]
    assert 900 < len(picked) < 1100 and picked == [n for n in range(1, 10_001) if sampled(n, 0.1)]


def judged_by(model: str, image: str) -> str:
    if model == "judge-b":  # the verifier disagrees about a quarter of the frames, rambles about another
        return ["Looks fine to me.", "MATCH", "MISMATCH: there is no umbrella", "MATCH"][int(image[:2], 16) % 4]
    return f"Ghibli style, a girl with a red umbrella waits at the tram stop in the evening rain {image[:8]}"


def test_disagreements_raise_the_doubt_and_each_caption_is_judged_once(project: Project) -> None:
    make_frames(project, 40)
    write_env(project, GEMINI_API_KEY_1="k1")
    clock = VirtualClock()
    limits = {"cap-a": ModelLimits(rpm=600), "judge-b": ModelLimits(rpm=600)}
    fake = FakeGemini(clock, {"k1": "p"}, limits, captions=judged_by)
    summaries: list[str] = []

    async def scenario() -> None:
        async with serving(fake):
            models = [f"{{name: {m}, rpm: 600, rpd: 1000, tpm: 1000000}}" for m in limits]
            write_caption_config(project, fake.base_url, models, extra="  verify: {model: judge-b, share: 0.5}\n")
            summaries.append(repr(await run_pipeline(project, clock)))
            asked = len(fake.successes())
            await run_pipeline(project, clock)  # nothing is judged twice
            assert len(fake.successes()) == asked

    run_virtual(scenario())
    with sqlite3.connect(project.root / "work" / "state.sqlite") as db:
        rows = db.execute(
            "SELECT number, caption_model, caption_verified_by, caption_checks, needs_review FROM images"
        ).fetchall()
    assert {model for _, model, *_ in rows} == {"cap-a"}
    judged = {number for number, _, verifier, *_ in rows if verifier == "judge-b"}
    assert judged == {number for number, *_ in rows if sampled(number, 0.5)}
    assert len([s for s in fake.successes() if s.model == "judge-b"]) == len(judged)  # one request each
    disagreed = {number for number, *_, checks, _ in rows if checks and "disagrees" in checks}
    assert disagreed < judged
    for number, _, _, checks, review in rows:
        assert review == (number in disagreed)
        if number in disagreed:
            assert "judge-b disagrees: there is no umbrella" in [found["reason"] for found in json.loads(checks)]
    exported = (project.root / "out" / "train" / "metadata.jsonl").read_text().splitlines()
    assert len(exported) == 40 - len(disagreed)  # those wait for a person on the review page
    rambled = sum(1 for number in judged if int(sha256(project, number)[:2], 16) % 4 == 0)
    assert rambled and disagreed
    line = f"{len(judged) - rambled} caption(s) judged by judge-b, {len(disagreed)} disagreed with, {rambled} answer(s)"
    assert line in summaries[0]


def sha256(project: Project, number: int) -> str:
    return hashlib.sha256((project.root / "work" / "resized" / f"{number}.jpg").read_bytes()).hexdigest()


def test_the_plan_names_the_verifier_apart_from_the_caption_buckets(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    make_frames(project, 2)
    write_env(project, GEMINI_API_KEY_1="k1")
    models = [f"{{name: {m}, rpm: 60, rpd: 100, tpm: 100000}}" for m in ("cap-a", "judge-b")]
    write_caption_config(project, "http://127.0.0.1:9", models, extra="  verify: {model: judge-b}\n")
    assert project.cli("--dry-run") == 0
    out = capsys.readouterr().out
    assert "1 bucket: key#1/cap-a; 10% of the captions judged by judge-b" in out
