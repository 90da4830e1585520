"""OpenAI-compatible endpoints (a local GPU server, a hosted API) through the real `openai` SDK,
in the same scheduler as Gemini, on virtual time."""

from __future__ import annotations

import hashlib
import json
import socket
import sqlite3
from collections import Counter
from contextlib import AsyncExitStack

import pytest
from caption_harness import run_pipeline, serving, write_env
from conftest import Project, make_frames
from fake_gemini import FakeGemini, ModelLimits
from fake_openai import FakeOpenAI, ServedModel, batching_latency
from virtual_time import VirtualClock, run_virtual

from ghibli_async.caption.answers import KeyRejected, ModelUnavailable, RateLimited, TransientError
from ghibli_async.caption.check import check_keys
from ghibli_async.caption.openai_chat import classify_status_error, read_completion
from ghibli_async.config import ApiKey, CaptionConfig, ModelQuota, ProviderConfig, with_stages
from ghibli_async.pipeline import Pipeline, RunReport
from ghibli_async.run_end import RunEnd


def write_config(project: Project, *, providers: dict[str, str], models: list[str], gemini_url: str = "") -> None:
    """`providers`: name -> the YAML of its entry; `models`: the YAML of each model entry."""
    lines = ["resize:", "  size: 64", "caption:", "  concurrency: 8"]
    if gemini_url:
        lines.append(f"  base_url: {gemini_url}")
    lines += ["  providers:", *(f"    {name}: {entry}" for name, entry in providers.items())]
    lines += ["  models:", *(f"    - {model}" for model in models)]
    project.write_config("\n".join(lines) + "\n")


def rows(project: Project) -> dict[int, tuple[str, str | None, str | None]]:
    with sqlite3.connect(project.root / "work" / "state.sqlite") as db:
        query = "SELECT number, caption_status, caption_model, caption_key FROM images WHERE number IS NOT NULL"
        return {number: (status, model, key) for number, status, model, key in db.execute(query)}


def run_with(project: Project, *fakes: FakeGemini | FakeOpenAI, configure, clock: VirtualClock) -> RunReport:
    async def scenario() -> RunReport:
        async with AsyncExitStack() as stack:
            for fake in fakes:
                await stack.enter_async_context(serving(fake))
            configure()
            return await run_pipeline(project, clock)

    return run_virtual(scenario())


