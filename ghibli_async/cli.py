"""Command line: parse, load the config, call the pipeline, print the summary.

Errors the user can fix print as one line on stderr with exit code 2; Ctrl-C exits 130 and the
next run continues where this one stopped. A run exits with its `RunEnd`: 0 done, 1 failed,
3 waiting for quota, 4 no usable key or model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from ghibli_async.caption.calibrate import calibrate
from ghibli_async.caption.check import check_keys, format_checks
from ghibli_async.caption_report import caption_rows, format_caption_report
from ghibli_async.clock import Clock, SystemClock
from ghibli_async.config import (
    Config,
    load_caption_keys,
    load_config,
    required_caption_keys,
    with_overrides,
    with_stages,
)
from ghibli_async.errors import MachineError, UserError
from ghibli_async.logs import configure_logging, log_file
from ghibli_async.pipeline import (
    GRACE_S,
    STAGES,
    Pipeline,
    exclusive,
    export_only,
    refuse_a_lost_state,
    retry_failed,
    set_override,
)
from ghibli_async.plan import plan_run
from ghibli_async.report import filter_row_json, format_filter_report, format_service_summary, format_status
from ghibli_async.restore import restore_state
from ghibli_async.review import serve, write_report
from ghibli_async.run_end import RunEnd
from ghibli_async.service import Service
from ghibli_async.stages.export import exported_count
from ghibli_async.state import State
from ghibli_async.workdir import LOG_FILE, REPORT

T = TypeVar("T")

COMMANDS = {
    "run": "scan, resize, caption and export the frames (the default command)",
    "status": "show counts per stage and status, today's quota use per bucket, and what is left",
    "export": "rewrite the output folder (images + metadata.jsonl) from the state",
    "check-keys": "send one cheap request per key and model; exit 0 if at least one pair works",
    "calibrate": "caption a sample one frame per request and k per request on one model; compare the captions",
    "filter-report": "show the filter's decisions: counts per reason, or one JSON line per frame (--json)",
    "caption-report": "show what the caption checks found, per check and model, or one JSON line per frame (--json)",
    "keep": "keep these frames whatever the filter says (the next run honours it)",
    "reject": "reject these frames whatever the filter says (they are never deleted)",
    "retry": "put the frames that failed (in one stage, or all) back in the queue for the next run",
    "review": "serve a local page to look through the dataset, flip decisions and fix captions",
    "report": "write the review page as a read-only folder (index.html + thumbnails) to share",
    "restore": "rebuild a lost or damaged state from the exported dataset (no caption is paid for again)",
}


RETRY_STAGES = tuple(stage.name for stage in STAGES if stage.status_column)  # filter, resize, caption


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ghibli_async",
        description="Turn a folder of film frames into a captioned LoRA dataset (Hugging Face imagefolder).",
    )
    _add_options(parser, run_options=True, defaults=True)
    commands = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    for name, summary in COMMANDS.items():
        command = commands.add_parser(name, help=summary, description=summary)
        # Options may come before or after the command; SUPPRESS keeps a value given before it.
        _add_options(command, run_options=name == "run", defaults=False)
        if name in ("filter-report", "caption-report"):
            command.add_argument("--json", action="store_true", help="one JSON object per frame, for scripts")
        if name == "review":
            command.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
            command.add_argument("--port", type=int, default=8765, help="port (0: any free one)")
            command.add_argument("--open", action="store_true", help="open the page in the browser")
        if name == "report":
            command.add_argument("--to", type=Path, default=None, help="folder to write (default: WORK_DIR/report)")
        if name == "retry":
            command.add_argument(
                "--stage", choices=RETRY_STAGES, action="append", help="only this stage (repeatable; default: all)"
            )
        if name == "calibrate":
            command.add_argument("--model", default=None, help="the model to measure (default: the first packed one)")
            command.add_argument(
                "--per-request",
                type=_positive_int,
                default=None,
                metavar="K",
                help="frames per request to compare with one (default: the model's images_per_request, else 4)",
            )
            command.add_argument(
                "--sample", type=_positive_int, default=20, metavar="N", help="frames to caption each way (default 20)"
            )
        if name in ("keep", "reject"):
            command.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="source frame files")
    return parser


def _add_options(parser: argparse.ArgumentParser, *, run_options: bool, defaults: bool) -> None:
    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "--config", type=Path, default=default(Path("config.yaml")), help="YAML config (default: config.yaml)"
    )
    parser.add_argument("--work-dir", type=Path, default=default(None), help="override paths.work_dir")
    parser.add_argument("--output", type=Path, default=default(None), help="override paths.output_dir")
    parser.add_argument("--log-json", action="store_true", default=default(False), help="log JSON lines")
    parser.add_argument("-v", "--verbose", action="store_true", default=default(False), help="debug logs")
    if not run_options:
        return
    parser.add_argument("--input", type=Path, default=default(None), help="override paths.input_dir")
    parser.add_argument(
        "--limit", type=_positive_int, default=default(None), metavar="N", help="process at most N images per stage"
    )
    for stage in STAGES:  # --skip-extract, --skip-filter, …: one run without that stage
        if stage.skip:
            parser.add_argument(
                f"--skip-{stage.name}", action="store_true", default=default(False), help=f"do not {stage.skip}"
            )
    parser.add_argument(
        "--dry-run", action="store_true", default=default(False), help="say what would be done, write nothing"
    )
    parser.add_argument(
        "--wait",
        action="store_true",
        default=default(False),
        help="when every quota is spent, sleep until it resets and go on; exit when all is done",
    )
    parser.add_argument(
        "--watch",
        action="store_true",
        default=default(False),
        help="keep running (implies --wait): take frames and videos that appear in the input folder",
    )
    parser.add_argument(
        "--poll",
        action="store_true",
        default=default(False),
        help="with --watch: look for new files by polling (network drives, some Docker volumes)",
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


_terminated = threading.Event()


def _stop_as_for_ctrl_c(signum: int, frame: object) -> None:
    """SIGTERM (`kill PID`, `docker stop`, systemd) stops the run the way Ctrl-C does: as a SIGINT,
    which asyncio turns into a cancelled run that closes the state, the pool and the lock."""
    _terminated.set()
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # a background job of a script: SIGINT is ignored
        raise KeyboardInterrupt
    signal.raise_signal(signal.SIGINT)


def main(argv: Sequence[str] | None = None, *, clock: Clock | None = None) -> int:
    """The CLI; `clock` (default: the system's) says what time and quota day it is."""
    args = build_parser().parse_args(argv)
    clock = clock or SystemClock()
    configure_logging(json_lines=args.log_json, verbose=args.verbose)
    handler: Callable[[Config, argparse.Namespace, Clock], int] = {
        "run": _cmd_run,
        "status": _cmd_status,
        "export": _cmd_export,
        "check-keys": _cmd_check_keys,
        "calibrate": _cmd_calibrate,
        "filter-report": _cmd_filter_report,
        "caption-report": _cmd_caption_report,
        "keep": _cmd_override,
        "reject": _cmd_override,
        "retry": _cmd_retry,
        "review": _cmd_review,
        "report": _cmd_report,
        "restore": _cmd_restore,
    }[args.command or "run"]
    with _sigterm_as_ctrl_c():
        try:
            config = _config_from(args)
            if args.command not in (None, "run", "restore"):  # a run (and --dry-run) says so its own way
                refuse_a_lost_state(config)
            return handler(config, args, clock)
        except MachineError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return int(RunEnd.FAILED)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            how, code = ("stopped (SIGTERM)", 143) if _terminated.is_set() else ("interrupted", 130)
            print(f"{how}: rerun the same command to continue where it stopped", file=sys.stderr)
            return code
        except BrokenPipeError:  # `status | head -1`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            return 128 + signal.SIGPIPE


@contextmanager
def _sigterm_as_ctrl_c() -> Iterator[None]:
    """For the length of one command (signals can only be handled in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _terminated.clear()
    previous = signal.signal(signal.SIGTERM, _stop_as_for_ctrl_c)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _config_from(args: argparse.Namespace) -> Config:
    config = load_config(args.config)
    config = with_overrides(
        config, input_dir=getattr(args, "input", None), output_dir=args.output, work_dir=args.work_dir
    )
    if args.command in (None, "run"):
        skipped = [stage.name for stage in STAGES if stage.skip and getattr(args, f"skip_{stage.name}")]
        config = with_stages(config, **dict.fromkeys(skipped, False))
    return config


def _cmd_run(config: Config, args: argparse.Namespace, clock: Clock) -> int:
    if args.dry_run:
        plan = plan_run(config, clock, limit=args.limit)
        print(plan.text())
        return 2 if plan.blocking else 0
    pipeline = Pipeline(config, clock=clock)
    service = Service(pipeline, wait=args.wait, watch=args.watch, poll=args.poll)
    with log_file(config.paths.work_dir / LOG_FILE):
        report = asyncio.run(_run_stopping_politely(pipeline, service.run(limit=args.limit)))
    print(format_service_summary(report, config))
    return int(report.end)


async def _run_stopping_politely(pipeline: Pipeline, work: Coroutine[Any, Any, T]) -> T:
    """The first Ctrl-C or SIGTERM stops taking new work and lets the requests in flight land and
    be recorded (they are paid for) for up to GRACE_S; a second one, or the end of the grace,
    stops at once. Either way the next run continues where this one stopped."""
    loop, run = asyncio.get_running_loop(), asyncio.current_task()
    assert run is not None

    def stop_now() -> None:
        run.cancel()

    def stop_politely(end: RunEnd) -> None:
        pipeline.stop.request(end)
        print(
            f"stopping: the requests in flight get up to {GRACE_S:.0f} s to land; again to stop at once",
            file=sys.stderr,
        )
        loop.call_later(GRACE_S, stop_now)
        for signum in _STOP_SIGNALS:
            loop.add_signal_handler(signum, stop_now)

    try:
        for signum, end in _STOP_SIGNALS.items():
            loop.add_signal_handler(signum, stop_politely, end)
    except (NotImplementedError, RuntimeError):  # Windows, or not the main thread: Ctrl-C stops at once
        pass
    try:
        return await work
    except asyncio.CancelledError:
        if pipeline.stop.end == RunEnd.TERMINATED:
            _terminated.set()
        raise KeyboardInterrupt from None


_STOP_SIGNALS = {signal.SIGINT: RunEnd.INTERRUPTED, signal.SIGTERM: RunEnd.TERMINATED}


def _cmd_status(config: Config, args: argparse.Namespace, clock: Clock) -> int:
    if not config.state_path.exists():
        print(
            f"Nothing processed yet (no state at {config.state_path}): "
            f"run `python -m ghibli_async --config {args.config}`."
        )
        return 0
    exported = exported_count(config.paths.output_dir)
    keys = load_caption_keys(config)
    with State.open(config.state_path, readonly=True) as state:
        print(format_status(state, config, keys, exported, clock))
    return 0


def _cmd_check_keys(config: Config, args: argparse.Namespace, clock: Clock) -> int:
    keys = required_caption_keys(config)
    checks = asyncio.run(check_keys(config.caption, keys))
    print(format_checks(checks))
    return 0 if any(check.works for check in checks) else 1


def _cmd_calibrate(config: Config, args: argparse.Namespace, clock: Clock) -> int:
    model, frames_per_request = calibration_choice(config, args.model, args.per_request)
    keys = required_caption_keys(config)
    if not config.state_path.exists():
        raise UserError(f"nothing to calibrate on yet: no state at {config.state_path} (run with --skip-caption first)")
    with (
        exclusive(config.paths.work_dir),
        State.open(config.state_path) as state,
        log_file(config.paths.work_dir / LOG_FILE),
    ):
        measured = asyncio.run(
            calibrate(state, config, keys, clock, model=model, frames_per_request=frames_per_request, size=args.sample)
        )
    print(measured.text())
    return 0


def calibration_choice(config: Config, model: str | None, per_request: int | None) -> tuple[str, int]:
    """The model to calibrate (named, else the first with several frames per request, else the
    first) and the frames per request to compare with one."""
    models = config.caption.models
    if model is not None and model not in {m.name for m in models}:
        raise UserError(f"--model {model}: not in caption.models ({', '.join(m.name for m in models)})")
    chosen = config.caption.model(model) if model else next((m for m in models if m.images_per_request > 1), models[0])
    k = per_request or (chosen.images_per_request if chosen.images_per_request > 1 else 4)
    if k < 2:
        raise UserError("--per-request must be 2 or more: calibrate compares it with one frame per request")
    return chosen.name, k


def _cmd_filter_report(config: Config, args: argparse.Namespace, clock: Clock) -> int:
    if not config.state_path.exists():
        raise UserError(f"no filter decisions yet: no state at {config.state_path} (run the pipeline first)")
    with State.open(config.state_path, readonly=True) as state:
        rows = state.filter.report()
    if args.json:
        for row in rows:
            print(json.dumps(filter_row_json(row), ensure_ascii=False))
    else:
        print(format_filter_report(rows, config))
    return 0


def _cmd_caption_report(config: Config, args: argparse.Namespace, clock: Clock) -> int:
    if not config.state_path.exists():
        raise UserError(f"no captions yet: no state at {config.state_path} (run the pipeline first)")
    with State.open(config.state_path, readonly=True) as state:
        rows = caption_rows(state, config)
    if args.json:
        for row in rows:
            print(row.json())
    else:
        print(format_caption_report(rows, config))
    return 0


def _cmd_override(config: Config, args: argparse.Namespace, clock: Clock) -> int:
    paths = [os.path.abspath(path) for path in args.paths]
    unknown = set_override(config, paths, args.command)
    done = len(paths) - len(unknown)
    print(f"{args.command}: {done} frame(s) marked; the next run honours it.")
    if unknown:
        raise UserError(f"not in the state (run the pipeline first, or check the path): {', '.join(unknown[:5])}")
    return 0


def _cmd_retry(config: Config, args: argparse.Namespace, clock: Clock) -> int:
    requeued = retry_failed(config, args.stage or list(RETRY_STAGES))
    shown = ", ".join(f"{stage} {n}" for stage, n in requeued.items()) or "nothing processed yet"
    print(f"Back in the queue: {sum(requeued.values())} failed frame(s) ({shown}); run again to process them.")
    return 0


def _cmd_review(config: Config, args: argparse.Namespace, clock: Clock) -> int:
    if not config.state_path.exists():
        raise UserError(f"nothing to review yet: no state at {config.state_path} (run the pipeline first)")
    try:
        asyncio.run(serve(config, host=args.host, port=args.port, open_browser=args.open))
    except KeyboardInterrupt:
        print("Review page stopped; every change was saved as it was made.")
        return 143 if _terminated.is_set() else 0
    return 0


def _cmd_report(config: Config, args: argparse.Namespace, clock: Clock) -> int:
    if not config.state_path.exists():
        raise UserError(f"nothing to report yet: no state at {config.state_path} (run the pipeline first)")
    dest = args.to.resolve() if args.to else config.paths.work_dir / REPORT
    print(f"Report written: {write_report(config, dest)}")
    return 0


def _cmd_restore(config: Config, args: argparse.Namespace, clock: Clock) -> int:
    done = restore_state(config, clock.wall())
    aside = f"; the damaged file is kept as {done.set_aside}" if done.set_aside else ""
    print(
        f"Restored {done.restored} of {done.rows} exported images into a new state at {config.state_path}{aside}. "
        "Run again to continue: what is captioned is not paid for again."
    )
    if done.restored < done.rows:
        print(f"{done.rows - done.restored} exported images were not restored (their rows were damaged).")
    return 0


def _cmd_export(config: Config, args: argparse.Namespace, clock: Clock) -> int:
    result = export_only(config)
    print(f"Exported {result.images} captioned images to {result.output_dir} ({result.removed} stale files removed).")
    return 0
