"""First-use problems of issue 8 (item 12) that live in the actor runtime: a message to an
unregistered type is logged once, not every poll; a misspelled handler names the valid
ones; an error's type is not printed twice."""

from __future__ import annotations

import asyncio
import logging

import durable_actors as da
import pytest

from runtime import errors
from runtime.actors import ActorRuntime, Hooks
from runtime.cli import _error_text
from runtime.journal import MemoryJournal
from runtime.testing import StubActivities


def test_a_message_to_an_unregistered_type_is_logged_once(
        caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        rt = ActorRuntime(MemoryJournal(), activities=StubActivities(), hooks=Hooks(),
                          poll_interval_s=0.01)
        rt.register(da.Payee)
        async with rt:
            for _ in range(3):
                await rt.send("countr/1", "add", {"n": 1})
            await asyncio.sleep(0.3)  # ~30 scheduling rounds

    with caplog.at_level(logging.WARNING, logger="loom.actors"):
        asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records if "countr" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "types: payee" in lines[0]


def test_a_misspelled_handler_names_the_valid_ones() -> None:
    async def main() -> None:
        rt = ActorRuntime(MemoryJournal(), activities=StubActivities(), hooks=Hooks())
        rt.register(da.Payee)
        async with rt:
            with pytest.raises(errors.HandlerFailed) as info:
                await rt.ask("payee/x", "credt", {"amount": 1})
        assert "no handler 'credt'" in info.value.message
        assert "handlers: credit, get" in info.value.message

    asyncio.run(main())


def test_an_error_type_is_not_printed_twice() -> None:
    assert _error_text({"type": "TypeError", "message": "TypeError: bad"}) == "TypeError: bad"
    assert _error_text({"type": "ActivityFailed", "message": "pay failed"}) == \
        "ActivityFailed: pay failed"
