"""Run blocking calls (sandboxed guests) off the event loop.

Each worker thread runs one call at a time, so slow guests never hold others back.
Results are handed back in bulk: a finished call joins a shared list and only the first
result of an empty list schedules a loop callback, which then takes everything finished
so far. Under load that is one loop wake-up for many calls instead of one per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any

from runtime.futures import Outcome, resolve_all

Item = tuple[Callable[[], Any], asyncio.Future[Any]]
Done = Outcome


class Lane:
    def __init__(self, threads: int, name: str = "loom-lane") -> None:
        self._queue: queue.SimpleQueue[Item | None] = queue.SimpleQueue()
        self._done: list[Done] = []
        self._done_lock = threading.Lock()
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
                         for i in range(threads)]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put((fn, fut))
        return fut

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, fut = item
            try:
                result: Done = (fut, fn(), None)
            except BaseException as exc:  # handed to the awaiting coroutine
                result = (fut, None, exc)
            with self._done_lock:
                self._done.append(result)
                first = len(self._done) == 1
            if first:
                with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits
                    fut.get_loop().call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._done_lock:
            done, self._done = self._done, []
        resolve_all(done)

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout=5)
