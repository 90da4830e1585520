"""End to end in a real headless browser: flip a rejected frame to kept, edit a caption, and find
both in the state and the re-exported metadata.jsonl. Also saves a 1280x800 screenshot of the page
to the work dir. Skips, saying why, when Chromium or Playwright is missing."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from aiohttp import web
from caption_harness import write_caption_config, write_env
from conftest import Project, make_frames, scene_image
from fake_gemini import FakeGemini, ModelLimits
from review_rows import build_review_state
from test_filter import StubDetector, run_sync
from test_review import caption_by
from thread_server import serving_in_thread

from ghibli_async.clock import SystemClock
from ghibli_async.config import load_config
from ghibli_async.review import make_app
from ghibli_async.state import State

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (apt-get install chromium)")


@contextmanager
def review_server(project: Project) -> Iterator[str]:
    async def start() -> web.AppRunner:
        runner = web.AppRunner(make_app(load_config(project.config_path)), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return runner

    with serving_in_thread(start) as runner:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/"


def thirty_frames(project: Project) -> None:
    for i in range(1, 25):
        scene_image(i, person=True).save(project.frames / f"scene{i:02d}.png", compress_level=1)
    for i in range(1, 7):
        scene_image(100 + i).save(project.frames / f"empty{i}.png", compress_level=1)
    project.write_config("resize:\n  size: 256\n", person_filter=True)
    run_sync(project, StubDetector())
    with State.open(project.config.state_path) as state:
        for number in range(1, 25):
            text = f"Ghibli style a girl in a straw hat walks along a quiet country road at dusk, frame {number}"
            state.results.record_caption(number, text, model="gemini-flash-latest", key_label=f"key#{number % 3 + 1}")


def test_flip_and_edit_in_the_browser(project: Project) -> None:
    thirty_frames(project)
    with review_server(project) as url, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(url)
        page.wait_for_selector(".tile img")
        page.wait_for_function(  # the thumbnails on screen have loaded (the rest load lazily)
            "[...document.querySelectorAll('.pic img')].slice(0, 8).every(i => i.complete && i.naturalWidth > 0)"
        )
        page.screenshot(path=str(project.root / "work" / "review-page.png"))

        page.click("button[data-tab=rejected]")
        page.wait_for_selector(".tile .badge.rejected")
        page.locator(".tile", has_text="empty1.png").click()
        page.keyboard.press("x")
        page.wait_for_selector("#toast.show")

        page.click("button[data-tab=kept]")
        tile = page.locator(".tile", has_text="3.jpg").first
        tile.click()
        page.keyboard.press("e")
        page.fill(".tile.selected textarea", "Ghibli style two children share a bowl of ramen")
        page.keyboard.press("Enter")
        page.wait_for_selector(".tile.selected .row >> text=edited")
        browser.close()

    with sqlite3.connect(project.root / "work" / "state.sqlite") as db:
        flipped = db.execute("SELECT filter_status FROM images WHERE source_path LIKE '%/empty1.png'").fetchone()
        edited = db.execute("SELECT caption, caption_edited FROM images WHERE number = 3").fetchone()
    assert flipped == ("kept",)
    assert edited == ("Ghibli style two children share a bowl of ramen", 1)
    assert project.cli("export") == 0
    lines = [json.loads(x) for x in (project.root / "out" / "train" / "metadata.jsonl").read_text().splitlines()]
    assert {"file_name": "3.jpg", "text": "Ghibli style two children share a bowl of ramen"} in lines


def test_report_file_opens_without_a_server(project: Project) -> None:
    thirty_frames(project)
    assert project.cli("report", "--to", str(project.root / "report")) == 0
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto((project.root / "report" / "index.html").as_uri())
        page.wait_for_selector(".tile img")
        assert page.locator(".tile").count() == 24
        assert "24" in page.locator("button[data-tab=kept]").inner_text()
        assert page.locator(".tile button").count() == 0  # no keep / reject that would do nothing
        browser.close()


FRAMES = 20_000
MAX_TILES = 200  # what a tall window shows, with its buffer rows: the page never holds more


def launch(playwright):  # noqa: ANN001, ANN201 - Playwright's own types
    return playwright.chromium.launch(
        executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
    )


def test_twenty_thousand_frames_in_a_virtual_grid(project: Project) -> None:
    """Scroll to the end with a bounded number of tiles; go to frame 19,000 and flip it (only its
    tile is redrawn); search captions; sort by doubt; reject a shift-selected range, then undo."""
    project.write_config()
    build_review_state(project.config.state_path, FRAMES)
    state_db = project.config.state_path
    with review_server(project) as url, sync_api.sync_playwright() as playwright:
        browser = launch(playwright)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        page.wait_for_selector(".tile[data-id]")
        most = 0
        height = page.evaluate("document.body.scrollHeight")
        for y in range(0, height + height // 40, height // 40):
            page.evaluate(f"window.scrollTo(0, {y})")
            page.wait_for_function("() => new Promise(r => requestAnimationFrame(() => r(true)))")
            most = max(most, page.locator(".tile").count())
        page.wait_for_selector(f".tile[data-position='{FRAMES * 4 // 5 - 1}'][data-id]")  # the last kept frame
        assert 0 < most <= MAX_TILES

        page.fill("#goto", "19000")
        page.press("#goto", "Enter")
        page.wait_for_selector(".tile.selected >> text=19000.jpg")
        page.evaluate("document.querySelectorAll('.tile').forEach(n => n.dataset.before = '1')")
        page.keyboard.press("x")
        page.wait_for_selector(".tile.selected .badge.rejected")
        redrawn = page.evaluate("[...document.querySelectorAll('.tile:not([data-before])')].map(n => n.textContent)")
        assert len(redrawn) == 1 and "19000.jpg" in redrawn[0]
        assert page.locator(".tile[data-before]").count() == page.locator(".tile").count() - 1

        page.fill("#search", "lantern bicycle")
        page.wait_for_function("document.querySelector('#footer').textContent !== '16000 image(s)'")
        page.wait_for_selector(".tile[data-id]")
        captions = page.eval_on_selector_all(".tile[data-id] .caption", "nodes => nodes.map(n => n.textContent)")
        assert captions and all("lantern" in c and "bicycle" in c for c in captions)
        page.fill("#search", "")

        page.click("button[data-tab=rejected]")
        page.select_option("#sort", "doubt")
        with sqlite3.connect(state_db) as db:
            strongest = db.execute(
                "SELECT number FROM images WHERE filter_status = 'rejected' ORDER BY person_score DESC, sort_key"
            ).fetchone()[0]
        page.wait_for_selector(f".tile[data-position='0'] >> text={strongest}.jpg")

        page.select_option("#sort", "natural")
        page.click("button[data-tab=kept]")
        page.wait_for_selector(".tile[data-position='0'] >> text=1.jpg")
        page.click(".tile[data-position='0']")
        page.click(".tile[data-position='5']", modifiers=["Shift"])
        assert page.locator(".tile.picked").count() == 6
        page.click("#reject-picked")
        page.wait_for_selector(".tile[data-position='5'] .badge.rejected")
        with sqlite3.connect(state_db) as db:
            rejected = db.execute("SELECT COUNT(*) FROM images WHERE number <= 8 AND filter_status = 'rejected'")
            assert rejected.fetchone()[0] == 8  # the six picked (1, 3–6, 8) and 2 and 7, rejected before
        page.keyboard.press("u")
        page.wait_for_selector(".tile[data-position='5'] .badge.kept")

        # A selection longer than the pages the page keeps in memory: every frame of it changes.
        page.evaluate("anchor = 0; moveTo(1999, { keepSelection: true })")
        page.click("#reject-picked")
        page.wait_for_selector("#toast.show >> text=2000 rejected")
        with sqlite3.connect(state_db) as db:
            assert (
                db.execute("SELECT COUNT(*) FROM images WHERE number <= 2500 AND filter_status = 'kept'").fetchone()[0]
                == 0
            )
        page.keyboard.press("u")
        page.wait_for_selector("#toast.show >> text=undone (2000)")
        browser.close()
    with sqlite3.connect(state_db) as db:
        states = dict(db.execute("SELECT number, filter_status FROM images WHERE number <= 8 OR number = 19000"))
    on, off = "kept", "rejected"
    assert states == {1: on, 2: off, 3: on, 4: on, 5: on, 6: on, 7: off, 8: on, 19000: off}


def test_caption_doubt_order_reasons_and_marked_words_in_the_browser(project: Project) -> None:
    from ghibli_async.caption.checks import check_caption, doubt

    thirty_frames(project)
    with State.open(project.config.state_path) as state:
        text = "Ghibli style, Satsuki waits at the bus stop in the evening rain with her sister"
        findings = check_caption(text, project.config.caption)
        state.results.record_caption(
            7, text, model="gemma-3-27b-it", key_label="key#1", findings=findings, doubt=doubt(findings)
        )
    with review_server(project) as url, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(url)
        page.wait_for_selector(".tile img")
        page.select_option("#sort", "caption_doubt")
        first = page.locator(".tile").first
        first.locator(".caption mark").wait_for()
        assert "7.jpg" in first.inner_text() and first.locator(".caption mark").inner_text() == "Satsuki"
        assert "a name: Satsuki" in first.locator(".checks").inner_text()
        browser.close()


def test_caption_again_with_another_model_in_the_browser(project: Project) -> None:
    make_frames(project, 6)
    write_env(project, GEMINI_API_KEY_1="k1")
    limits = {"m1": ModelLimits(rpm=600), "m2": ModelLimits(rpm=600)}
    fake = FakeGemini(SystemClock(), {"k1": "p"}, limits, captions=caption_by)
    with fake.serving_in_thread():
        write_caption_config(
            project, fake.base_url, [f"{{name: {m}, rpm: 600, rpd: 1000, tpm: 100000}}" for m in limits]
        )
        assert project.cli("--skip-caption") == 0
        with State.open(project.config.state_path) as state:
            for number in range(1, 7):
                state.results.record_caption(number, caption_by("m1", f"{number:08d}"), model="m1", key_label="key#1")
            edited = next(item for item in state.review.page("kept", offset=0, limit=10)[1] if item.number == 2)
            state.review.edit_caption(edited.image_id, "Ghibli style, my own words")
        with review_server(project) as url, sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(url)
            tile = {n: page.locator(".tile", has_text=f"{n}.jpg").first for n in range(1, 4)}
            tile[1].click()
            tile[3].click(modifiers=["Shift"])  # frames 1 to 3: one of them written by hand
            page.click("#recaption-picked")
            toast = page.locator("#toast", has_text="sent to another model")
            toast.wait_for()
            assert "2 sent to another model (left as they are: 1 written by hand)" in toast.inner_text()
            tile[1].locator(".caption", has_text="at the m2 tram").wait_for()
            tile[3].locator(".caption", has_text="at the m2 tram").wait_for()
            assert "my own words" in tile[2].inner_text() and "edited" in tile[2].inner_text()
            browser.close()
    assert sorted(seen.model for seen in fake.successes()) == ["m2", "m2"]  # two requests, none for the edit
    with State.open(project.config.state_path) as state:
        items = {item.number: item for item in state.review.page("kept", offset=0, limit=10)[1]}
    assert (items[1].model, items[3].model, items[4].model) == ("m2", "m2", "m1")
    assert items[2].caption == "Ghibli style, my own words"
