"""Handing results computed elsewhere (a writer thread, an activity thread) to the futures
that coroutines on the event loop await."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

Outcome = tuple["asyncio.Future[Any]", Any, BaseException | None]  # (future, value, error)


def resolve_all(outcomes: Iterable[Outcome]) -> None:
    """Set each future's result or exception (on the loop's thread); one already done (its
    awaiter gave up) is left as it is."""
    for fut, value, error in outcomes:
        if fut.done():
            continue
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(value)
