"""The user's story: a folder of mixed frames in, numbered 512x512 RGB JPEGs out, resumably."""

from __future__ import annotations

import shutil
import sqlite3

import pytest
from conftest import (
    BOTTOM_LEFT,
    BOTTOM_RIGHT,
    TOP_LEFT,
    TOP_RIGHT,
    Project,
    save_frame,
    save_rotated_jpeg,
    save_truncated_jpeg,
)
from PIL import Image

from ghibli_async.config import load_config
from ghibli_async.review import item_json
from ghibli_async.state import State


def close_to(pixel: object, colour: tuple[int, int, int], tolerance: int = 40) -> bool:
    """An RGB(A) pixel, as `getpixel` gives it, within `tolerance` of `colour` on every channel."""
    assert isinstance(pixel, tuple), pixel
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, colour))


def numbers_by_name(project: Project) -> dict[str, int]:
    with sqlite3.connect(project.root / "work" / "state.sqlite") as db:
        rows = db.execute("SELECT source_path, number FROM images WHERE number IS NOT NULL")
        return {path.rsplit("/", 1)[-1]: number for path, number in rows}


@pytest.fixture
def mixed_frames(project: Project) -> Project:
    """About 50 frames as a user's folder holds them, plus one truncated file and one duplicate."""
    frames = project.frames
    for i in range(1, 31):
        save_frame(frames / f"img{i}.jpg", seed=i)
    for i in range(1, 7):
        save_frame(frames / f"wide{i}.png", (1200, 900), seed=100 + i)
    for i in range(1, 5):
        save_frame(frames / f"alpha{i}.png", (800, 800), seed=200 + i, mode="RGBA")
    for i in range(1, 4):
        save_rotated_jpeg(frames / f"rotated{i}.jpg", (800, 1000), seed=300 + i)
    save_frame(frames / "palette.png", (700, 700), seed=400, mode="P")
    save_frame(frames / "grey.png", (700, 700), seed=401, mode="L")
    save_frame(frames / "print.jpg", (900, 900), seed=402, mode="CMYK")
    save_frame(frames / "tiny.png", (300, 300), seed=403)
    save_truncated_jpeg(frames / "truncated.jpg", seed=404)
    shutil.copy(frames / "img1.jpg", frames / "zz_copy_of_img1.jpg")
    (frames / "notes.txt").write_text("not a frame")
    return project


def test_run_makes_numbered_square_rgb_jpegs(mixed_frames: Project, capsys: pytest.CaptureFixture[str]) -> None:
    assert mixed_frames.cli() == 4  # resized; captioning was asked for but has no key
    summary = capsys.readouterr().out

    resized = mixed_frames.resized()
    assert len(resized) == 30 + 6 + 4 + 3 + 3  # all but tiny, truncated and the duplicate
    for img in resized.values():
        assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (512, 512))
    assert "truncated.jpg" in summary and "corrupt image" in summary
    assert "too_small 1" in summary
    assert "tiny.png  [resize] too_small" in summary  # the rejected file is named
    assert "1 exact duplicate" in summary
    assert "captioning needs API keys" in summary


def test_numbers_follow_natural_order_and_duplicates_get_none(mixed_frames: Project) -> None:
    mixed_frames.cli()
    numbers = numbers_by_name(mixed_frames)
    assert numbers["img2.jpg"] < numbers["img10.jpg"] < numbers["img30.jpg"]
    assert "zz_copy_of_img1.jpg" not in numbers
    assert sorted(numbers.values()) == list(range(1, len(numbers) + 1))


def test_exif_rotation_and_transparency_are_applied(mixed_frames: Project) -> None:
    mixed_frames.cli()
    numbers, resized = numbers_by_name(mixed_frames), mixed_frames.resized()

    upright = resized[numbers["rotated1.jpg"]].convert("RGB")
    # Stored on its side, the 800x1000 frame must come out upright and center-cropped to its middle.
    assert close_to(upright.getpixel((100, 100)), TOP_LEFT)
    assert close_to(upright.getpixel((400, 100)), TOP_RIGHT)
    assert close_to(upright.getpixel((100, 400)), BOTTOM_LEFT)
    assert close_to(upright.getpixel((400, 400)), BOTTOM_RIGHT)

    alpha = resized[numbers["alpha1.png"]]
    assert close_to(alpha.getpixel((100, 100)), TOP_LEFT)
    assert close_to(alpha.getpixel((100, 450)), (255, 255, 255), tolerance=8)  # transparent -> white


def test_rerun_does_no_work(mixed_frames: Project, capsys: pytest.CaptureFixture[str]) -> None:
    mixed_frames.cli()
    before = {p.name: p.stat().st_mtime_ns for p in (mixed_frames.root / "work" / "resized").iterdir()}
    capsys.readouterr()

    assert mixed_frames.cli("--skip-caption") == 0
    summary = capsys.readouterr().out

    after = {p.name: p.stat().st_mtime_ns for p in (mixed_frames.root / "work" / "resized").iterdir()}
    assert after == before
    assert "0 new" in summary and "nothing to do" in summary


def test_new_frames_get_the_next_numbers(mixed_frames: Project) -> None:
    mixed_frames.cli()
    first = numbers_by_name(mixed_frames)
    save_frame(mixed_frames.frames / "img0.jpg", seed=999)  # sorts first, but arrives late

    mixed_frames.cli()
    second = numbers_by_name(mixed_frames)
    assert {name: second[name] for name in first} == first
    assert second["img0.jpg"] == max(first.values()) + 1


