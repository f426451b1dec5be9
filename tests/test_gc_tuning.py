"""The runtime sizes the young GC generation for what is in flight (runtime/actors/gc_tuning.py):
raised on start, never lowered, automatic collection switched off by threshold left alone."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from runtime.actors import ActorRuntime, gc_tuning
from runtime.journal.memory import MemoryJournal
from runtime.testing import StubActivities


@pytest.fixture(autouse=True)
def restore_gc() -> Iterator[None]:
    threshold, enabled = gc.get_threshold(), gc.isenabled()
    yield
    gc.set_threshold(*threshold)
    (gc.enable if enabled else gc.disable)()


def test_raises_a_lower_threshold_and_keeps_the_older_generations() -> None:
    gc.set_threshold(700, 11, 12)
    assert gc_tuning.raise_young_threshold(5_000)
    assert gc.get_threshold() == (5_000, 11, 12)


def test_never_lowers_a_threshold_the_application_chose() -> None:
    gc.set_threshold(50_000, 10, 10)
    assert not gc_tuning.raise_young_threshold(5_000)
    assert gc.get_threshold() == (50_000, 10, 10)


def test_a_collector_off_for_now_gets_the_threshold_and_stays_off() -> None:
    """(A replay switches it off while it decodes; a runtime starting meanwhile still
    raises the threshold.)"""
    gc.set_threshold(700, 10, 10)
    gc.disable()
    assert gc_tuning.raise_young_threshold(5_000)
    assert gc.get_threshold() == (5_000, 10, 10) and not gc.isenabled()


def test_leaves_automatic_collection_off_by_threshold_alone() -> None:
    gc.set_threshold(0, 10, 10)
    assert not gc_tuning.raise_young_threshold(5_000)
    assert gc.get_threshold() == (0, 10, 10)


def test_a_runtime_raises_it_on_start_unless_told_not_to() -> None:
    async def start(**kw: object) -> None:
        rt = ActorRuntime(MemoryJournal(), activities=StubActivities(), lint=False,
                          **kw)  # type: ignore[arg-type]
        await rt.start()
        await rt.stop()

    gc.set_threshold(700, 10, 10)
    asyncio.run(start(gc_young_threshold=None))
    assert gc.get_threshold() == (700, 10, 10)
    asyncio.run(start())
    assert gc.get_threshold() == (gc_tuning.YOUNG_THRESHOLD, 10, 10)
    asyncio.run(start(gc_young_threshold=20_000))
    assert gc.get_threshold() == (20_000, 10, 10)


@pytest.mark.parametrize("bad", [0, -5, 2.5, "10000", True])
def test_a_bad_threshold_is_refused_when_the_runtime_is_built(bad: object) -> None:
    from runtime import errors

    with pytest.raises(errors.SettingsInvalid, match="gc_young_threshold"):
        ActorRuntime(MemoryJournal(), activities=StubActivities(), lint=False,
                     gc_young_threshold=bad)  # type: ignore[arg-type]