def test_gemini_first_then_the_local_server_when_gemini_is_spent(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    make_frames(project, 24)
    write_env(project, GEMINI_API_KEY_1="k1")
    clock = VirtualClock()
    gemini = FakeGemini(clock, keys={"k1": "p"}, models={"gm": ModelLimits(rpm=60, rpd=6)}, latency=lambda: 2.0)
    local = FakeOpenAI(clock, models={"qwen-vl": ServedModel()}, latency=batching_latency())

    def configure() -> None:
        write_config(
            project,
            gemini_url=gemini.base_url,
            providers={"gpu": f"{{base_url: '{local.base_url}'}}"},
            models=["{name: gm, rpm: 60, rpd: 250, tpm: 1000000}", "{name: qwen-vl, provider: gpu, max_in_flight: 4}"],
        )

    report = run_with(project, gemini, local, configure=configure, clock=clock)

    assert report.outcomes("caption") == {"done": 24}
    by_model = Counter(model for _, model, _ in rows(project).values())
    assert by_model == {"gm": 6, "qwen-vl": 18}
    assert {key for _, model, key in rows(project).values() if model == "qwen-vl"} == {"gpu"}
    # Paced (one Gemini request a second), Gemini's turn between its requests goes to the local
    # server: Gemini still spends its whole day (6 above), and nothing is asked of it after that.
    spent_at = min(s.at for s in gemini.seen if s.kind == "day")
    assert all(s.at <= spent_at for s in gemini.seen), "Gemini was asked again after its day was spent"
    paid = Counter(s.image for s in gemini.successes() + local.successes())
    assert len(paid) == 24 and set(paid.values()) == {1}, "an image was lost or paid twice"
    metadata = (project.root / "out" / "train" / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(metadata) == 24 and all(json.loads(line)["text"].startswith("Ghibli style") for line in metadata)
    capsys.readouterr()
    assert project.cli("status", clock=clock) == 0
    status = capsys.readouterr().out
    assert "key#1/gm" in status and "spent" in status
    assert "gpu/qwen-vl" in status and "18/-      requests (no daily limit)" in status


def caption_locally(
    project: Project, frames: int, *, max_in_flight: int, batch: int | None = None
) -> tuple[RunReport, FakeOpenAI]:
    """`frames` frames captioned by a local batching server (`batch` slots; None: no limit)."""
    make_frames(project, frames)
    clock = VirtualClock()
    local = FakeOpenAI(clock, models={"vl": ServedModel()}, latency=batching_latency(), batch=batch)

    def configure() -> None:
        write_config(
            project,
            providers={"gpu": f"{{base_url: '{local.base_url}'}}"},
            models=[f"{{name: vl, provider: gpu, max_in_flight: {max_in_flight}}}"],
        )

    return run_with(project, local, configure=configure, clock=clock), local


def test_the_in_flight_cap_of_a_local_server_is_never_exceeded(project: Project) -> None:
    report, local = caption_locally(project, 40, max_in_flight=3)

    assert report.outcomes("caption") == {"done": 40}
    assert local.most_in_flight == 3  # concurrency 8, cap 3: the cap holds, and is used
    assert all(s.key == "none" for s in local.seen)  # a local server gets no real key


def test_a_local_server_with_fewer_slots_than_max_in_flight_teaches_its_width(project: Project) -> None:
    """A batching server that answers 503 when its 3 slots are full, configured for 8: the bucket
    learns to keep at most the server's width in flight, and every frame is captioned (none failed)."""
    report, local = caption_locally(project, 120, max_in_flight=8, batch=3)

    assert report.outcomes("caption") == {"done": 120}
    full = [s for s in local.seen if s.kind == "full"]
    assert 0 < len(full) <= 8, "the bucket did not learn the server's width"
    assert all(s.at < min(ok.at for ok in local.successes()[-10:]) for s in full)  # only while it learned


def test_invalid_key_unknown_model_and_imageless_model_are_retired(project: Project) -> None:
    make_frames(project, 12)
    write_env(project, ROUTER_KEY_1="wrong", ROUTER_KEY_2="sk-good")
    clock = VirtualClock()
    hosted = FakeOpenAI(
        clock, keys={"sk-good"}, models={"text-only": ServedModel(vision=False), "vl": ServedModel(rpm=600)}
    )

    def configure() -> None:
        write_config(
            project,
            providers={"router": f"{{base_url: '{hosted.base_url}', api_key_env: [ROUTER_KEY_1, ROUTER_KEY_2]}}"},
            models=[
                "{name: gone, provider: router}",
                "{name: text-only, provider: router}",
                "{name: vl, provider: router}",
            ],
        )

    report = run_with(project, hosted, configure=configure, clock=clock)

    assert report.outcomes("caption") == {"done": 12}
    assert len([s for s in hosted.seen if s.key == "wrong"]) == 1  # the invalid key: one request
    assert len([s for s in hosted.seen if s.kind == "not_found"]) == 1  # the unknown model: one request
    assert len([s for s in hosted.seen if s.kind == "no_images"]) == 1  # the text-only model: one request
    assert {key for _, _, key in rows(project).values()} == {"router:key#2"}
    with sqlite3.connect(project.root / "work" / "state.sqlite") as db:
        events = dict(db.execute("SELECT kind || ':' || project || '/' || model, reason FROM bucket_events"))
    assert "does not take images" in events["model_retired:*/text-only"]
    assert "not found" in events["model_retired:*/gone"]
    assert "key_retired:router:key#1/*" in events


def test_content_filter_counts_as_a_safety_block_and_another_model_is_tried(project: Project) -> None:
    make_frames(project, 3)
    clock = VirtualClock()
    local = FakeOpenAI(clock, models={"first": ServedModel(), "second": ServedModel()})

    async def scenario() -> RunReport:
        async with serving(local):
            write_config(
                project,
                providers={"gpu": f"{{base_url: '{local.base_url}'}}"},
                models=["{name: first, provider: gpu}", "{name: second, provider: gpu}"],
            )
            await Pipeline(with_stages(project.config, caption=False), keys=[]).run()  # resize: 2.jpg exists now
            local.filtered_images.add(hashlib.sha256((project.root / "work/resized/2.jpg").read_bytes()).hexdigest())
            return await run_pipeline(project, clock)

    report = run_virtual(scenario())

    assert [s.model for s in local.seen if s.kind == "filtered"] == ["first", "second"]  # one other model tried
    assert report.outcomes("caption") == {"done": 2, "blocked": 1}
    assert rows(project)[2][0] == "blocked"


def test_429_with_retry_after_rests_the_bucket_that_long(project: Project) -> None:
    make_frames(project, 5)
    write_env(project, HOSTED_KEY="sk-1")
    clock = VirtualClock()
    hosted = FakeOpenAI(clock, keys={"sk-1"}, models={"vl": ServedModel(rpm=2)}, retry_after_s=45)

    def configure() -> None:
        write_config(
            project,
            providers={"hosted": f"{{base_url: '{hosted.base_url}', api_key_env: [HOSTED_KEY]}}"},
            models=["{name: vl, provider: hosted, rpm: 10}"],  # the table says 10; the server allows 2
        )

    report = run_with(project, hosted, configure=configure, clock=clock)

    assert report.outcomes("caption") == {"done": 5}
    limited = [s for s in hosted.seen if s.kind == "minute"]
    assert limited, "the server's limit was never met"
    first = limited[0].at
    assert all(s.at >= first + 45 for s in hosted.seen if s.at > first), "asked again before Retry-After"
    with sqlite3.connect(project.root / "work" / "state.sqlite") as db:
        learned = db.execute("SELECT value FROM learned_limits WHERE kind = 'rpm'").fetchone()
    assert learned == (2,)  # x-ratelimit-limit-requests taught the real limit


@pytest.mark.parametrize(
    ("status", "body", "headers", "expected"),
    [
        (401, {"message": "Incorrect API key provided", "code": "invalid_api_key"}, {}, KeyRejected),
        (403, {"message": "Project does not have access"}, {}, KeyRejected),
        (404, {"message": "The model `x` does not exist.", "code": "model_not_found"}, {}, ModelUnavailable),
        (404, {"message": 'model "llava" not found, try pulling it first'}, {}, ModelUnavailable),  # Ollama
        (400, {"message": "qwen2.5 is not a multimodal model"}, {}, ModelUnavailable),  # vLLM
        (400, {"message": "image input is not supported for this model"}, {}, ModelUnavailable),
        (400, {"message": "max_tokens is too large"}, {}, TransientError),  # unknown: transient, logged
        (500, {"message": "Internal server error"}, {}, TransientError),
        (503, "upstream connect error", {}, TransientError),
    ],
)
def test_each_error_answer_is_read_by_what_the_endpoint_says(status, body, headers, expected) -> None:
    assert isinstance(classify_status_error(status, body, headers), expected)


@pytest.mark.parametrize(
    ("body", "headers", "scope", "retry_after", "value"),
    [
        (
            {"message": "Rate limit reached on requests per min (RPM): Limit 3", "code": "rate_limit_exceeded"},
            {"Retry-After": "20", "x-ratelimit-limit-requests": "3"},
            "minute",
            20.0,
            3,
        ),
        (
            {"message": "Rate limit reached on tokens per min (TPM): Limit 40000"},
            {
                "x-ratelimit-limit-tokens": "40000",
                "x-ratelimit-remaining-tokens": "0",
                "x-ratelimit-reset-tokens": "6m0s",
            },
            "tokens",
            360.0,
            40000,
        ),
        (
            {"message": "Rate limit exceeded: free-models-per-day", "code": 429},  # OpenRouter
            {"X-RateLimit-Limit": "50", "X-RateLimit-Remaining": "0"},
            "day",
            None,
            50,
        ),
        ({"message": "You exceeded your current quota", "code": "insufficient_quota"}, {}, "day", None, None),
        ({"message": "slow down"}, {"retry-after-ms": "1500"}, "minute", 1.5, None),
    ],
)
def test_rate_limits_say_their_scope_delay_and_limit(body, headers, scope, retry_after, value) -> None:
    reply = classify_status_error(429, body, headers)
    assert reply == RateLimited(scope, retry_after, value, body["message"])


def test_check_keys_asks_the_endpoint_for_its_models_then_pings_with_an_image() -> None:
    clock = VirtualClock()
    hosted = FakeOpenAI(clock, keys={"sk-good"}, models={"vl": ServedModel(), "text-only": ServedModel(vision=False)})
    keys = [
        ApiKey(f"router:key#{n}", f"R{n}", secret, f"router:key#{n}", "router")
        for n, secret in ((1, "bad"), (2, "sk-good"))
    ]

    async def check() -> list:
        async with serving(hosted):
            caption = CaptionConfig(
                providers={"router": ProviderConfig(base_url=hosted.base_url)},
                models=[ModelQuota(name=name, provider="router") for name in ("vl", "text-only", "gone")],
            )
            return await check_keys(caption, keys)

    verdicts = {(check.key, check.model): check.verdict for check in run_virtual(check())}
    assert verdicts == {
        ("router:key#1", "vl"): "invalid key",
        ("router:key#1", "text-only"): "invalid key",
        ("router:key#1", "gone"): "invalid key",
        ("router:key#2", "vl"): "ok",
        ("router:key#2", "text-only"): "no image input",
        ("router:key#2", "gone"): "model not found",
    }
    assert sorted(s.model for s in hosted.seen) == ["text-only", "vl"]  # only listed models, good key, one ping each


def test_an_answer_of_an_unknown_shape_is_transient_not_a_crash() -> None:
    from openai.types.chat import ChatCompletion

    odd = ChatCompletion.model_construct(id="x", created=0, model="vl", object="chat.completion", choices=[])
    assert isinstance(read_completion(odd), TransientError)


def test_a_server_that_is_down_is_named_and_no_image_is_said_to_have_failed(project: Project) -> None:
    make_frames(project, 12)
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"
    write_config(project, providers={"local": f"{{base_url: '{url}'}}"}, models=["{name: vlm, provider: local}"])

    report = run_virtual(run_pipeline(project, VirtualClock()))

    assert report.end == RunEnd.FAILED and not report.problems
    (note,) = report.notes
    assert note.startswith(f"the caption service keeps failing (cannot reach {url}/: APIConnectionError")
    summary = str(report)
    assert summary.splitlines()[-1] == (
        "Result: failed: see the notes above; 12 images still to caption; rerun when it answers (exit 1)."
    )
