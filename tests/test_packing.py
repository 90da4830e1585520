"""Several frames per request: reading packed answers, what each answer means for its frames, and
whole runs through the real SDKs against fake servers whose captions name their image (each ends
with the first 8 hex digits of its image's sha256), so a test can prove whose caption it is."""

from __future__ import annotations

import hashlib
import json
from collections import deque

import pytest
from caption_harness import run_pipeline, serving, write_caption_config, write_env
from conftest import Project, make_frames
from fake_gemini import FakeGemini, ModelLimits
from fake_openai import FakeOpenAI, ServedModel
from fake_packs import CUT, FAULTS, GARBAGE, MISSING, REPEATED, UNKNOWN
from virtual_time import SteadyClock, VirtualClock, run_virtual

from ghibli_async.caption.answers import Answer, Blocked, PackRefused
from ghibli_async.caption.buckets import Bucket, Grant, Limits
from ghibli_async.caption.packing import read_pack
from ghibli_async.caption.reducer import Accept, Attempt, OnePerRequest, Retry, Served, reduce_reply
from ghibli_async.config import CaptionConfig
from ghibli_async.pipeline import RunReport

A = "Ghibli style, a girl in a red coat walks past a bakery"
B = "Ghibli style, a boy in a blue shirt runs across a meadow"


# --- reading a packed answer ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "captions", "problem"),
    [
        (json.dumps([{"id": "8", "caption": B}, {"id": "7", "caption": A}]), {7: A, 8: B}, None),
        (f"```json\n{json.dumps([{'id': '7', 'caption': A}, {'id': '8', 'caption': B}])}\n```", {7: A, 8: B}, None),
        (json.dumps({"captions": [{"id": 7, "caption": A}, {"id": 8, "caption": B}]}), {7: A, 8: B}, None),
        (
            f'Sure! [{{"id": "7", "caption": "{A}"}}, {{"id": "8", "caption": "{B}"}}] Hope this helps.',
            {7: A, 8: B},
            None,
        ),
        (json.dumps([{"id": "7", "caption": A}]), {7: A}, "no caption for ids: 8"),
        (
            json.dumps([{"id": "7", "caption": A}, {"id": "8", "caption": B}, {"id": "9", "caption": B}]),
            {7: A, 8: B},
            "ids nobody asked for: 9",
        ),
        (
            json.dumps([{"id": "7", "caption": A}, {"id": "8", "caption": B}, {"id": "7", "caption": B}]),
            {8: B},
            "ids answered more than once: 7",
        ),
        ("A girl and a boy, both in a town.", {}, "no JSON array of captions in the answer"),
        (json.dumps([{"id": "7", "caption": A}, {"id": "8", "caption": B}])[:-20], {7: A}, "no caption for ids: 8"),
        (json.dumps([{"id": "7", "caption": A}, {"id": "8", "caption": ""}]), {7: A}, "no caption for ids: 8"),
    ],
    ids=["any order", "fenced", "wrapped", "prose around", "missing", "unknown", "repeated", "no json", "cut", "empty"],
)
def test_a_packed_answer_keeps_only_captions_it_names_once(text: str, captions: dict, problem: str | None) -> None:
    reading = read_pack(text, [7, 8])
    assert reading.captions == captions
    assert (problem in reading.problems) if problem else reading.problems == ()


# --- what a packed answer means for each frame ------------------------------------------------------

RULES = CaptionConfig(min_words=4, max_words=30, banned_words=["Totoro"], blocked_retries=1)
PACK = (Attempt(7), Attempt(8), Attempt(9))


def grant() -> Grant:
    return Grant(Bucket("p", "m1", Limits(10, 250, None), ["key#1"], day="d"), "key#1", 1800)


def reduce(reply, attempts=PACK, *, unreadable: int = 0):
    return reduce_reply(
        grant(),
        reply,
        attempts,
        RULES,
        failing_streak=0,
        other_buckets=[("p/other", "other")],
        since_reset_s=6 * 3600.0,
        unreadable_packs=unreadable,
    )


