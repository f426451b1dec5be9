"""An asyncio event loop on virtual time: when nothing is ready, time jumps to the next
timer instead of waiting for it. A run is then as fast as its Python work and, with no
threads or real I/O involved, the same every time for the same inputs."""

from __future__ import annotations

import asyncio
import math
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _VirtualSelector(selectors.DefaultSelector):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[Any]:
        ready = super().select(0)  # the loop's own wake-up pipe, and nothing else
        if ready or timeout is None or timeout <= 0:
            return ready if timeout is not None else (ready or super().select(1.0))
        advanced = self.now + timeout
        # a timeout below the float resolution of `now` must still move time forward
        self.now = advanced if advanced > self.now else math.nextafter(self.now, math.inf)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """`loop.time()` is virtual and starts at 0; `asyncio.sleep(3600)` returns at once."""

    def __init__(self) -> None:
        self._virtual = _VirtualSelector()
        super().__init__(selector=self._virtual)

    def time(self) -> float:
        return self._virtual.now


def run_virtual(coro: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run` on virtual time."""
    loop = VirtualTimeLoop()
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(coro)
    finally:
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()
