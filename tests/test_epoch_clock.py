"""The epoch clock (engines.py) ticks only while guest code runs. These tests attack what
that could break: a deadline after a long idle (the ticker asleep: trapped late, or never),
host work between a call's start and its deadline being armed (counted against the guest:
trapped early), a short deadline beside a long one, and a ticker that keeps ticking (or
stops) when it should not."""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import guests
import pytest
from guests import manifest

from runtime import errors
from runtime.executor import Executor, abi_core
from runtime.executor.engines import IDLE_S, EngineConfig, Engines

SPIN = {"go": 1}  # the gated infinite loop spins only when asked


@pytest.fixture
def executor(tmp_path: Path) -> Iterator[Executor]:
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
    time.sleep(IDLE_S + 0.5)  # nothing runs: the ticker falls asleep
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


def test_host_work_before_the_deadline_is_armed_is_not_counted_against_the_guest(
        executor: Executor, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cold call fetches and compiles before it arms its deadline: the guest still gets
    its whole timeout from the moment the deadline is set."""
    executor.upload(guests.infinite_loop(), manifest("cold", limits={"timeout_ms": 200}))
    time.sleep(1.5 * IDLE_S)  # the ticker asleep, the epochs still
    slow_pre = abi_core.instance_pre

    def slow(*args: object, **kw: object) -> object:
        time.sleep(0.15)  # a slow cache: 150 ms of host work after the call began
        return slow_pre(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(abi_core, "instance_pre", slow)
    took = spin_for(executor, "cold")
    assert took >= 0.15 + 0.2, f"trapped after {took:.3f} s: the host work ate its budget"
    assert took < 0.15 + 0.2 + 0.15, took


def test_the_ticker_sleeps_when_nothing_runs_and_ticks_while_anything_does() -> None:
    engines = Engines(tick_ms=5)
    try:
        engines.get(EngineConfig(fuel=False, max_stack=512 * 1024))
        time.sleep(IDLE_S + 0.2)  # a second after the last guest code: asleep
        assert engines.asleep
        idle_from = engines.epoch
        time.sleep(0.3)
        assert engines.epoch == idle_from, "idle, it ticked"
        engines.begin()
        try:
            time.sleep(0.3)
            ticked = engines.epoch - idle_from
        finally:
            engines.end()
        assert 0.3 / 0.005 * 0.5 <= ticked <= 0.3 / 0.005 + 2, ticked  # ~60 (a slow host: fewer)
        time.sleep(0.3)  # for a second after the call it still ticks (calls come in bursts)
        assert engines.epoch - idle_from > ticked + 0.3 / 0.005 * 0.5
        time.sleep(IDLE_S)
        assert engines.asleep
        stopped_at = engines.epoch
        time.sleep(0.3)
        assert engines.epoch == stopped_at, "it kept ticking long after the call ended"
        time.sleep(IDLE_S)  # asleep for a second: that second's ticks at once (a safety net)
        assert engines.epoch >= stopped_at + round(IDLE_S / 0.005)
    finally:
        engines.close()
    assert not engines._ticker.is_alive()


def test_begin_and_end_from_many_threads_leave_the_count_at_zero() -> None:
    engines = Engines(tick_ms=5)
    try:
        def hammer() -> None:
            for _ in range(2000):
                engines.begin()
                engines.end()

        threads = [threading.Thread(target=hammer) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert engines.running == 0
        engines.begin()  # and the ticker still ticks for the next call
        try:
            at = engines.epoch
            time.sleep(0.1)
            assert engines.epoch > at
        finally:
            engines.end()
    finally:
        engines.close()


def test_a_tick_that_fails_does_not_stop_the_clock(
        executor: Executor, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """If incrementing an epoch ever raised in the ticker thread, the thread used to die and
    no guest would be trapped on time again. Now the failure is logged and it ticks on."""
    from runtime.executor import engines

    executor.upload(guests.infinite_loop(), manifest("spin", limits={"timeout_ms": 150}))
    executor.execute("spin", {})
    real = engines._increment_epoch
    failures = [3]

    def flaky(ptr: int) -> None:
        if failures[0] > 0:
            failures[0] -= 1
            raise OSError("engine gone")
        real(ptr)

    monkeypatch.setattr(engines, "_increment_epoch", flaky)
    took: dict[str, float] = {}
    trapped = threading.Event()

    def call() -> None:
        took["s"] = spin_for(executor, "spin")
        trapped.set()

    threading.Thread(target=call, daemon=True).start()  # (never trapped: it spins on)
    assert trapped.wait(5), "the guest was never trapped: the ticker thread died"
    assert failures[0] == 0
    assert took["s"] < 0.15 + 0.3, f"trapped after {took['s']:.3f} s"
    assert "epoch ticker failed" in caplog.text