def answer(entries: dict[int, str]) -> Answer:
    return Answer(json.dumps([{"id": str(number), "caption": text} for number, text in entries.items()]), 900)


def test_each_frame_of_a_packed_answer_is_judged_on_its_own() -> None:
    outcome = reduce(answer({9: A, 7: B, 8: "Ghibli style, Totoro"}))
    assert outcome.effects == (Served("p/m1", 900, 1800, 3),)  # one request, three frames
    verdicts = {attempt.number: verdict for attempt, verdict in outcome.verdicts}
    assert verdicts == {7: Accept(B, 300), 8: Retry(), 9: Accept(A, 300)}
    second_opinion = outcome.verdicts[1][0]
    assert second_opinion.avoid_buckets == {"p/m1"} and not second_opinion.alone


def test_a_frame_left_out_goes_back_and_then_alone() -> None:
    outcome = reduce(answer({7: A, 8: B}))
    left_out = outcome.verdicts[2]
    assert left_out == (Attempt(9, requests=1, missed=1), Retry())  # neither blocked nor failed
    again = reduce(answer({7: A, 8: B}), (Attempt(7), Attempt(8), left_out[0]))
    assert again.verdicts[2][0].alone and again.verdicts[2][0].missed == 2


def test_what_was_wrong_with_a_packed_answer_comes_out_to_be_logged() -> None:
    assert reduce(answer({7: A, 8: B})).pack_problems == ("no caption for ids: 9",)
    assert reduce(answer({7: A, 8: B, 9: A})).pack_problems == ()


def test_a_blocked_pack_sends_each_frame_alone_and_blames_none() -> None:
    outcome = reduce(Blocked("prompt blocked: PROHIBITED_CONTENT", 400))
    assert outcome.effects == (Served("p/m1", 400, 1800, 3),)
    assert all(verdict == Retry() and attempt.alone and not attempt.refused_by for attempt, verdict in outcome.verdicts)


def test_a_model_that_refuses_several_images_takes_one_per_request() -> None:
    outcome = reduce(PackRefused("400: At most 1 image(s) may be provided in one request."))
    assert outcome.effects == (OnePerRequest("m1", "400: At most 1 image(s) may be provided in one request."),)
    assert all(verdict == Retry() and attempt.missed == 0 for attempt, verdict in outcome.verdicts)


def test_unreadable_packed_answers_in_a_row_end_packing_for_the_model() -> None:
    first = reduce(Answer("no json here", 900))
    assert first.unreadable and first.effects == (Served("p/m1", 900, 1800, 3),)
    third = reduce(Answer("no json here", 900), unreadable=2)
    assert third.effects[-1] == OnePerRequest("m1", "3 packed answers in a row unreadable")
    assert not reduce(answer({7: A})).unreadable  # one caption read: the model keeps the form


# --- whole runs ------------------------------------------------------------------------------


def image_digests(project: Project) -> dict[int, str]:
    """Exported file number -> sha256 of the image the engine sent (the resized frame)."""
    resized = project.root / "work" / "resized"
    return {int(path.stem): hashlib.sha256(path.read_bytes()).hexdigest() for path in resized.glob("*.jpg")}


