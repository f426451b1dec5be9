"""Named points in the commit path where tests (and the simulation) inject faults."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable


class Hooks:
    """`LOOM_CRASH_AT=<point>` (and optionally `LOOM_CRASH_AFTER=<n>`, default 1) makes the
    process SIGKILL itself the n-th time the point is reached. Points: before_activity,
    after_activity (ran, not yet committed), before_commit, after_commit (committed, not
    yet dispatched).
    """

    POINTS = ("before_activity", "after_activity", "before_commit", "after_commit")

    def __init__(self) -> None:
        self._handlers: dict[str, list[Callable[[str], None]]] = {}

    def on(self, point: str, fn: Callable[[str], None]) -> None:
        if point not in self.POINTS:
            raise ValueError(f"unknown hook point {point!r}; one of {', '.join(self.POINTS)}")
        self._handlers.setdefault(point, []).append(fn)

    def fire(self, point: str, actor: str) -> None:
        for fn in self._handlers.get(point, ()):
            fn(actor)

    @classmethod
    def from_env(cls) -> Hooks:
        hooks = cls()
        point = os.environ.get("LOOM_CRASH_AT")
        if point:
            remaining = [int(os.environ.get("LOOM_CRASH_AFTER", "1"))]

            def crash(_: str) -> None:
                remaining[0] -= 1
                if remaining[0] == 0:
                    os.kill(os.getpid(), signal.SIGKILL)

            hooks.on(point, crash)
        return hooks
