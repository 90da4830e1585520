"""The command line and library entry points, as a user meets them."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import pytest
from caption_harness import serving
from conftest import Project, clean_env, make_frames, save_frame
from fake_gemini import FakeGemini, ModelLimits
from virtual_time import SteadyClock, VirtualClock, run_virtual

import ghibli_async
from ghibli_async import pipeline as pipeline_module
from ghibli_async.caption.answers import KeyRejected
from ghibli_async.caption.check import check_keys, verdict_of
from ghibli_async.config import ApiKey, CaptionConfig, ModelQuota
from ghibli_async.pipeline import Pipeline, RunReport
from ghibli_async.run_end import RunEnd

T = TypeVar("T")


def test_help_lists_every_command_with_one_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ghibli_async", "--help"], capture_output=True, text=True, check=True, env=clean_env()
    ).stdout
    for command in ("run", "status", "export"):
        assert f"    {command} " in out


def test_status_before_and_after_a_run(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    save_frame(project.frames / "a.jpg", (600, 600))
    assert project.cli("status") == 0
    assert "Nothing processed yet" in capsys.readouterr().out

    project.cli()
    capsys.readouterr()
    assert project.cli("status") == 0
    out = capsys.readouterr().out
    assert "done 1" in out and "Left to do: caption 1" in out


def test_dry_run_writes_nothing(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    for i in range(3):
        save_frame(project.frames / f"{i}.jpg", (600, 600), seed=i)
    assert project.cli("--dry-run") == 0
    assert "3 frames" in capsys.readouterr().out
    assert sorted(p.name for p in project.root.iterdir()) == ["config.yaml", "frames"]


def test_dry_run_says_per_stage_what_the_run_would_do_and_trip_on(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    for i in range(24):
        save_frame(project.frames / f"{i}.jpg", (64, 64), seed=i)
    project.write_config("filter:\n  detectors: [{name: yolo, weights: weights/missing.pt}]\n", person_filter=True)

    assert project.cli("--dry-run", "--limit", "3") == 2  # the real run would stop on the weights
    planned = capsys.readouterr().out
    assert "missing.pt" in planned and "--skip-filter" in planned
    assert "up to 3 (--limit 3 of 24) frames to resize" in planned
    assert "no API keys found" in planned

    assert project.cli("--dry-run", "--skip-filter") == 0
    skipped = capsys.readouterr().out
    assert "filter    off: every frame goes on to resize" in skipped and "up to 24 frames to resize" in skipped
    assert sorted(p.name for p in project.root.iterdir()) == ["config.yaml", "frames"]


def test_offline_weights_error_names_the_way_to_run_without_the_filter(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    save_frame(project.frames / "a.jpg", (64, 64))
    project.write_config("filter:\n  detectors: [{name: yolo, weights: weights/missing.pt}]\n", person_filter=True)
    assert project.cli() == 2
    assert "--skip-filter" in capsys.readouterr().err


def test_options_work_after_the_command_too(project: Project) -> None:
    save_frame(project.frames / "a.jpg", (600, 600))
    assert project.cli("run", "--skip-resize") == 0
    assert not (project.root / "work" / "resized").exists()


def test_json_logs_and_no_key_in_any_output(project: Project) -> None:
    save_frame(project.frames / "a.jpg", (600, 600))
    save_frame(project.frames / "b.jpg", (600, 600), seed=2)
    secret, bad = "fake-key-test-secret-that-must-not-leak-00000", "fake-key-invalid-secret-must-not-leak-0000"
    (project.root / ".env").write_text(f"GEMINI_API_KEY_1={bad}\nGEMINI_API_KEY_2={secret}\n")
    fake = FakeGemini(SteadyClock(), keys={secret: "p"}, models={"m": ModelLimits()})

    with fake.serving_in_thread():
        project.write_config(
            f"caption:\n  base_url: {fake.base_url}\n  models: [{{name: m, rpm: 60, rpd: 100, tpm: 100000}}]\n"
        )
        run = project.subprocess("--log-json")
        out, err = run.communicate(timeout=120)
    assert run.returncode == 0, err
    assert secret not in out + err and bad not in out + err
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert {"scan_done", "resize_start", "caption_start", "key_retired"} <= {event["event"] for event in events}
    assert "key#1" in err  # the invalid key is named by its label only
    for stored in (project.root / "work").rglob("*"):
        if stored.is_file():
            assert secret.encode() not in stored.read_bytes() and bad.encode() not in stored.read_bytes()


def test_library_run_inside_a_running_event_loop(project: Project) -> None:
    """Jupyter runs an event loop; `ghibli_async.run` must still work there."""
    save_frame(project.frames / "a.jpg", (600, 600))

    async def notebook_cell() -> ghibli_async.RunReport:
        return ghibli_async.run(project.config_path)

    report = asyncio.run(notebook_cell())
    assert report.outcomes("resize")["done"] == 1


def test_pipeline_in_async_code(project: Project) -> None:
    save_frame(project.frames / "a.jpg", (600, 600))

    async def app() -> ghibli_async.RunReport:
        return await ghibli_async.Pipeline(ghibli_async.load_config(project.config_path)).run()

    report = asyncio.run(app())
    assert report.outcomes("resize")["done"] == 1 and report.counts.resize == {"done": 1}


def test_second_run_on_the_same_work_dir_is_refused(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    from filelock import FileLock

    save_frame(project.frames / "a.jpg", (600, 600))
    (project.root / "work").mkdir()
    with FileLock(project.root / "work" / ".lock"):
        assert project.cli() == 2
    assert "another ghibli_async run" in capsys.readouterr().err


def test_check_keys_reports_every_pair_and_exit_code(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    (project.root / ".env").write_text("GEMINI_API_KEY_1=good\nGEMINI_API_KEY_2=wrong\n")
    fake = FakeGemini(SteadyClock(), keys={"good": "p"}, models={"m": ModelLimits(), "spent": ModelLimits(rpd=0)})
    with fake.serving_in_thread():
        project.write_config(
            f"caption:\n  base_url: {fake.base_url}\n  models:\n"
            "    - {name: m, rpm: 5, rpd: 5, tpm: 100000}\n"
            "    - {name: spent, rpm: 5, rpd: 5, tpm: 100000}\n"
            "    - {name: gone, rpm: 5, rpd: 5, tpm: 100000}\n"
        )
        assert project.cli("check-keys") == 0
        table = capsys.readouterr().out
        assert len(fake.seen) == 6  # one request per key and model

        (project.root / ".env").write_text("GEMINI_API_KEY_1=wrong\n")
        assert project.cli("check-keys") == 1
    rows = {tuple(line.split()[:3]): line for line in table.splitlines()[1:-1]}
    assert "  ok" in rows[("key#1", "key#1", "m")]
    assert "quota spent" in rows[("key#1", "key#1", "spent")]
    assert "model not found" in rows[("key#1", "key#1", "gone")]
    assert all("invalid key" in rows[("key#2", "key#2", model)] for model in ("m", "spent", "gone"))
    assert "good" not in table and "wrong" not in table


def test_check_keys_names_each_keys_kind_and_what_to_do(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    """Google takes auth keys (AQ.…) and refuses standard ones (AIza…) since 2026: say which is which."""
    (project.root / ".env").write_text("GEMINI_API_KEY_1=AQ.Ab8RN6-fine\nGEMINI_API_KEY_2=AIzaSyOld-standard\n")
    fake = FakeGemini(SteadyClock(), keys={"AQ.Ab8RN6-fine": "p"}, models={"m": ModelLimits()})
    with fake.serving_in_thread():
        project.write_config(
            f"caption:\n  base_url: {fake.base_url}\n  models: [{{name: m, rpm: 5, rpd: 5, tpm: 1000}}]\n"
        )
        assert project.cli("check-keys") == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:-1]}
    assert re.search(r"key#1 .* auth +ok", rows["key#1"])
    assert re.search(r"key#2 .* standard +invalid key +\(Google refuses standard keys .* auth key \(AQ", rows["key#2"])
    assert "AQ.Ab8" not in rows["key#1"] and "AIzaSy" not in rows["key#2"]  # kinds, never the keys


def test_check_keys_without_keys_says_what_to_do(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    assert project.cli("check-keys") == 2
    assert "no API keys" in capsys.readouterr().err


def test_status_shows_quota_use_per_bucket(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    save_frame(project.frames / "a.jpg", (600, 600))
    save_frame(project.frames / "b.jpg", (600, 600), seed=2)
    (project.root / ".env").write_text("GEMINI_API_KEY_1=good\n")
    fake = FakeGemini(SteadyClock(), keys={"good": "p"}, models={"m": ModelLimits()})
    with fake.serving_in_thread():
        project.write_config(
            f"caption:\n  base_url: {fake.base_url}\n  models: [{{name: m, rpm: 60, rpd: 50, tpm: 100000}}]\n"
        )
        project.cli(clock=fake.clock)
    capsys.readouterr()

    project.cli("status", clock=fake.clock)
    out = capsys.readouterr().out
    assert "key#1/m" in out and "2/50" in out
    assert "about 48 more captions today" in out


def test_sdk_base_url_variable_works_when_the_field_is_unset(
    project: Project, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (project.root / ".env").write_text("GEMINI_API_KEY_1=good\n")
    fake = FakeGemini(SteadyClock(), keys={"good": "p"}, models={"m": ModelLimits()})
    with fake.serving_in_thread():
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", fake.base_url)
        project.write_config("caption:\n  models: [{name: m, rpm: 5, rpd: 5, tpm: 100000}]\n")
        assert project.cli("check-keys") == 0
    assert len(fake.seen) == 1


def test_status_shows_cooldowns_and_retired_keys(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    for i in range(3):
        save_frame(project.frames / f"{i}.jpg", (600, 600), seed=i)
    (project.root / ".env").write_text("GEMINI_API_KEY_1=wrong\nGEMINI_API_KEY_2=good\n")
    fake = FakeGemini(SteadyClock(), keys={"good": "p"}, models={"m1": ModelLimits(rpm=1), "m2": ModelLimits()})
    with fake.serving_in_thread():
        project.write_config(
            f"caption:\n  base_url: {fake.base_url}\n  concurrency: 1\n  models:\n"
            "    - {name: m1, rpm: 60, rpd: 50, tpm: 100000}\n"
            "    - {name: m2, rpm: 60, rpd: 50, tpm: 100000}\n"
        )
        assert project.cli(clock=fake.clock) == 0
    capsys.readouterr()

    project.cli("status", clock=fake.clock)
    out = capsys.readouterr().out
    assert "key#1: refused on" in out and "check-keys" in out
    assert re.search(r"key#2/m1 .* cooling until \d\d:\d\d:\d\d", out)
    assert re.search(r"key#1/m1 .* key invalid \(last run\)", out)


def test_status_after_an_invalid_key_a_learned_limit_and_a_skipped_filter(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    for i in range(6):
        save_frame(project.frames / f"{i}.jpg", (600, 600), seed=i)
    (project.root / ".env").write_text("GEMINI_API_KEY_1=wrong\nGEMINI_API_KEY_2=good\n")
    fake = FakeGemini(SteadyClock(), keys={"good": "p"}, models={"m": ModelLimits(rpd=3)})
    with fake.serving_in_thread():
        project.write_config(
            f"caption:\n  base_url: {fake.base_url}\n  models:\n    - {{name: m, rpm: 60, rpd: 50, tpm: 100000}}\n",
            person_filter=True,
        )
        assert project.cli("--skip-filter", clock=fake.clock) == 3  # three captions, then the server's daily limit
    capsys.readouterr()

    assert project.cli("status", clock=fake.clock) == 0
    out = capsys.readouterr().out
    assert re.search(r"key#1/m +0/50 +requests \(table limit\).* key invalid \(last run\)", out)
    assert re.search(r"key#2/m +3/3 +requests \(server limit\).* spent until", out)  # 429s do not count as used
    assert "no bucket can take a request today" in out and "more captions today" not in out
    assert "filter" in out and "off (6 frames not through it)" in out
    assert not re.search(r"filter +6 +pending", out)
    assert "Left to do: caption 3" in out


def test_check_keys_spaces_the_pings_of_one_project_under_its_rpm(project: Project) -> None:
    """Three keys of one project share a 2-per-minute bucket: the check itself must not trip it."""
    clock = VirtualClock()
    fake = FakeGemini(clock, keys={"s1": "p", "s2": "p", "s3": "p"}, models={"m": ModelLimits(rpm=2)})
    keys = [ApiKey(f"key#{n}", f"GEMINI_API_KEY_{n}", f"s{n}", "p") for n in (1, 2, 3)]

    async def check() -> list:
        async with serving(fake):
            caption = CaptionConfig(base_url=fake.base_url, models=[ModelQuota(name="m", rpm=2, rpd=100, tpm=10**6)])
            return await check_keys(caption, keys)

    checks = run_virtual(check())
    assert [check.verdict for check in checks] == ["ok", "ok", "ok"]
    assert [seen.at for seen in fake.seen] == [0.0, 30.0, 60.0]


def test_verbose_prints_debug_lines(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    save_frame(project.frames / "a.jpg", (64, 64))
    assert project.cli("-v", "--skip-caption") == 0
    err = capsys.readouterr().err
    assert "debug" in err and "stage_start" in err


def test_nothing_to_export_is_said_so(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    save_frame(project.frames / "a.jpg", (64, 64))
    assert project.cli("--skip-caption") == 0
    out = capsys.readouterr().out
    assert "nothing to export yet: no image has a caption" in out and "exported           0  images in" not in out


def test_check_keys_shortens_reasons_at_a_word_boundary() -> None:
    reason = "400 INVALID_ARGUMENT: " + "API key not valid please pass a valid API key " * 5
    verdict, detail = verdict_of(KeyRejected(reason))
    assert verdict == "invalid key" and detail.endswith("…") and len(detail) <= 120
    assert detail[:-1] == reason[: len(detail) - 1] and reason[len(detail) - 1] == " "


def test_interrupting_a_notebook_cell_stops_the_run_politely(project: Project) -> None:
    """Jupyter's stop button raises KeyboardInterrupt in the cell: the run in its thread stops as
    the CLI's first Ctrl-C does (the requests in flight land, the export shows them) and the cell
    gets the report."""
    make_frames(project, 60)
    (project.root / ".env").write_text("GEMINI_API_KEY_1=k1\n")
    fake = FakeGemini(SteadyClock(), keys={"k1": "p"}, models={"m": ModelLimits()}, latency=lambda: 0.05)
    with fake.serving_in_thread():
        project.write_config(
            f"resize:\n  size: 64\ncaption:\n  base_url: {fake.base_url}\n  concurrency: 2\n"
            "  models: [{name: m, rpm: 10000, rpd: 10000, tpm: 100000000}]\n"
        )

        async def notebook_cell() -> RunReport:
            return ghibli_async.run(project.config_path)

        cell_thread = threading.get_ident()

        def press_stop_once_captioning_runs() -> None:
            fake.wait_for_successes(1)
            signal.pthread_kill(cell_thread, signal.SIGINT)  # the kernel's SIGINT, taken by the cell's thread

        threading.Thread(target=press_stop_once_captioning_runs, daemon=True).start()
        kernel_loop = asyncio.new_event_loop()  # a kernel's loop: SIGINT raises KeyboardInterrupt in the cell
        report = kernel_loop.run_until_complete(notebook_cell())
        kernel_loop.close()
        sent = len(fake.seen)
    assert report.end == RunEnd.INTERRUPTED
    assert 0 < sent < 60  # stopped part way, and nothing was sent after the cell returned
    exported = (project.root / "out" / "train" / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(exported) == len(fake.successes()) == report.outcomes("caption")["done"]  # none in flight lost


def test_an_interrupt_that_lands_as_the_notebook_run_ends_is_an_interrupt(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stop button pressed just as the run in its thread has ended: the cell sees
    KeyboardInterrupt, never `RuntimeError: Event loop is closed` from cancelling a finished run."""

    class StopPressedAsTheRunEnds(ThreadPoolExecutor):
        """The first job it runs is the run; waiting for it ends in the stop button's interrupt."""

        pressed = False

        def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
            future = super().submit(fn, *args, **kwargs)
            if not self.pressed:
                self.pressed = True
                ended = future.result

                def interrupted(timeout: float | None = None) -> T:
                    ended(timeout)  # the run is over (and whatever its thread does at the end, done)
                    raise KeyboardInterrupt

                future.result = interrupted  # type: ignore[method-assign]
            return future

    class FinishedRun(Pipeline):
        async def run(self, *, limit: int | None = None) -> RunReport:
            return RunReport()

    monkeypatch.setattr(pipeline_module, "ThreadPoolExecutor", StopPressedAsTheRunEnds)
    kernel_loop = asyncio.new_event_loop()

    async def notebook_cell() -> None:
        FinishedRun(project.config).run_sync()

    with pytest.raises(KeyboardInterrupt):
        kernel_loop.run_until_complete(notebook_cell())
    kernel_loop.close()


