"""The review page's API, through aiohttp's test client: every write needs the page's token."""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from caption_harness import run_pipeline, serving, write_caption_config, write_env
from conftest import Project, make_frames, save_frame
from fake_gemini import FakeGemini, ModelLimits
from review_rows import build_review_state
from test_filter import StubDetector, filtered_project, run_sync
from virtual_time import VirtualClock, run_virtual

from ghibli_async.config import load_config
from ghibli_async.review import (
    NOT_FILTERED,
    STATS_KEY,
    TOKEN_HEADER,
    make_app,
    served_names,
    stats_payload,
)
from ghibli_async.state import State

TOKEN = "test-token"


def with_client(project: Project, scenario: Callable[[TestClient], Awaitable[None]]) -> None:
    async def main() -> None:
        async with TestClient(TestServer(make_app(load_config(project.config_path), token=TOKEN))) as client:
            await scenario(client)

    asyncio.run(main())


@pytest.fixture
def reviewed(project: Project) -> Project:
    filtered_project(project)
    run_sync(project, StubDetector())
    with State.open(project.config.state_path) as state:
        state.results.record_caption(1, "Ghibli style a girl in a red coat", model="m1", key_label="key#1")
        state.results.record_caption(
            2, "Ghibli style a girl by a well", model="m2", key_label="key#2", needs_review=True
        )
    return project


def row(project: Project, name: str) -> dict:
    with sqlite3.connect(project.root / "work" / "state.sqlite") as db:
        db.row_factory = sqlite3.Row
        return dict(db.execute("SELECT * FROM images WHERE source_path LIKE ?", (f"%/{name}",)).fetchone())


def test_page_carries_the_token_and_tabs_list_images(reviewed: Project) -> None:
    async def scenario(client: TestClient) -> None:
        page = await (await client.get("/")).text()
        assert f'content="{TOKEN}"' in page
        rejected = await (await client.get("/api/images?tab=rejected")).json()
        reasons = {item["name"]: item["filter"]["reason"] for item in rejected["items"]}
        assert reasons["black.png"] == "dark" and reasons["empty1.png"] == "no_person"
        kept = await (await client.get("/api/images?tab=kept&limit=2")).json()
        assert kept["total"] == 5 and len(kept["items"]) == 2  # 6 kept, one of them needs review
        review = await (await client.get("/api/images?tab=review")).json()
        assert [item["caption"]["text"] for item in review["items"]] == ["Ghibli style a girl by a well"]
        assert all("/" not in item["name"] for item in rejected["items"])  # names only, no paths
        assert (await client.get("/api/images?tab=nope")).status == 400
        beyond = await client.get(f"/api/images?tab=kept&offset={2**70}")  # past SQLite's 64-bit integers
        assert beyond.status == 200 and (await beyond.json())["items"] == []

    with_client(reviewed, scenario)


def test_writes_need_the_token(reviewed: Project) -> None:
    image_id = row(reviewed, "empty1.png")["id"]

    async def scenario(client: TestClient) -> None:
        body = {"decision": "keep"}
        assert (await client.post(f"/api/images/{image_id}/decision", json=body)).status == 403
        wrong = {TOKEN_HEADER: "guess"}
        assert (await client.post(f"/api/images/{image_id}/decision", json=body, headers=wrong)).status == 403
        assert (await client.post(f"/api/images/{image_id}/caption", json={"caption": "x"})).status == 403

    with_client(reviewed, scenario)
    assert row(reviewed, "empty1.png")["filter_status"] == "rejected"


def test_flip_to_kept_is_saved_and_queued_for_the_next_run(reviewed: Project) -> None:
    image_id = row(reviewed, "empty1.png")["id"]

    async def scenario(client: TestClient) -> None:
        response = await client.post(
            f"/api/images/{image_id}/decision", json={"decision": "keep"}, headers={TOKEN_HEADER: TOKEN}
        )
        assert response.status == 200
        assert (await response.json())["filter"] == {"status": "kept", "reason": "override", "override": "keep"}

    with_client(reviewed, scenario)
    run_sync(reviewed, StubDetector())
    flipped = row(reviewed, "empty1.png")
    assert flipped["filter_status"] == "kept" and flipped["resize_status"] == "done" and flipped["number"] == 7


