"""Worker processes for the CPU-bound stages, started at the first job that needs them.

A run with nothing to decode or resize never starts them (about 1.1 s on 2 cores), and the
pipeline closes them before captioning, which needs none.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from ghibli_async.errors import UserError


class LazyPool:
    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: Executor | None = None  # processes; tests may put threads here

    def executor(self) -> Executor:
        """The pool, started now if this is the first job."""
        if self._pool is None:
            # forkserver, not fork: fork()ing a process that runs threads (tqdm, asyncio) can deadlock.
            context = multiprocessing.get_context("forkserver" if sys.platform.startswith("linux") else None)
            if context.get_start_method() == "forkserver":
                context.set_forkserver_preload(["ghibli_async.imaging"])
            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=context, initializer=_start_worker, initargs=(os.getpid(),)
            )
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> LazyPool:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        self.close()
        if isinstance(exc, BrokenProcessPool):
            raise UserError(
                "a worker process died (out of memory, a decoder crash on a damaged file, or, from a script, "
                'a call to ghibli_async.run() not under `if __name__ == "__main__":`); '
                "all finished work is kept: rerun to continue"
            ) from None


def _start_worker(run_pid: int) -> None:
    """Ctrl-C is the run's to handle: workers finish their image and stop with the pool. A worker
    also ends when the run dies (SIGKILL, a crash): its queues never close, since every worker
    holds both ends, so it watches the run's process instead."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_end_with, args=(run_pid,), daemon=True, name="ghibli_async-watchdog").start()


def _end_with(run_pid: int) -> None:
    while True:
        time.sleep(_WATCH_S)
        try:
            os.kill(run_pid, 0)
        except ProcessLookupError:
            os._exit(1)  # nothing to clean up: the run's state is SQLite's, and a partial file is removed later
        except PermissionError:
            pass  # alive, under another user (a reused pid cannot be ours)


_WATCH_S = 0.5
