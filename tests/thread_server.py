"""Run an aiohttp server from a thread with its own event loop, for code that blocks the test's
thread (a CLI in another process, a browser driven synchronously)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

from aiohttp import web


@contextmanager
def serving_in_thread(start: Callable[[], Awaitable[web.AppRunner]]) -> Iterator[web.AppRunner]:
    """`start` sets the server up and returns its runner; it is cleaned up on exit."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, web.AppRunner] = {}

    def serve() -> None:
        asyncio.set_event_loop(loop)
        holder["runner"] = loop.run_until_complete(start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    started.wait(10)
    try:
        yield holder["runner"]
    finally:
        asyncio.run_coroutine_threadsafe(holder["runner"].cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
