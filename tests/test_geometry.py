"""Where a frame is cut and what size it becomes: person-aware squares, aspect-ratio buckets, bars
trimmed, and a change of geometry that re-resizes and re-exports without a caption request."""

from __future__ import annotations

import asyncio
import json
import math
import random

import numpy as np
import pytest
from caption_harness import run_pipeline, serving, write_caption_config, write_env
from conftest import PERSON_MARK, Project
from fake_gemini import FakeGemini, ModelLimits
from PIL import Image
from test_filter import StubDetector
from virtual_time import VirtualClock, run_virtual

from ghibli_async.config import load_config
from ghibli_async.geometry import BUCKET_STEP, bucket_size, crop_window
from ghibli_async.pipeline import Pipeline
from ghibli_async.review import item_json
from ghibli_async.state import State


@pytest.mark.parametrize(
    ("frame", "side", "bucket"),
    [
        ((1920, 1080), 1024, (1344, 768)),  # 16:9 -> 1.75, within one step
        ((1080, 1920), 1024, (768, 1344)),
        ((800, 450), 1024, (768, 448)),  # smaller than the bucket: never upscaled
        ((1000, 1000), 1024, (960, 960)),
        ((4000, 3000), 1024, (1152, 896)),
        ((1920, 1080), 512, (640, 384)),
        ((1920, 800), 1024, (1536, 640)),  # 2.4:1 scope, its bars trimmed: exactly
    ],
)
def test_a_bucket_keeps_the_aspect_within_a_step_and_never_upscales(frame, side, bucket) -> None:
    width, height = frame
    found = bucket_size(width, height, side)
    assert found == bucket
    w, h = found
    assert w % BUCKET_STEP == 0 and h % BUCKET_STEP == 0 and w * h <= side * side and w <= width and h <= height
    assert abs(math.log(w / h / (width / height))) < math.log(1 + BUCKET_STEP / min(w, h))


def test_the_square_keeps_the_person_at_the_edge_and_is_centred_without_one() -> None:
    assert crop_window(1920, 1080, 1.0, [(1700, 300, 1900, 900)]) == (820.0, 0.0, 1900.0, 1080.0)
    assert crop_window(1920, 1080, 1.0) == (420.0, 0.0, 1500.0, 1080.0)
    assert crop_window(1080, 1920, 1.0, [(100, 0, 300, 200)]) == (0.0, 0.0, 1080.0, 1080.0)  # slides up
    two_sides = crop_window(1920, 1080, 1.0, [(0, 0, 100, 100), (1700, 0, 1920, 1080)])
    assert two_sides[2] == 1920.0  # the bigger figure wins when both cannot fit


def film_frame(size: tuple[int, int], seed: int, person_at: tuple[int, int, int, int] | None = None) -> Image.Image:
    """A frame of noise and shapes (never black, never magenta), with a magenta figure for the stub detector."""
    rng = random.Random(seed)
    img = Image.effect_noise(size, 60).convert("RGB")
    for _ in range(5):
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        img.paste((rng.randrange(120, 256), rng.randrange(120, 256), 90), (x, y, x + size[0] // 4, y + size[1] // 4))
    if person_at:
        img.paste(PERSON_MARK, person_at)
    return img


def magenta_share(img: Image.Image) -> float:
    pixels = np.asarray(img.convert("RGB"), dtype=int)
    return float(np.all(np.abs(pixels - PERSON_MARK) < 60, axis=-1).mean())


def test_a_person_at_the_right_edge_stays_whole_in_the_square(project: Project) -> None:
    film_frame((1920, 1080), 1, person_at=(1700, 300, 1900, 900)).save(project.frames / "edge.png")
    shares, drawn = {}, {}
    for fit in ("person_crop", "center_crop"):
        project.write_config(f"resize:\n  size: 256\n  fit: {fit}\n", person_filter=True)
        config = load_config(project.config_path)
        asyncio.run(Pipeline(config, keys=[], detectors=[StubDetector()]).run())
        shares[fit] = magenta_share(project.resized()[1])
        with State.open(config.state_path, readonly=True) as state:
            _, (item,) = state.review.page("kept", offset=0, limit=1)
        drawn[fit] = [(b["x1"], b["y1"], b["x2"], b["y2"]) for b in item_json(item, config)["boxes"]]
    # The review page draws the box where it is in the resized square (its thumbnail).
    assert drawn["person_crop"] == [pytest.approx((880 / 1080, 300 / 1080, 1.0, 900 / 1080), abs=0.01)]
    assert drawn["center_crop"] == []  # outside the middle square: nothing to draw
    # The figure is 200 x 600 of a 1080 x 1080 window: about 10 % of the square, whole.
    assert shares["person_crop"] == pytest.approx(200 * 600 / 1080**2, rel=0.1)
    assert shares["center_crop"] == 0.0  # the middle square cut the figure away


def test_buckets_keep_each_frames_aspect_and_lose_the_bars(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    film_frame((1920, 1080), 1).save(project.frames / "a_wide.png")
    film_frame((800, 450), 2).save(project.frames / "b_small.png")
    letterboxed = Image.new("RGB", (1920, 1080))
    letterboxed.paste(film_frame((1920, 800), 3), (0, 140))  # 2.4:1 scope in a 16:9 frame
    letterboxed.save(project.frames / "c_scope.png")
    project.write_config("resize:\n  size: 1024\n  fit: bucket\n")

    report = asyncio.run(Pipeline(load_config(project.config_path), keys=[]).run())

    assert report.stages["resize"].line == "done 3; buckets: 768×448 1, 1344×768 1, 1536×640 1"
    resized = project.resized()
    assert [resized[n].size for n in (1, 2, 3)] == [(1344, 768), (768, 448), (1536, 640)]
    top_row = np.asarray(resized[3].convert("L"))[0]
    assert top_row.mean() > 40  # no black bar left
    capsys.readouterr()
    assert project.cli("status") == 0
    assert "buckets            3  768×448 1, 1344×768 1, 1536×640 1" in capsys.readouterr().out


def test_another_geometry_re_resizes_and_re_exports_without_a_caption_request(project: Project) -> None:
    for i in range(4):
        film_frame((960, 540), i).save(project.frames / f"f{i}.png")
    write_env(project, GEMINI_API_KEY_1="k1")
    clock = VirtualClock()
    fake = FakeGemini(clock, {"k1": "p"}, {"m": ModelLimits()})
    model = ["{name: m, rpm: 600, rpd: 1000, tpm: 1000000}"]

    def run(resize: str) -> list[dict]:
        async def scenario() -> None:
            async with serving(fake):
                write_caption_config(project, fake.base_url, model)
                project.config_path.write_text(project.config_path.read_text().replace("resize:\n  size: 64\n", resize))
                await run_pipeline(project, clock)

        run_virtual(scenario())
        lines = (project.root / "out" / "train" / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines]

    first = run("resize:\n  size: 256\n")
    assert len(fake.seen) == 4 and {img.size for img in project.resized().values()} == {(256, 256)}
    second = run("resize:\n  size: 512\n  fit: bucket\n")
    assert len(fake.seen) == 4, "a caption was asked for again"
    assert second == first  # the same rows, the same captions
    sizes = {Image.open(project.root / "out" / "train" / row["file_name"]).size for row in second}
    assert sizes == {(640, 384)}  # 960 x 540 in a 512² bucket: 16:9 within a step
