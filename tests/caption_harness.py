"""Run the whole pipeline against the fake Gemini server, both on one virtual clock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Protocol, TypeVar

from aiohttp import web
from conftest import Project
from virtual_time import VirtualClock

from ghibli_async.config import load_config
from ghibli_async.pipeline import Pipeline, RunReport


def write_caption_config(
    project: Project, base_url: str, models: Iterable[str], *, keys: Iterable[str] = (), extra: str = ""
) -> None:
    """Config for small frames (resized to 64 px), the given model and key entries, the fake's URL."""
    lines = ["resize:", "  size: 64", "caption:", f"  base_url: {base_url}", "  models:"]
    lines += [f"    - {model}" for model in models]
    keys = list(keys)
    if keys:
        lines += ["  keys:", *(f"    - {key}" for key in keys)]
    project.write_config("\n".join(lines) + "\n" + extra)


def write_env(project: Project, **keys: str) -> None:
    project.root.joinpath(".env").write_text("".join(f"{name}={value}\n" for name, value in keys.items()))


class Fake(Protocol):
    async def start(self) -> web.AppRunner: ...


F = TypeVar("F", bound=Fake)


@asynccontextmanager
async def serving(fake: F) -> AsyncIterator[F]:
    runner = await fake.start()
    try:
        yield fake
    finally:
        await runner.cleanup()


async def run_pipeline(project: Project, clock: VirtualClock, *, limit: int | None = None) -> RunReport:
    return await Pipeline(load_config(project.config_path), clock=clock).run(limit=limit)