def test_edited_caption_is_kept_and_exported(reviewed: Project) -> None:
    image_id = row(reviewed, "person2.png")["id"]

    async def scenario(client: TestClient) -> None:
        response = await client.post(
            f"/api/images/{image_id}/caption",
            json={"caption": "  Ghibli style a boy   waves from a hill  "},
            headers={TOKEN_HEADER: TOKEN},
        )
        caption = (await response.json())["caption"]
        assert caption["text"] == "Ghibli style a boy waves from a hill" and caption["edited"]
        assert not caption["needs_review"]

    with_client(reviewed, scenario)
    assert reviewed.cli("export") == 0
    lines = (reviewed.root / "out" / "train" / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    assert {"file_name": "2.jpg", "text": "Ghibli style a boy waves from a hill"} in [json.loads(x) for x in lines]


def test_unknown_ids_and_bad_bodies(reviewed: Project) -> None:
    async def scenario(client: TestClient) -> None:
        headers = {TOKEN_HEADER: TOKEN}
        assert (await client.get("/api/thumbs/99999")).status == 404
        assert (
            await client.post("/api/images/99999/decision", json={"decision": "keep"}, headers=headers)
        ).status == 404
        image_id = row(reviewed, "person3.png")["id"]
        bad = await client.post(f"/api/images/{image_id}/decision", json={"decision": "maybe"}, headers=headers)
        assert bad.status == 400
        empty = await client.post(f"/api/images/{image_id}/caption", json={"caption": "   "}, headers=headers)
        assert empty.status == 400
        assert (await client.get("/api/thumbs/..%2F..%2Fetc")).status == 404  # ids only, never a path

    with_client(reviewed, scenario)


def test_thumbnails_are_made_once_and_stats_add_up(reviewed: Project) -> None:
    image_id = row(reviewed, "person3.png")["id"]

    async def scenario(client: TestClient) -> None:
        thumb = await client.get(f"/api/thumbs/{image_id}")
        assert thumb.status == 200 and thumb.content_type == "image/jpeg"
        stats = await (await client.get("/api/stats")).json()
        assert stats["tabs"]["rejected"] == 6 and stats["tabs"]["failed"] == 1
        assert stats["models"] == {"m1": 1, "m2": 1}
        assert sum(bucket["count"] for bucket in stats["word_counts"]) == 2

    with_client(reviewed, scenario)
    assert (reviewed.root / "work" / "thumbs" / f"{image_id}.jpg").exists()


def report_page(path: Path) -> list[dict]:
    """The items in one `data/<tab>-<page>.js` of a report."""
    text = path.read_text(encoding="utf-8")
    assert text.startswith("window.reportPage(") and "<" not in text
    return json.loads(text.split(", ", 2)[2].rsplit(");", 1)[0])


def test_report_is_a_read_only_folder_with_everything(reviewed: Project, capsys: pytest.CaptureFixture[str]) -> None:
    target = reviewed.root / "shared-report"
    assert reviewed.cli("report", "--to", str(target)) == 0
    html = (target / "index.html").read_text(encoding="utf-8")
    data = json.loads(html.split("window.REPORT = ", 1)[1].split(";</script>", 1)[0])
    assert sum(data["stats"]["tabs"].values()) == 13
    pages = {page.name: report_page(page) for page in (target / "data").iterdir()}
    assert sorted(pages) == sorted(f"{tab}-0.js" for tab, n in data["stats"]["tabs"].items() if n)
    items = [item for page in pages.values() for item in page]
    assert len(items) == sum(data["stats"]["tabs"].values()) == 13
    readable = [item["id"] for item in items if item["name"] != "broken.png"]
    assert all((target / "thumbs" / f"{image_id}.jpg").exists() for image_id in readable)
    assert "read-only report" in html and TOKEN not in html
    capsys.readouterr()
    assert reviewed.cli("report") == 0  # without --to: in the work dir, not wherever the shell stands
    assert str(reviewed.root / "work" / "report" / "index.html") in capsys.readouterr().out


def test_boxes_say_whether_they_count_under_the_current_threshold(reviewed: Project) -> None:
    """The stub's boxes score 0.3: a person at confidence 0.15, a faint guess after raising it."""

    async def boxes_of_kept() -> list[dict]:
        async with TestClient(TestServer(make_app(load_config(reviewed.config_path), token=TOKEN))) as client:
            kept = await (await client.get("/api/images?tab=kept")).json()
        return [box for item in kept["items"] for box in item["boxes"]]

    boxes = asyncio.run(boxes_of_kept())
    assert boxes and all(
        box["counts"] and box["detector"] == "anime-head" and box["label"] == "person" for box in boxes
    )
    reviewed.config_path.write_text(
        reviewed.config_path.read_text() + "filter:\n  detectors: [{name: anime, confidence: 0.5}]\n"
    )
    assert not any(box["counts"] for box in asyncio.run(boxes_of_kept()))


def test_stats_do_not_call_frames_pending_when_the_filter_was_off(project: Project) -> None:
    for i in range(3):
        save_frame(project.frames / f"{i}.jpg", (64, 64), seed=i)
    project.write_config(person_filter=True)
    assert project.cli("--skip-filter", "--skip-caption") == 0
    with State.open(project.config.state_path) as state:
        stats = stats_payload(state, project.config)
    assert stats["filter"] == {NOT_FILTERED: 3}


def test_only_its_own_host_names_are_served_and_writes_come_from_its_page(reviewed: Project) -> None:
    async def check(client: TestClient) -> None:
        rebound = await client.get("/", headers={"Host": "evil.example:8765"})
        assert rebound.status == 421 and TOKEN not in await rebound.text()
        assert (await client.get("/", headers={"Host": "localhost:8765"})).status == 200
        assert (await client.get("/", headers={"Host": "[::1]:8765"})).status == 200
        foreign = await client.post(
            "/api/images/1/caption",
            json={"caption": "Ghibli style, hijacked"},
            headers={TOKEN_HEADER: TOKEN, "Origin": "http://evil.example"},
        )
        assert foreign.status == 403

    with_client(reviewed, check)
    assert "hijacked" not in (row(reviewed, "person1.png")["caption"] or "")


def test_bad_ids_and_captions_are_refused_with_400_or_404(reviewed: Project) -> None:
    async def check(client: TestClient) -> None:
        assert (await client.get("/api/thumbs/99999999999999999999999")).status == 404
        write = {TOKEN_HEADER: TOKEN}
        for caption in (["a", "list"], 42, "x " * 600):
            answer = await client.post("/api/images/1/caption", json={"caption": caption}, headers=write)
            assert answer.status == 400, caption

    with_client(reviewed, check)


def test_the_report_survives_a_caption_that_looks_like_html(reviewed: Project) -> None:
    with State.open(reviewed.config.state_path) as state:
        state.review.edit_caption(1, "Ghibli style, <!--<script> a girl </script>")
    target = reviewed.root / "shared"
    assert reviewed.cli("report", "--to", str(target)) == 0
    html = (target / "index.html").read_text(encoding="utf-8")
    embedded = html.split("window.REPORT = ", 1)[1].split(";</script>", 1)[0]
    assert "<" not in embedded
    items = [item for page in (target / "data").iterdir() for item in report_page(page)]  # each without a "<"
    assert any("<!--<script>" in (item["caption"]["text"] or "") for item in items)


def test_a_server_on_every_interface_answers_to_this_machine_s_names() -> None:
    assert {"127.0.0.1", "localhost", "[::1]", socket.gethostname()} <= served_names("0.0.0.0")
    assert served_names("127.0.0.1") == {"127.0.0.1", "localhost", "[::1]"}
    assert "[fd00::5]" in served_names("fd00::5")


@pytest.fixture
def many(project: Project) -> Project:
    """300 synthetic frames: every fifth (2, 7, 12, …) rejected; captions name two of 15 words."""
    project.write_config()
    build_review_state(project.config.state_path, 300)
    return project


def test_search_filters_sort_by_doubt_and_go_to(many: Project) -> None:
    async def scenario(client: TestClient) -> None:
        async def get(path: str) -> dict:
            answer = await client.get(path)
            assert answer.status == 200, await answer.text()
            return await answer.json()

        found = await get('/api/images?tab=kept&q="frame 13 "&limit=200')
        assert [item["number"] for item in found["items"]] == [13]  # a phrase, not "frame 130"
        words = await get("/api/images?tab=kept&q=lantern%20bicycle&limit=200")
        assert words["total"] > 0 and all(
            "lantern" in i["caption"]["text"] and "bicycle" in i["caption"]["text"] for i in words["items"]
        )
        by_model = await get("/api/images?tab=kept&model=gemini-flash-lite-latest&key=key%232&limit=200")
        assert by_model["total"] > 0 and {(i["caption"]["model"], i["caption"]["key"]) for i in by_model["items"]} == {
            ("gemini-flash-lite-latest", "key#2")
        }
        dark = await get("/api/images?tab=rejected&reason=dark&limit=200")
        assert dark["total"] > 0 and {i["filter"]["reason"] for i in dark["items"]} == {"dark"}

        doubt = await get("/api/images?tab=rejected&sort=doubt&limit=200")
        scores = [i["scores"]["yolo"] for i in doubt["items"]]
        assert scores == sorted(scores, reverse=True)  # the strongest person evidence first
        kept = await get("/api/images?tab=kept&sort=doubt&limit=200")
        assert [i["scores"]["yolo"] for i in kept["items"]] == sorted(i["scores"]["yolo"] for i in kept["items"])

        third = doubt["items"][3]["number"]
        assert (await get(f"/api/position?tab=rejected&sort=doubt&number={third}"))["index"] == 3
        assert (await get("/api/position?tab=kept&number=4"))["index"] == 2  # 1, 3, 4: frame 2 is rejected
        assert (await get("/api/position?tab=kept&number=2"))["index"] is None
        assert (await client.get("/api/images?tab=kept&sort=sideways")).status == 400
        facets = await get("/api/facets")
        assert facets["reason"] == ["blurry", "dark", "no_person"] and facets["detector"] == ["yolo"]

    with_client(many, scenario)


def test_bulk_reject_and_undo(many: Project) -> None:
    async def scenario(client: TestClient) -> None:
        write = {TOKEN_HEADER: TOKEN}
        ids = [i["id"] for i in (await (await client.get("/api/images?tab=kept&limit=10")).json())["items"]]
        assert (await client.post("/api/decisions", json={"ids": ids, "decision": "reject"})).status == 403
        bad = await client.post("/api/decisions", json={"ids": "all", "decision": "reject"}, headers=write)
        assert bad.status == 400
        answer = await (
            await client.post("/api/decisions", json={"ids": ids, "decision": "reject"}, headers=write)
        ).json()
        assert {i["filter"]["status"] for i in answer["items"]} == {"rejected"} and len(answer["items"]) == 10
        assert (await (await client.get("/api/images?tab=kept")).json())["total"] == 240 - 10
        undone = await (await client.post("/api/undo", json={"undo": answer["undo"]}, headers=write)).json()
        assert {(i["filter"]["status"], i["filter"]["override"]) for i in undone["items"]} == {("kept", None)}
        assert (await client.post("/api/undo", json={"undo": answer["undo"]}, headers=write)).status == 404

    with_client(many, scenario)


def test_stats_are_computed_off_the_loop_and_marked_stale_after_a_change(many: Project) -> None:
    async def scenario(client: TestClient) -> None:
        first = await (await client.get("/api/stats")).json()
        assert first["fresh"] is True and first["tabs"]["kept"] == 240  # the first answer waits for them
        item = (await (await client.get("/api/images?tab=kept&limit=1")).json())["items"][0]
        flip = {"decision": "reject"}
        await client.post(f"/api/images/{item['id']}/decision", json=flip, headers={TOKEN_HEADER: TOKEN})
        stale = await (await client.get("/api/stats")).json()
        assert stale["fresh"] is False and stale["tabs"]["kept"] == 240  # answered at once, from before
        assert client.app is not None
        await client.app[STATS_KEY].settled()  # the recomputation the stale answer started
        figures = await (await client.get("/api/stats")).json()
        assert figures["fresh"] and figures["tabs"]["kept"] == 239

    with_client(many, scenario)


def test_a_busy_port_is_one_line_and_exit_2(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    save_frame(project.frames / "a.jpg", (64, 64))
    project.write_config()
    assert project.cli("--skip-caption") == 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        capsys.readouterr()
        assert project.cli("review", "--port", str(port)) == 2
    err = capsys.readouterr().err
    assert err == f"error: port {port} is in use (another review page?): --port 0 picks a free one\n"


def caption_by(model: str, image: str) -> str:
    return f"Ghibli style, a girl with a red umbrella waits at the {model} tram stop in the rain {image[:8]}"


def test_caption_again_goes_to_another_model_and_never_replaces_a_hand_edit(project: Project) -> None:
    make_frames(project, 4)
    write_env(project, GEMINI_API_KEY_1="k1")
    clock = VirtualClock()
    limits = {"m1": ModelLimits(rpm=60), "m2": ModelLimits(rpm=60)}
    fake = FakeGemini(clock, {"k1": "p"}, limits, captions=caption_by)
    first: dict[int, str] = {}  # the model that captioned frames 1 and 3 in the run

    async def scenario() -> None:
        async with serving(fake):
            write_caption_config(
                project, fake.base_url, [f"{{name: {m}, rpm: 60, rpd: 100, tpm: 10000}}" for m in limits]
            )
            await run_pipeline(project, clock)  # m1 captions all four
            config = load_config(project.config_path)
            ids = {row(project, f"frame{n}.png")["number"]: row(project, f"frame{n}.png")["id"] for n in range(1, 5)}
            with State.open(config.state_path) as state:
                state.review.edit_caption(ids[2], "Ghibli style, my own words")
            before = len(fake.successes())
            first.update({n: row(project, f"frame{n}.png")["caption_model"] for n in (1, 3)})
            async with TestClient(TestServer(make_app(config, token=TOKEN, clock=clock))) as client:
                headers = {TOKEN_HEADER: TOKEN}
                sent = await client.post("/api/recaption", json={"ids": [ids[1], ids[2], ids[3]]}, headers=headers)
                answer = await sent.json()
                assert (answer["sent"], answer["edited"], answer["no_other_model"]) == (2, 1, 0)
                assert {item["caption"]["status"] for item in answer["items"] if item["id"] != ids[2]} == {"pending"}
                while (await (await client.get("/api/recaption")).json())["running"]:
                    await clock.sleep(1.0)
                again = await client.post("/api/recaption", json={"ids": [ids[1]]}, headers=headers)
                assert (await again.json())["no_other_model"] == 1  # m1 and m2 have both captioned it
            asked = fake.successes()[before:]
            other = {"m1": "m2", "m2": "m1"}
            assert sorted(seen.model for seen in asked) == sorted(other[first[n]] for n in (1, 3))  # one each

    run_virtual(scenario())
    texts = {n: row(project, f"frame{n}.png") for n in range(1, 5)}
    for n in (1, 3):
        model = texts[n]["caption_model"]
        assert model != first[n] and f"at the {model} tram" in texts[n]["caption"], texts[n]
        assert texts[n]["caption_status"] == "done" and json.loads(texts[n]["caption_sent_back"]) == [first[n]]
    assert texts[2]["caption"] == "Ghibli style, my own words" and texts[2]["caption_edited"] == 1
    exported = [json.loads(line)["text"] for line in (project.root / "out" / "train" / "metadata.jsonl").open()]
    assert f"at the {first[1]} tram" in exported[0]  # the dataset changes at the next export, not before


def test_frames_sent_back_during_a_pass_go_in_the_next_one(project: Project) -> None:
    make_frames(project, 5)
    write_env(project, GEMINI_API_KEY_1="k1")
    clock = VirtualClock()
    limits = {"m1": ModelLimits(rpm=60), "m2": ModelLimits(rpm=60)}
    fake = FakeGemini(clock, {"k1": "p"}, limits, captions=caption_by, latency=lambda: 2.0)

    async def scenario() -> None:
        async with serving(fake):
            write_caption_config(
                project, fake.base_url, [f"{{name: {m}, rpm: 60, rpd: 100, tpm: 10000}}" for m in limits]
            )
            await run_pipeline(project, clock, limit=4)  # frame 5 is not captioned
            config = load_config(project.config_path)
            ids = {n: row(project, f"frame{n}.png")["id"] for n in range(1, 6)}
            before = len(fake.successes())
            async with TestClient(TestServer(make_app(config, token=TOKEN, clock=clock))) as client:
                headers = {TOKEN_HEADER: TOKEN}
                first = await (await client.post("/api/recaption", json={"ids": [ids[1]]}, headers=headers)).json()
                later = await client.post("/api/recaption", json={"ids": [ids[3], ids[5]]}, headers=headers)
                assert (first["sent"], (await later.json())["sent"], (await later.json())["uncaptioned"]) == (1, 1, 1)
                status = await (await client.get("/api/recaption")).json()
                assert status["running"] and status["waiting"] == 2
                while (await (await client.get("/api/recaption")).json())["running"]:
                    await clock.sleep(1.0)
                status = await (await client.get("/api/recaption")).json()
                assert status["waiting"] == 0 and status["last"].startswith("done 1")  # the second pass: frame 3
            assert len(fake.successes()) - before == 2

    run_virtual(scenario())
    assert all(json.loads(row(project, f"frame{n}.png")["caption_sent_back"] or "[]") for n in (1, 3))
    assert row(project, "frame5.png")["caption_sent_back"] is None


def test_caption_again_without_keys_is_one_line(reviewed: Project) -> None:
    async def scenario(client: TestClient) -> None:
        answer = await client.post("/api/recaption", json={"ids": [1]}, headers={TOKEN_HEADER: TOKEN})
        assert answer.status == 400 and (await answer.text()).startswith("no API keys: set GEMINI_API_KEY_1")

    with_client(reviewed, scenario)


def test_the_side_panel_offers_phrases_in_most_captions_for_the_trigger(project: Project) -> None:
    project.write_config()
    build_review_state(project.config.state_path, 30)
    with sqlite3.connect(project.root / "work" / "state.sqlite") as db:
        db.execute("UPDATE images SET caption = caption || ', soft watercolor background' WHERE number <= 26")
    with State.open(project.config.state_path, readonly=True) as state:
        offered = stats_payload(state, project.config)["identity_phrases"]
    assert [(phrase, round(share, 2)) for phrase, share in offered] == [("soft watercolor background", 0.87)]
