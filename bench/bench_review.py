"""The review page and `report` at scale, in the real Chromium; writes BENCHMARKS.md.

    python bench/bench_review.py [--frames 50000]

A synthetic state (tests/review_rows.py: every frame numbered, captioned, one in five rejected)
whose resized images are hard links to a few real 512 px JPEGs, so thumbnails cost a real decode
each. Measured: time to the first tiles; a flip (keep/reject) near the start and near the end,
from the key press to the redrawn tile, in the page; the page's DOM node count after scrolling
to the end; the server's RSS; /api/stats and GET / latency while flips arrive; `report` cold (no
thumbnail cached) and warm.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from aiohttp import ClientSession, web  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402
from review_rows import build_review_state  # noqa: E402
from thread_server import serving_in_thread  # noqa: E402

from bench.report import machine, publish  # noqa: E402
from ghibli_async.config import load_config  # noqa: E402
from ghibli_async.review import TOKEN_HEADER, make_app, write_report  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TOKEN = "bench"
# Flips are timed once the tiles on screen have their thumbnails: right after a jump the server is
# still making them (a first flip then took up to 142 ms at 50,000 frames on 2 cores).
THUMBS_LOADED = """[...document.querySelectorAll('.tile img')]
  .filter(img => { const r = img.getBoundingClientRect(); return r.bottom > 0 && r.top < innerHeight; })
  .every(img => img.complete)"""
FLIP_IN_PAGE = """async () => {
  const started = performance.now();
  await flip([itemAt(cursor)]);
  await new Promise(resolve => requestAnimationFrame(() => resolve()));
  return performance.now() - started;
}"""


def make_project(root: Path, frames: int) -> Path:
    config = root / "config.yaml"
    config.write_text("paths: {input_dir: frames, output_dir: out/train, work_dir: work}\n", encoding="utf-8")
    (root / "frames").mkdir()
    build_review_state(root / "work" / "state.sqlite", frames)
    resized = root / "work" / "resized"
    resized.mkdir(parents=True)
    rng = np.random.default_rng(0)
    originals = []
    for n in range(8):  # smooth gradients plus noise: JPEGs of a realistic size (~40 KB)
        base = np.linspace(0, 255, 512, dtype=np.float32)[None, :, None] * rng.uniform(0.3, 1.0, (1, 1, 3))
        pixels = np.clip(base + rng.normal(0, 12, (512, 512, 3)), 0, 255).astype(np.uint8)
        path = root / f"original{n}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        originals.append(path)
    for number in range(1, frames + 1):
        os.link(originals[number % len(originals)], resized / f"{number}.jpg")
    return config


def rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def browser_figures(url: str, frames: int) -> dict[str, float]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        started = time.perf_counter()
        page.goto(url)
        page.wait_for_selector(".tile[data-id]")
        first_tiles = time.perf_counter() - started
        page.wait_for_function(THUMBS_LOADED)
        flips_start = [page.evaluate(FLIP_IN_PAGE) for _ in range(10)]
        page.fill("#goto", str(frames - 1))
        page.press("#goto", "Enter")
        page.wait_for_selector(f".tile.selected >> text={frames - 1}.jpg")
        page.wait_for_function(THUMBS_LOADED)
        flips_end = [page.evaluate(FLIP_IN_PAGE) for _ in range(10)]
        page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
        page.wait_for_timeout(500)
        nodes = page.evaluate("document.getElementsByTagName('*').length")
        tiles = page.locator(".tile").count()
        browser.close()
    return {
        "first_tiles_s": first_tiles,
        "flip_start_ms": statistics.median(flips_start),
        "flip_start_max_ms": max(flips_start),
        "flip_end_ms": statistics.median(flips_end),
        "flip_end_max_ms": max(flips_end),
        "dom_nodes": nodes,
        "tiles": tiles,
    }


async def requests_while_flipping(base: str) -> dict[str, float]:
    """50 flips one after another while /api/stats and GET / are asked every 50 ms."""
    latencies: dict[str, list[float]] = {"stats": [], "page": []}
    async with ClientSession() as session:
        page = await (await session.get(f"{base}api/images?tab=kept&limit=50")).json()
        ids = [item["id"] for item in page["items"]]
        done = asyncio.Event()

        async def ask(path: str, name: str) -> None:
            while not done.is_set():
                started = time.perf_counter()
                async with session.get(base + path) as answer:
                    await answer.read()
                latencies[name].append((time.perf_counter() - started) * 1000)
                await asyncio.sleep(0.05)

        askers = [asyncio.create_task(ask("api/stats", "stats")), asyncio.create_task(ask("", "page"))]
        flips = []
        for image_id in ids:
            started = time.perf_counter()
            body = {"decision": "reject"}
            async with session.post(f"{base}api/images/{image_id}/decision", json=body, headers={TOKEN_HEADER: TOKEN}):
                pass
            flips.append((time.perf_counter() - started) * 1000)
        done.set()
        await asyncio.gather(*askers)
    return {
        "stats_median_ms": statistics.median(latencies["stats"]),
        "stats_max_ms": max(latencies["stats"]),
        "page_max_ms": max(latencies["page"]),
        "flip_api_median_ms": statistics.median(flips),
        "flip_api_max_ms": max(flips),
    }


def serve(config_path: Path):  # noqa: ANN201 - a context manager from the tests' helper
    async def start() -> web.AppRunner:
        runner = web.AppRunner(make_app(load_config(config_path), token=TOKEN), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return runner

    return serving_in_thread(start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=50_000)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-review-"))
    try:
        config_path = make_project(root, args.frames)
        config = load_config(config_path)
        with serve(config_path) as runner:
            url = f"http://127.0.0.1:{runner.addresses[0][1]}/"
            page = browser_figures(url, args.frames)
            api = asyncio.run(requests_while_flipping(url))
            server_rss = rss_mb()
        report = {}
        for run in ("cold", "warm"):
            started = time.perf_counter()
            write_report(config, root / "report")
            report[run] = time.perf_counter() - started
        pages = len(list((root / "report" / "data").iterdir()))
        index_kb = (root / "report" / "index.html").stat().st_size / 1024
    finally:
        shutil.rmtree(root, ignore_errors=True)
    threads = threading.active_count()
    flip_start = f"{page['flip_start_ms']:.0f} / {page['flip_start_max_ms']:.0f} ms"
    flip_end = f"{page['flip_end_ms']:.0f} / {page['flip_end_max_ms']:.0f} ms"
    body = f"""Machine: {machine()}; {date.today().isoformat()}; Chromium headless at 1280×900.