def test_a_script_without_the_main_guard_is_told_what_to_add(project: Project) -> None:
    for i in range(3):
        save_frame(project.frames / f"{i}.jpg", (600, 600), seed=i)
    script = project.root / "make_dataset.py"
    script.write_text("import ghibli_async\n\nghibli_async.run('config.yaml')\n", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)], cwd=project.root, env=clean_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert 'if __name__ == "__main__":' in done.stderr


def test_a_script_with_the_main_guard_runs(project: Project) -> None:
    save_frame(project.frames / "a.jpg", (600, 600))
    script = project.root / "make_dataset.py"
    script.write_text(
        "import ghibli_async\n\nif __name__ == '__main__':\n    ghibli_async.run('config.yaml')\n", encoding="utf-8"
    )
    done = subprocess.run(
        [sys.executable, str(script)], cwd=project.root, env=clean_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert (project.root / "work" / "resized" / "1.jpg").exists()


def test_status_into_a_closed_pipe_is_quiet(project: Project) -> None:
    """`status | head -1`: the reader leaves early; no BrokenPipe traceback."""
    for i in range(3):
        save_frame(project.frames / f"f{i}.jpg", (64, 64), seed=i)
    assert project.cli("--skip-caption") == 0
    run = project.subprocess("status")
    assert run.stdout is not None and run.stderr is not None
    run.stdout.close()  # before a line is read: every write meets a closed pipe
    err = run.stderr.read()
    assert run.wait(timeout=60) == 141
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_review_started_in_the_background_of_a_script_stops_on_sigterm(project: Project) -> None:
    """A script's background job inherits SIGINT ignored: SIGTERM must still stop the page."""
    save_frame(project.frames / "a.jpg", (64, 64))
    assert project.cli("--skip-caption") == 0
    review = project.subprocess(
        "review", "--port", "0", preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)
    )
    assert review.stdout is not None
    assert review.stdout.readline().startswith("Review page: http://")
    review.send_signal(signal.SIGTERM)
    out, err = review.communicate(timeout=30)
    assert review.returncode == 143 and "Traceback" not in err, err
    assert "Review page stopped" in out
