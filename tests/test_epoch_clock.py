"""The epoch clock (engines.py) no longer ticks on its own: calls bring it up to date as they
start, and the ticker sleeps until the earliest deadline in flight. These tests attack what
that could break: a deadline counted from a stale epoch (too early), a ticker asleep past
a deadline (too late), a short deadline behind a long one, and guest code that ran while
another call was overdue."""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import guests
import pytest
from guests import manifest

from runtime import errors
from runtime.executor import Executor
from runtime.executor import engines as engines_module
from runtime.executor.engines import CATCH_UP_S, EngineConfig, Engines

SPIN = {"go": 1}  # the gated infinite loop spins only when asked


@pytest.fixture
def executor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Executor]:
    # The ticker's periodic catch-up would hide a late wake-up or a stale epoch: slow it
    # down, so that only the mechanism under test can trap a call on time.
    monkeypatch.setattr(engines_module, "CATCH_UP_S", 5.0)
    with guests.executor_at(tmp_path / "home") as ex:
        yield ex


def spin_for(executor: Executor, name: str) -> float:
    """Run the infinite loop `name` until it times out; seconds it took."""
    started = time.monotonic()
    with pytest.raises(errors.Timeout):
        executor.execute(name, SPIN)
    return time.monotonic() - started


def test_a_deadline_after_a_long_idle_counts_from_the_call_not_from_the_last_tick(
        executor: Executor) -> None:
    executor.upload(guests.infinite_loop(), manifest("spin", limits={"timeout_ms": 200}))
    executor.execute("spin", {})  # engine built, instance pooled
    time.sleep(0.5)  # nothing runs: the epochs fall behind the wall clock
    took = spin_for(executor, "spin")
    assert took >= 0.2, f"trapped after {took:.3f} s: before its 200 ms deadline"
    assert took < 0.2 + 0.15, f"trapped after {took:.3f} s: the ticker slept past it"


def test_a_short_deadline_behind_a_long_one_wakes_the_ticker(executor: Executor) -> None:
    executor.upload(guests.infinite_loop(), manifest("long", limits={"timeout_ms": 2500}))
    executor.upload(guests.infinite_loop(), manifest("short", limits={"timeout_ms": 150}))
    executor.execute("short", {})
    took: dict[str, float] = {}
    long_call = threading.Thread(target=lambda: took.__setitem__("long", spin_for(executor,
                                                                                 "long")))
    long_call.start()
    time.sleep(0.3)  # the ticker now sleeps until the long call's deadline
    took["short"] = spin_for(executor, "short")
    long_call.join(timeout=10)
    assert 0.15 <= took["short"] < 0.15 + 0.2, took
    assert took["long"] >= 2.5, took  # the short one's trap did not cut the long one early


def test_many_overlapping_calls_each_trap_at_their_own_deadline(executor: Executor) -> None:
    timeouts = [120, 240, 360, 480]
    for t in timeouts:
        executor.upload(guests.infinite_loop(), manifest(f"spin{t}", limits={"timeout_ms": t}))
    took: dict[int, float] = {}

    def one(t: int) -> None:
        took[t] = spin_for(executor, f"spin{t}")

    calls = [threading.Thread(target=one, args=(t,)) for t in timeouts]
    for i, call in enumerate(calls):
        call.start()
        time.sleep(0.03 * (i % 2))  # start times apart, so the deadlines interleave
    for call in calls:
        call.join(timeout=10)
    for t in timeouts:
        assert t / 1000 <= took[t] < t / 1000 + 0.2, (t, took)


def test_the_ticker_sleeps_when_nothing_runs_and_ticks_for_a_call_past_due() -> None:
    engines = Engines(tick_ms=5)
    try:
        engines.get(EngineConfig(fuel=False, max_stack=512 * 1024))
        asleep = []
        for _ in range(2):  # two looks 30 ms apart: one finds it well before its next wake
            time.sleep(0.03)
            with engines._clock:
                asleep.append(engines._wake_at - time.monotonic())
        assert max(asleep) > 4 * engines._tick_s, f"idle, it wakes per tick: {asleep}"
        with engines.running(2):  # a call past its deadline (a host call, say): tick again
            time.sleep(0.05)
            with engines._clock:
                next_wake = engines._wake_at - time.monotonic()
                epoch = engines._epoch
            assert next_wake <= engines._tick_s + 0.002
            time.sleep(0.03)
            with engines._clock:
                assert engines._epoch >= epoch + 4  # kept ticking while it ran
        with engines._clock:
            assert not engines._due  # the call is gone once it ended
    finally:
        engines.close()
    assert not engines._ticker.is_alive()


def test_the_epoch_follows_the_wall_clock_through_idle_and_busy_spells() -> None:
    engines = Engines(tick_ms=5)
    try:
        engines.get(EngineConfig(fuel=False, max_stack=512 * 1024))
        start = time.monotonic()
        with engines._clock:
            first = engines._epoch
        for _ in range(20):
            with engines.running(1000):
                time.sleep(0.002)
            time.sleep(0.01)
        time.sleep(2 * CATCH_UP_S)
        with engines.running(1), engines._clock:
            moved = engines._epoch - first
        elapsed = time.monotonic() - start
        assert abs(moved - elapsed / 0.005) <= 2, (moved, elapsed)
    finally:
        engines.close()