`python bench/bench_review.py --frames {args.frames}`: a synthetic state of {args.frames:,} frames (all
captioned, one in five rejected), resized images of 512 px.

| figure | value |
|---|---|
| time to the first tiles (page load, first page of 100) | {page["first_tiles_s"]:.2f} s |
| flip near the start, key to redrawn tile (median / max of 10) | {flip_start} |
| flip near frame {args.frames - 1:,} (median / max of 10) | {flip_end} |
| page DOM nodes after scrolling to the end | {page["dom_nodes"]:,} ({page["tiles"]} tiles) |
| server process RSS (state, page cache, stats) | {server_rss:.0f} MB |
| /api/stats while 50 flips arrive (median / max) | {api["stats_median_ms"]:.0f} / {api["stats_max_ms"]:.0f} ms |
| GET / while flips arrive and stats recompute (max) | {api["page_max_ms"]:.0f} ms |
| flip request alone, server side (median / max) | {api["flip_api_median_ms"]:.1f} / {api["flip_api_max_ms"]:.1f} ms |
| `report` cold ({args.frames:,} thumbnails made, 2 workers) | {report["cold"]:.1f} s |
| `report` warm (thumbnails cached) | {report["warm"]:.1f} s |
| report: index.html / data pages | {index_kb:.0f} KB / {pages} files |

Target: a flip under 100 ms at any depth. Flips are timed once the tiles on screen have their
thumbnails; right after a jump the server is still making them, and a flip then can take longer
(up to 142 ms seen at 50,000 frames). Not shown: thumbnails drawn in the browser (they load
lazily, after the tiles); a real dataset's larger source frames (only the 512 px resized images
are decoded here, as the review page does once they exist); a slower disk. The server and this
script share one process ({threads} threads), so its RSS includes the bench's client."""
    publish(f"Review page at {args.frames:,} frames", body, write=not args.no_write)


if __name__ == "__main__":
    main()
