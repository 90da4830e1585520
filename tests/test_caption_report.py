"""`caption-report`: the checks stored with each caption and those over the whole dataset, per
check and model, and one JSON line per frame."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from caption_harness import run_pipeline, serving, write_caption_config, write_env
from conftest import Project, make_frames, save_frame
from fake_captions import FaultyCaptions
from fake_gemini import FakeGemini, ModelLimits
from virtual_time import VirtualClock, run_virtual

from ghibli_async.caption.checks import check_caption, doubt
from ghibli_async.state import State

CAPTIONS = {
    1: "Ghibli style, a girl in a red coat walks past a small bakery at dusk",
    2: "Ghibli style, I'm sorry, but I can't describe the people in this frame",
    3: "Ghibli style, an old man waits at the bus stop in the evening rain",
    4: "Ghibli style, an old man waits at the bus stop in the evening rain",
    5: "Ghibli style, Satsuki runs along the river bank past the rice fields",
}


@pytest.fixture
def checked(project: Project) -> Project:
    """Five resized frames captioned as the engine records them: with the checks that fired."""
    for i in range(1, 6):
        save_frame(project.frames / f"f{i}.jpg", (600, 600), seed=i)
    project.write_config()
    assert project.cli("--skip-caption") == 0
    with State.open(project.config.state_path) as state:
        for number, text in CAPTIONS.items():
            findings = check_caption(text, project.config.caption)
            state.results.record_caption(
                number, text, model="gemma-3-27b-it", key_label="key#1", findings=findings, doubt=doubt(findings)
            )
    return project


def test_one_json_line_per_frame_with_its_checks_and_doubt(
    checked: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert checked.cli("caption-report", "--json") == 0
    rows = {row["number"]: row for row in map(json.loads, capsys.readouterr().out.splitlines())}
    assert sorted(rows) == [1, 2, 3, 4, 5]
    checks = {number: [check["check"] for check in row["checks"]] for number, row in rows.items()}
    assert checks == {1: [], 2: ["refusal"], 3: ["duplicate"], 4: ["duplicate"], 5: ["proper_name"]}
    assert rows[2]["doubt"] == 1.0 and rows[1]["doubt"] == 0.0
    assert rows[5]["checks"][0]["words"] == ["Satsuki"] and rows[5]["model"] == "gemma-3-27b-it"


def test_the_text_report_counts_per_check_and_model(checked: Project, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert checked.cli("caption-report") == 0
    out = capsys.readouterr().out
    assert "Captions: 5; with a check fired: 4" in out
    assert "Most frequent phrases: 'an old man' 40%, 'at the bus' 40%" in out
    assert "refusal        gemma-3-27b-it" in out and "duplicate      gemma-3-27b-it                        2" in out
    assert out.index("     2.jpg  doubt 1.00") < out.index("     5.jpg  doubt 0.70")  # most doubtful first


def test_the_review_page_orders_by_caption_doubt_and_names_the_words(checked: Project) -> None:
    from test_review import with_client

    async def scenario(client) -> None:  # noqa: ANN001 - aiohttp's test client
        answer = await (await client.get("/api/images?tab=kept&sort=caption_doubt")).json()
        order = [item["number"] for item in answer["items"]]
        assert order == [2, 5, 1, 3, 4]  # the refusal, the name, then the rest in file order
        by_number = {item["number"]: item["caption"] for item in answer["items"]}
        assert by_number[5]["checks"][0]["words"] == ["Satsuki"] and by_number[5]["doubt"] == 0.7
        position = await (await client.get("/api/position?tab=kept&sort=caption_doubt&number=5")).json()
        assert order.index(5) == position["index"]

    with_client(checked, scenario)


def test_after_a_caption_pass_every_caption_is_checked_again_under_todays_config(checked: Project) -> None:
    from ghibli_async.caption_report import refresh_caption_checks

    with State.open(checked.config.state_path) as state:
        assert refresh_caption_checks(state, checked.config) == 2  # the two frames sharing a caption
        assert refresh_caption_checks(state, checked.config) == 0  # nothing new the second time
        stored = {number: checks or "" for number, _, _, _, _, checks, _ in state.results.captions_checked()}
        assert "duplicate" in stored[3] and "duplicate" in stored[4] and "duplicate" not in stored[1]
        config = checked.config.model_copy(
            update={"caption": checked.config.caption.model_copy(update={"banned_words": ["bakery"]})}
        )
        assert refresh_caption_checks(state, config) == 1  # a word banned since the caption came
        stored = {number: checks or "" for number, _, _, _, _, checks, _ in state.results.captions_checked()}
    assert "banned word: bakery" in stored[1]


def test_planted_faults_in_final_captions_are_flagged_in_the_json_report(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    """A small run of the bench (bench/bench_caption_checks.py): two models plant every kind of
    fault in 4% of their answers each, with dirt to clean; what stays in a final caption is
    flagged by its own check in `caption-report --json`, and few flags are wrong."""
    make_frames(project, 150)
    write_env(project, GEMINI_API_KEY_1="k1")
    writer = FaultyCaptions(share=0.04, seed=3)
    limits = {"gemini-flash-lite-latest": ModelLimits(rpm=60), "gemma-3-27b-it": ModelLimits(rpm=60, plain=True)}
    clock = VirtualClock()
    fake = FakeGemini(clock, {"k1": "p"}, limits, captions=writer)

    async def scenario() -> None:
        async with serving(fake):
            models = [f"{{name: {name}, rpm: 60, rpd: 1000, tpm: 1000000}}" for name in limits]
            write_caption_config(project, fake.base_url, models)
            await run_pipeline(project, clock)

    run_virtual(scenario())
    capsys.readouterr()
    assert project.cli("caption-report", "--json") == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 150
    resized = project.config.resized_dir
    planted = {row["number"]: writer.planted[(row["model"], sha256(resized / f"{row['number']}.jpg"))] for row in rows}
    fired = {row["number"]: {check["check"] for check in row["checks"]} for row in rows}
    missed = {number: fault for number, fault in planted.items() if fault and fault not in fired[number]}
    assert {fault for fault in planted.values() if fault} >= {"length", "duplicate"}  # some stay to be found
    assert not missed, missed
    wrong = [n for n in fired if fired[n] and not planted[n] and "duplicate" not in fired[n]]  # originals copied
    assert len(wrong) <= 0.2 * sum(1 for n in fired if fired[n]), wrong
    exported = (project.root / "out" / "train" / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    texts = {json.loads(line)["text"] for line in exported}
    assert len(exported) == sum(1 for row in rows if row["doubt"] < 0.7)  # the doubtful wait for review
    assert not {row["caption"] for row in rows if row["doubt"] >= 0.7} & texts


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