def exported(project: Project) -> dict[int, str]:
    lines = (project.root / "out" / "train" / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    return {int(row["file_name"].split(".")[0]): row["text"] for row in map(json.loads, lines)}


def assert_each_caption_is_its_own(project: Project, count: int) -> None:
    """Every frame exported, each with the caption the fake wrote for that frame's image."""
    rows, digests = exported(project), image_digests(project)
    assert len(rows) == count
    wrong = [number for number, text in rows.items() if not text.endswith(digests[number][:8])]
    assert not wrong, f"frames exported with another frame's caption: {wrong}"


def gemini_run(
    project: Project, fake: FakeGemini, clock: VirtualClock, models: list[str], extra: str = ""
) -> RunReport:
    write_env(project, GEMINI_API_KEY_1="k1")

    async def scenario() -> RunReport:
        async with serving(fake):
            write_caption_config(project, fake.base_url, models, extra=extra)
            return await run_pipeline(project, clock)

    return run_virtual(scenario())


def test_four_frames_per_request_caption_everything_with_a_quarter_of_the_requests(project: Project) -> None:
    make_frames(project, 40)
    clock = VirtualClock()
    fake = FakeGemini(clock, {"k1": "p"}, {"m1": ModelLimits(rpm=10, rpd=100)}, latency=lambda: 2.0)

    report = gemini_run(project, fake, clock, ["{name: m1, rpm: 10, rpd: 100, tpm: 1000000, images_per_request: 4}"])

    assert report.outcomes("caption") == {"done": 40}
    assert len(fake.seen) == 10 and all(len(seen.images) == 4 for seen in fake.seen)
    assert len({image for seen in fake.seen for image in seen.images}) == 40  # no frame paid for twice
    assert_each_caption_is_its_own(project, 40)


def test_every_malformed_packed_answer_costs_only_its_frames(project: Project) -> None:
    make_frames(project, 60)
    clock = VirtualClock()
    fake = FakeGemini(clock, {"k1": "p"}, {"m1": ModelLimits(rpm=30, rpd=1000)}, latency=lambda: 2.0)
    fake.packs.faults = deque([*FAULTS, "", *FAULTS])  # two of each fault among the first packed answers

    report = gemini_run(project, fake, clock, ["{name: m1, rpm: 30, rpd: 1000, tpm: 1000000, images_per_request: 4}"])

    assert report.outcomes("caption") == {"done": 60}  # none blocked, failed or left
    assert sorted(fault for fault, _ in fake.packs.planted) == sorted(FAULTS * 2)
    assert_each_caption_is_its_own(project, 60)
    sent = [image for seen in fake.seen for image in seen.images]
    # Frames asked again: those the faulty answers left without a caption (garbage: all four;
    # missing, cut and repeated: one each; an unknown id costs nothing).
    assert len(sent) - 60 == 2 * (4 + 1 + 1 + 1)


def test_a_blocked_frame_in_a_pack_blocks_only_itself(project: Project) -> None:
    make_frames(project, 8)
    clock = VirtualClock()
    fake = FakeGemini(clock, {"k1": "p"}, {"m1": ModelLimits(rpm=30, rpd=1000)})
    fake.blocked_images = {image_digests_after_resize(project)[3]}

    table = ["{name: m1, rpm: 30, rpd: 1000, tpm: 1000000, images_per_request: 8}"]
    report = gemini_run(project, fake, clock, table, extra="  concurrency: 1\n")  # one worker: one pack of 8

    assert report.outcomes("caption") == {"done": 7, "blocked": 1}
    packed, alone = fake.seen[0], fake.seen[1:]
    assert packed.kind == "blocked" and len(packed.images) == 8
    assert len(alone) == 8 and all(len(seen.images) == 1 for seen in alone)  # each frame alone once
    assert [seen.kind for seen in alone].count("blocked") == 1
    rows = exported(project)
    assert 3 not in rows and len(rows) == 7
    assert len(report.blocked) == 1 and report.failed == [] and report.output_dir == project.root / "out" / "train"


def image_digests_after_resize(project: Project) -> dict[int, str]:
    """Resize once without captioning, to learn which image each number will be."""
    from ghibli_async.config import load_config, with_stages
    from ghibli_async.pipeline import Pipeline

    project.write_config("resize:\n  size: 64\n")
    config = with_stages(load_config(project.config_path), caption=False, export=False)
    run_virtual(Pipeline(config, clock=VirtualClock()).run())
    return image_digests(project)


def test_a_model_that_takes_one_image_falls_back_once_and_loses_nothing(project: Project, caplog) -> None:
    make_frames(project, 12)
    clock = VirtualClock()
    fake = FakeGemini(clock, {"k1": "p"}, {"m1": ModelLimits(rpm=60, rpd=1000, max_images=1)})

    report = gemini_run(project, fake, clock, ["{name: m1, rpm: 60, rpd: 1000, tpm: 1000000, images_per_request: 4}"])

    assert report.outcomes("caption") == {"done": 12} and not report.notes
    refused = [seen for seen in fake.seen if seen.kind == "images"]
    assert 1 <= len(refused) <= 4  # the requests already on their way when the first 400 came back
    assert all(len(seen.images) == 1 for seen in fake.successes())
    assert_each_caption_is_its_own(project, 12)


def test_gemma_without_json_mode_packs_by_instruction(project: Project) -> None:
    make_frames(project, 16)
    clock = VirtualClock()
    fake = FakeGemini(clock, {"k1": "p"}, {"gemma": ModelLimits(rpm=30, rpd=14_400, plain=True)})

    report = gemini_run(
        project, fake, clock, ["{name: gemma, rpm: 30, rpd: 14400, tpm: 1000000, images_per_request: 4}"]
    )

    assert report.outcomes("caption") == {"done": 16}
    assert [seen.kind for seen in fake.seen].count("feature") == 1  # JSON mode refused once, then left out
    assert len(fake.successes()) == 4  # answered in a ```json fence, read all the same
    assert_each_caption_is_its_own(project, 16)


def test_answers_that_never_keep_the_form_end_packing_for_the_run(project: Project) -> None:
    make_frames(project, 20)
    clock = VirtualClock()
    fake = FakeGemini(clock, {"k1": "p"}, {"m1": ModelLimits(rpm=60, rpd=1000)})
    fake.packs.always = GARBAGE

    report = gemini_run(project, fake, clock, ["{name: m1, rpm: 60, rpd: 1000, tpm: 1000000, images_per_request: 4}"])

    assert report.outcomes("caption") == {"done": 20}
    packed = [seen for seen in fake.seen if len(seen.images) > 1]
    assert 3 <= len(packed) <= 6  # three unreadable answers in a row (and those already sent), then one per request
    assert_each_caption_is_its_own(project, 20)


@pytest.mark.parametrize(
    ("served", "kind"),
    [(ServedModel(), ""), (ServedModel(json_mode=False), "json_mode"), (ServedModel(max_images=1), "images")],
    ids=["json schema", "no json mode: by instruction", "one image per request"],
)
def test_an_openai_compatible_server_takes_packed_requests(project: Project, served: ServedModel, kind: str) -> None:
    make_frames(project, 12)
    clock = VirtualClock()
    fake = FakeOpenAI(clock, {"local-vlm": served})
    fake.packs.faults = deque([MISSING, REPEATED, UNKNOWN, CUT])

    async def scenario() -> RunReport:
        async with serving(fake):
            project.write_config(
                "resize:\n  size: 64\ncaption:\n  concurrency: 1\n  providers:\n"
                f"    local: {{base_url: '{fake.base_url}'}}\n"
                "  models:\n    - {name: local-vlm, provider: local, images_per_request: 3}\n"
            )
            return await run_pipeline(project, clock)

    report = run_virtual(scenario())

    assert report.outcomes("caption") == {"done": 12}
    refusals = [seen for seen in fake.seen if seen.status == 400]
    assert [seen.kind for seen in refusals] == ([kind] if kind else [])
    assert_each_caption_is_its_own(project, 12)


def test_calibrate_compares_one_and_k_per_request_and_keeps_what_it_paid_for(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    make_frames(project, 10)
    write_env(project, GEMINI_API_KEY_1="k1")
    fake = FakeGemini(SteadyClock(), {"k1": "p"}, {"m1": ModelLimits(), "m2": ModelLimits()})
    with fake.serving_in_thread():
        project.write_config("resize:\n  size: 64\n")
        assert project.cli("--skip-caption") == 0
        project.write_config(
            f"resize:\n  size: 64\ncaption:\n  base_url: {fake.base_url}\n  models:\n"
            "    - {name: m1, rpm: 600, rpd: 1000, tpm: 1000000}\n"
            "    - {name: m2, rpm: 600, rpd: 1000, tpm: 1000000, images_per_request: 4}\n"
        )
        capsys.readouterr()
        assert project.cli("calibrate", "--sample", "8", clock=SteadyClock()) == 0
        out = capsys.readouterr().out
        assert {seen.model for seen in fake.seen} == {"m2"}  # the first packed model, by default
        assert sorted(len(seen.images) for seen in fake.seen) == [1] * 8 + [4, 4]
        assert "m2: 8 frames compared; content-word overlap 100%" in out
        assert "Requests: 8 at one frame per request, 2 at 4 per request" in out
        assert "8 one-per-request captions were kept" in out
        fake.seen.clear()
        assert project.cli(clock=SteadyClock()) == 0  # the run pays only for the two frames not sampled
    assert sum(len(seen.images) for seen in fake.seen) == 2
    assert_each_caption_is_its_own(project, 10)


def test_calibrate_can_try_the_verifier_as_a_captioner(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    make_frames(project, 4)
    write_env(project, GEMINI_API_KEY_1="k1")
    fake = FakeGemini(SteadyClock(), {"k1": "p"}, {"m1": ModelLimits(), "m2": ModelLimits()})
    with fake.serving_in_thread():
        project.write_config(
            f"resize:\n  size: 64\ncaption:\n  base_url: {fake.base_url}\n  models:\n"
            "    - {name: m1, rpm: 600, rpd: 1000, tpm: 1000000}\n"
            "    - {name: m2, rpm: 600, rpd: 1000, tpm: 1000000, images_per_request: 2}\n"
            "  verify: {model: m2}\n"
        )
        assert project.cli("--skip-caption") == 0
        assert project.cli("calibrate", "--model", "m2", "--sample", "4", clock=SteadyClock()) == 0
    assert {seen.model for seen in fake.seen} == {"m2"} and "m2: 4 frames compared" in capsys.readouterr().out


def test_calibrate_says_what_is_wrong_in_one_line(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    make_frames(project, 2)
    write_env(project, GEMINI_API_KEY_1="k1")
    project.write_config("caption:\n  models:\n    - {name: m1, rpm: 5, rpd: 20, tpm: 250000}\n")
    assert project.cli("calibrate", "--model", "gemma") == 2
    assert capsys.readouterr().err == "error: --model gemma: not in caption.models (m1)\n"
    assert project.cli("calibrate") == 2
    assert "no state at" in capsys.readouterr().err


def test_status_forecasts_with_frames_per_request(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    make_frames(project, 12)
    write_env(project, GEMINI_API_KEY_1="k1")
    fake = FakeGemini(SteadyClock(), {"k1": "p"}, {"m1": ModelLimits(), "gemma": ModelLimits()})
    with fake.serving_in_thread():
        project.write_config(
            f"resize:\n  size: 64\ncaption:\n  base_url: {fake.base_url}\n  models:\n"
            "    - {name: m1, rpm: 600, rpd: 2, tpm: 1000000}\n"
            "    - {name: gemma, rpm: 600, rpd: 100, tpm: 1000000, images_per_request: 4}\n"
        )
        assert project.cli("--limit", "10", clock=SteadyClock()) == 0
    capsys.readouterr()
    project.cli("status", clock=SteadyClock())
    out = capsys.readouterr().out
    served = {model: sum(1 for s in fake.successes() if s.model == model) for model in ("m1", "gemma")}
    left = (2 - served["m1"]) + (100 - served["gemma"]) * 4
    assert f"about {left} more captions today from the live buckets (at each model's frames per request)" in out
