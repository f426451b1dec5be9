"""Run blocking calls (sandboxed guests) off the event loop, in batches.

`run_in_executor` costs one loop wake-up and one thread hand-off per call. Under load
the lane lets each worker thread drain several queued calls per wake-up and hand all
their results back to the loop with one `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any

Item = tuple[Callable[[], Any], asyncio.Future[Any]]
BATCH = 32


class Lane:
    def __init__(self, threads: int, name: str = "loom-lane") -> None:
        self._queue: queue.SimpleQueue[Item | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
                         for i in range(threads)]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._queue.put((fn, fut))
        return fut

    def _work(self) -> None:
        q = self._queue
        while True:
            item = q.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < BATCH:
                try:
                    nxt = q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    q.put(None)
                    break
                batch.append(nxt)
            done: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
            for fn, fut in batch:
                try:
                    done.append((fut, fn(), None))
                except BaseException as exc:  # handed to the awaiting coroutine
                    done.append((fut, None, exc))
            loop = batch[0][1].get_loop()
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(_deliver, done)

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout=5)


def _deliver(done: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for fut, value, error in done:
        if fut.done():
            continue
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(value)