def test_changed_source_is_resized_again_under_its_number(project: Project) -> None:
    frame = save_frame(project.frames / "a.jpg", seed=1)
    project.cli()
    save_frame(frame, (1000, 1000), seed=2, mode="L")

    project.cli()
    assert numbers_by_name(project) == {"a.jpg": 1}
    pixel = project.resized()[1].getpixel((10, 10))
    assert isinstance(pixel, tuple) and pixel[0] == pixel[1] == pixel[2]  # the grey version replaced the colour one


def test_copies_of_a_changed_file_are_processed_with_its_old_bytes(project: Project) -> None:
    original = save_frame(project.frames / "a.jpg", seed=1)
    for copy in ("b.jpg", "c.jpg"):
        (project.frames / copy).write_bytes(original.read_bytes())
    project.cli("--skip-caption")
    assert numbers_by_name(project) == {"a.jpg": 1}  # b and c are a's byte copies

    save_frame(original, seed=2)  # a changes; b and c still hold the old picture
    project.cli("--skip-caption")
    assert numbers_by_name(project) == {"a.jpg": 1, "b.jpg": 2}  # b carries the old bytes, c stays its copy
    assert len(project.resized()) == 2


def test_deleted_work_file_is_made_again(mixed_frames: Project) -> None:
    mixed_frames.cli()
    (mixed_frames.root / "work" / "resized" / "5.jpg").unlink()

    mixed_frames.cli()
    assert 5 in mixed_frames.resized()


def test_limit_resizes_the_first_frames_only(project: Project) -> None:
    for i in range(1, 11):
        save_frame(project.frames / f"f{i}.jpg", (600, 600), seed=i)

    project.cli("--limit", "3")
    assert sorted(project.resized()) == [1, 2, 3]
    project.cli()
    assert sorted(project.resized()) == list(range(1, 11))


def test_pad_keeps_the_whole_frame_on_the_background(project: Project) -> None:
    save_frame(project.frames / "wide.png", (1000, 500), seed=1)
    project.write_config("resize:\n  fit: pad\n  background: '#000000'\n")

    project.cli()
    img = project.resized()[1]
    assert close_to(img.getpixel((256, 20)), (0, 0, 0), tolerance=8)  # padding band above
    assert close_to(img.getpixel((20, 200)), TOP_LEFT)


def test_small_frames_are_upscaled_when_allowed(project: Project) -> None:
    save_frame(project.frames / "small.png", (300, 300), seed=1)
    project.write_config("resize:\n  allow_upscale: true\n")

    project.cli()
    assert project.resized()[1].size == (512, 512)


def test_jpeg_settings_follow_the_config(project: Project) -> None:
    from PIL import JpegImagePlugin

    save_frame(project.frames / "a.png", seed=1)
    project.write_config("resize:\n  size: 256\n  subsampling: '4:2:0'\n")

    project.cli()
    img = project.resized()[1]
    assert img.size == (256, 256)
    assert JpegImagePlugin.get_sampling(img) == 2  # 4:2:0


def test_default_jpeg_keeps_full_colour_resolution(project: Project) -> None:
    from PIL import JpegImagePlugin

    save_frame(project.frames / "a.png", seed=1)
    project.cli()
    assert JpegImagePlugin.get_sampling(project.resized()[1]) == 0  # 4:4:4


def test_skip_resize_only_scans(project: Project) -> None:
    save_frame(project.frames / "a.jpg", seed=1)
    assert project.cli("--skip-resize") == 0
    assert not (project.root / "work" / "resized").exists()
    assert Image.open(project.frames / "a.jpg").size == (1000, 1000)


def test_a_frame_too_small_comes_back_when_kept_or_when_upscaling_is_allowed(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    save_frame(project.frames / "big.png", (700, 700), seed=1)
    save_frame(project.frames / "tiny.png", (300, 300), seed=2)
    save_frame(project.frames / "small.png", (400, 400), seed=3)
    project.write_config()
    assert project.cli("--skip-caption") == 0
    out = capsys.readouterr().out
    assert "too_small 2" in out and "`keep PATH` brings one back, upscaled if too small" in out
    assert len(project.resized()) == 1

    assert project.cli("keep", str(project.frames / "tiny.png")) == 0
    assert project.cli("--skip-caption") == 0
    out = capsys.readouterr().out
    assert "too_small 1" in out and "override" not in out  # tiny is back (upscaled); small is not
    assert len(project.resized()) == 2 and all(img.size == (512, 512) for img in project.resized().values())

    project.write_config("resize:\n  allow_upscale: true\n")
    assert project.cli("--skip-caption") == 0
    assert "too_small" not in capsys.readouterr().out
    assert len(project.resized()) == 3


def test_the_review_page_shows_a_frame_too_small_as_rejected_with_its_reason(project: Project) -> None:
    save_frame(project.frames / "tiny.png", (300, 300), seed=2)
    project.write_config()
    assert project.cli("--skip-caption") == 0
    config = load_config(project.config_path)
    with State.open(config.state_path, readonly=True) as state:
        total, (item,) = state.review.page("rejected", offset=0, limit=10)
    shown = item_json(item, config)
    assert total == 1 and shown["resize"] == {"status": "rejected", "reason": "too_small"}
