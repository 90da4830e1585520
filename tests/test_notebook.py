"""The library in a real Jupyter kernel (ipykernel, driven by jupyter_client as a notebook front end
drives it), against the fake Gemini server in a thread of the test: what a cell shows, and what the
kernel's own interrupt (the stop button) does to a run."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import Project, clean_env, make_frames
from fake_gemini import FakeGemini, ModelLimits
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager
from virtual_time import SteadyClock


@dataclass
class Cell:
    stdout: str = ""
    stderr: str = ""
    results: list[dict[str, Any]] = field(default_factory=list)  # execute_result / display_data bundles
    error: list[str] | None = None  # the traceback lines the front end shows


@contextmanager
def kernel(cwd: Path) -> Iterator[tuple[KernelManager, BlockingKernelClient]]:
    manager = KernelManager(kernel_name="python3")
    manager.start_kernel(cwd=str(cwd), env=clean_env())
    client = manager.blocking_client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=120)
        yield manager, client
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def execute(client: BlockingKernelClient, code: str, *, meanwhile: Callable[[], None] | None = None) -> Cell:
    """Run one cell and gather what a notebook would show under it."""
    msg_id = client.execute(code)
    if meanwhile is not None:
        meanwhile()
    cell = Cell()
    while True:
        message = client.get_iopub_msg(timeout=120)
        if message["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = message["msg_type"], message["content"]
        if kind == "stream":
            setattr(cell, content["name"], getattr(cell, content["name"]) + content["text"])
        elif kind in ("execute_result", "display_data"):
            cell.results.append(content["data"])
        elif kind == "error":
            cell.error = content["traceback"]
        elif kind == "status" and content["execution_state"] == "idle":
            return cell


def caption_project(project: Project, fake: FakeGemini, frames: int) -> None:
    make_frames(project, frames)
    (project.root / ".env").write_text("GEMINI_API_KEY_1=k1\n")
    project.write_config(
        f"resize:\n  size: 64\ncaption:\n  base_url: {fake.base_url}\n  concurrency: 2\n"
        "  models: [{name: m, rpm: 10000, rpd: 10000, tpm: 100000000}]\n"
    )


def exported(project: Project) -> int:
    return len((project.root / "out" / "train" / "metadata.jsonl").read_text(encoding="utf-8").splitlines())


def test_a_run_in_a_cell_logs_to_stderr_keeps_a_log_file_and_shows_its_summary(project: Project) -> None:
    fake = FakeGemini(SteadyClock(), keys={"k1": "p"}, models={"m": ModelLimits()})
    with fake.serving_in_thread(), kernel(project.root) as (_, client):
        caption_project(project, fake, 12)
        cell = execute(client, "import ghibli_async\nghibli_async.run('config.yaml')")
    assert cell.error is None and cell.stdout == ""  # nothing per request in the notebook's output
    assert "caption_request" not in cell.stderr and "scan_done" in cell.stderr  # info and up, as the CLI
    (shown,) = cell.results
    assert shown["text/html"].startswith("<pre>Summary (") and "Result: done" in shown["text/plain"]
    assert "exported" in shown["text/plain"] and str(project.root / "out" / "train") in shown["text/plain"]
    events = [json.loads(line) for line in (project.root / "work" / "logs" / "run.jsonl").read_text().splitlines()]
    assert {"scan_done", "resize_start", "caption_start"} <= {event["event"] for event in events}


@pytest.mark.parametrize(
    "code",
    [
        "import ghibli_async\nreport = ghibli_async.run('config.yaml')",
        "import ghibli_async\nreport = await ghibli_async.Pipeline(ghibli_async.load_config('config.yaml')).run()",
    ],
    ids=["run", "await"],
)
def test_the_stop_button_stops_a_run_politely_and_the_cell_keeps_its_report(project: Project, code: str) -> None:
    fake = FakeGemini(SteadyClock(), keys={"k1": "p"}, models={"m": ModelLimits()}, latency=lambda: 0.2)
    with fake.serving_in_thread(), kernel(project.root) as (manager, client):
        caption_project(project, fake, 80)

        def press_stop_once_captions_arrive() -> None:
            assert fake.wait_for_successes(4, timeout=120)
            manager.interrupt_kernel()

        stopped = execute(client, code, meanwhile=press_stop_once_captions_arrive)
        after = execute(client, "print(report.end.name, report.outcomes('caption')['done'])")
    seen = f"stopped cell: {stopped.error}, stderr …{stopped.stderr[-1500:]}; next cell: {after}"
    assert stopped.error is None, seen
    end, done = after.stdout.split()
    assert end == "INTERRUPTED" and 0 < int(done) < 80, seen
    assert exported(project) == int(done) == len(fake.successes()), seen  # the requests in flight landed, none lost


def test_a_mistake_in_the_config_is_one_line_in_a_cell(project: Project) -> None:
    project.config_path.write_text("paths:\n  input_dir: nowhere\n", encoding="utf-8")
    with kernel(project.root) as (_, client):
        cell = execute(client, "import ghibli_async\nghibli_async.run('config.yaml')")
    assert cell.error is not None and len(cell.error) == 1
    assert cell.error[0].startswith("UserError: input folder not found") and "paths.input_dir" in cell.error[0]


def test_the_review_page_serves_beside_a_run_from_its_own_cell(project: Project) -> None:
    """Started from a cell it serves from a thread of its own: the kernel stays free, a run in the
    next cell goes on, and the page answers all the while (awaited, it held the kernel)."""
    fake = FakeGemini(SteadyClock(), keys={"k1": "p"}, models={"m": ModelLimits()})
    with fake.serving_in_thread(), kernel(project.root) as (_, client):
        caption_project(project, fake, 6)
        execute(client, "import ghibli_async\nghibli_async.run('config.yaml', limit=2)")
        started = execute(client, "page = ghibli_async.review_page('config.yaml')\npage")
        (shown,) = started.results
        url = shown["text/plain"].split()[2]
        assert captioned(url) == 2
        ran = execute(client, "ghibli_async.run('config.yaml').end.name")
        assert ran.results[0]["text/plain"] == "'DONE'"
        assert captioned(url) == 6  # the page sees the run's work
        stopped = execute(client, "page.stop()")
        assert stopped.error is None
        with pytest.raises(OSError):
            captioned(url)


def captioned(url: str) -> int:
    """Frames the page lists with a caption (read from the state at each request)."""
    with urllib.request.urlopen(f"{url}api/images?tab=kept&limit=100", timeout=30) as answer:
        return sum(1 for item in json.load(answer)["items"] if item["caption"]["text"])


def test_a_run_without_keys_says_so_in_the_cell(project: Project) -> None:
    make_frames(project, 2)
    project.write_config("resize:\n  size: 64\n")
    with kernel(project.root) as (_, client):
        cell = execute(client, "import ghibli_async\nreport = ghibli_async.run('config.yaml')")
    assert cell.error is None and "captioning needs API keys" in cell.stderr
