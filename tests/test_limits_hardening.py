"""Fleet-wide limits and breakers when things go wrong: a limits store (Redis) that fails at
acquire or at release never fails the run, a call ending in a non-Loom error or a
cancellation frees its slot at once, a call longer than its lease keeps its slot, and a call
that succeeded is returned even if another worker opened its breaker meanwhile."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from typing import Any

import durable_actors as da
import pytest
import redis
from servers import free_port
from test_durable_core import run, runtime, stubs

from runtime import errors
from runtime.actors.resilience import Breakers, redis_breaker_storage
from runtime.journal import MemoryJournal
from runtime.limits import limiter_from_settings
from runtime.limits.base import Grant
from runtime.limits.memory import MemoryLimiter

pytestmark = pytest.mark.timeout(60)


def _redis_url(server: Any) -> tuple[str, str]:
    """The fixture's server, and a unique key prefix so tests never share a limit."""
    return server.url, f"test:limits:{uuid.uuid4().hex}"


def _dead_url() -> str:
    """A Redis URL where nothing listens: every command fails (connection refused)."""
    return f"redis://127.0.0.1:{free_port()}/0"


async def _outcome(journal: MemoryJournal, actor: str) -> tuple[str, list[str]]:
    """The run's recorded outcome (kind) and the ops of its activity events."""
    done = [c for c in await journal.read(actor) if "kind" in c and c.get("run")]
    assert len(done) == 1, done
    return done[0]["kind"], [e["op"] for e in done[0].get("events", [])]


# -- 1. the store fails at acquire: admit waits and retries ------------------------------------


@pytest.mark.integration
def test_a_limits_store_outage_at_acquire_waits_then_the_run_completes(
        redis_server: Any) -> None:
    """Redis is unreachable when the call asks for its slot (real connection errors); once
    it is back, the same run is admitted, the activity runs once and the run completes.
    Before: StorageError from admit failed the run for good."""
    url, prefix = _redis_url(redis_server)
    limits = json.dumps({"slow": {"concurrency": 2, "lease_s": 30}})
    limiter: Any = limiter_from_settings(limits, _dead_url(), prefix=prefix)
    live = limiter_from_settings(limits, url, prefix=prefix)
    real_acquire = limiter.try_acquire
    failures: list[str] = []

    def try_acquire(activity: str, tenant: str, token: str) -> Any:
        try:
            return real_acquire(activity, tenant, token)
        except errors.StorageError as exc:
            failures.append(str(exc))
            if len(failures) == 3:  # Redis is back (the same limiter, a reachable client)
                limiter.__dict__.update(live.__dict__)
            raise

    limiter.try_acquire = try_acquire
    journal, acts = MemoryJournal(), stubs("slow")

    async def main() -> Any:
        async with runtime(journal, acts, da.Limited, limiter=limiter) as rt:
            result = await asyncio.wait_for(rt.ask("limited/w", "call", 1, msg_id="m"), 10)
            return result, await _outcome(journal, "limited/w")

    result, (kind, ops) = run(main(), timeout=30)
    assert len(failures) == 3 and "Redis failed acquiring" in failures[0]
    assert result == {"id": "slow:limited/w:m:0"}
    assert (kind, ops) == ("completed", ["activity.done"])
    assert len(acts.calls) == 1 and len(acts.receiver.applied) == 1
    assert redis.Redis.from_url(url).zcard(f"{prefix}:{{slow}}:holders") == 0  # released


# -- 2. the store fails at release: the call's outcome stands ----------------------------------


@pytest.mark.integration
def test_a_release_failure_never_changes_the_calls_outcome(redis_server: Any) -> None:
    """Redis goes away right after the activity's effect (a real outage of the limiter's
    client): the release fails, yet the result is returned and recorded, and the effect ran
    once. Before: the release's StorageError failed the run after the effect had happened."""
    url, prefix = _redis_url(redis_server)
    limits = json.dumps({"slow": {"concurrency": 1, "lease_s": 30}})
    limiter: Any = limiter_from_settings(limits, url, prefix=prefix)
    dead = limiter_from_settings(limits, _dead_url(), prefix=prefix)
    real_release = limiter.release
    releases: list[str] = []

    def release(grant: Grant) -> bool:
        try:
            return bool(real_release(grant))
        except errors.StorageError as exc:
            releases.append(str(exc))
            raise

    limiter.release = release
    journal, acts = MemoryJournal(), stubs("slow")

    def outage() -> None:  # after the effect: the limiter's Redis is gone
        limiter.__dict__.update(dead.__dict__)

    acts.after = outage

    async def main() -> Any:
        async with runtime(journal, acts, da.Limited, limiter=limiter) as rt:
            result = await asyncio.wait_for(rt.ask("limited/z", "call", 1, msg_id="m"), 10)
            await asyncio.sleep(0.2)  # a wrongly retried run would run the activity again
            return result, await _outcome(journal, "limited/z")

    result, (kind, ops) = run(main(), timeout=30)
    assert releases and "Redis failed releasing" in releases[0]  # the release did fail
    assert result == {"id": "slow:limited/z:m:0"}
    assert (kind, ops) == ("completed", ["activity.done"])
    assert len(acts.calls) == 1 and len(acts.receiver.applied) == 1
    # the slot was not freed: it is held until its lease runs out
    assert redis.Redis.from_url(url).zcard(f"{prefix}:{{slow}}:holders") == 1


# -- 3. whatever ends the call frees its slot --------------------------------------------------


def test_a_call_ending_in_a_non_loom_error_frees_its_slot() -> None:
    """The activity raises a plain RuntimeError: the run fails, and its slot (concurrency 1,
    lease 30 s) is free at once, so the next call runs without waiting for the lease.
    Before: the slot leaked until the lease ran out (the next call waited 30 s)."""
    limiter = limiter_from_settings(json.dumps({"slow": {"concurrency": 1, "lease_s": 30}}))
    assert isinstance(limiter, MemoryLimiter)
    journal, acts = MemoryJournal(), stubs("slow")

    def before() -> None:
        if len(acts.calls) == 1:
            raise RuntimeError("bug in the activity adapter")

    acts.before = before

    async def main() -> Any:
        async with runtime(journal, acts, da.Limited, limiter=limiter) as rt:
            with pytest.raises(errors.HandlerFailed, match="RuntimeError"):
                await asyncio.wait_for(rt.ask("limited/x", "call", 1, msg_id="m"), 5)
            free = isinstance(limiter.try_acquire("slow", "", "probe"), Grant)
            if free:
                limiter.release(limiter.try_acquire("slow", "", "probe"))
            started = time.monotonic()
            second = await asyncio.wait_for(rt.ask("limited/y", "call", 2, msg_id="m"), 5)
            return free, second, time.monotonic() - started

    free, second, waited = run(main(), timeout=30)
    assert free  # no holder left behind by the failed call
    assert second == {"id": "slow:limited/y:m:0"} and waited < 2
    assert len(acts.calls) == 2


def test_a_cancelled_call_frees_its_slot() -> None:
    """The runtime stops (its runs are cancelled) while a call holds the only slot: the slot
    is free right after. Before: it stayed taken until the lease (30 s) ran out."""
    limiter = limiter_from_settings(json.dumps({"slow": {"concurrency": 1, "lease_s": 30}}))
    assert isinstance(limiter, MemoryLimiter)
    journal, acts = MemoryJournal(), stubs("slow")
    inside = asyncio.Event()

    async def before() -> None:
        inside.set()
        await asyncio.Event().wait()  # never finishes: only a cancellation ends it

    acts.before = before

    async def main() -> Any:
        async with runtime(journal, acts, da.Limited, limiter=limiter) as rt:
            asking = asyncio.ensure_future(rt.ask("limited/c", "call", 1, msg_id="m"))
            await asyncio.wait_for(inside.wait(), 5)
            held = not isinstance(limiter.try_acquire("slow", "", "probe"), Grant)
        asking.cancel()
        await asyncio.sleep(0.05)  # the shielded release finishes
        return held, limiter.try_acquire("slow", "", "probe")

    held, verdict = run(main(), timeout=30)
    assert held  # the call did hold the slot while it ran
    assert isinstance(verdict, Grant), verdict  # and freed it when cancelled
    assert len(acts.calls) == 1


# -- 4. a call longer than its lease keeps its slot --------------------------------------------


@pytest.mark.parametrize("where", ["memory", pytest.param("redis", marks=pytest.mark.integration)])
def test_calls_longer_than_the_lease_keep_the_concurrency_limit(
        where: str, request: pytest.FixtureRequest) -> None:
    """Concurrency 1, lease 0.3 s, three calls of 0.8 s each: the lease is renewed while a
    call runs, so they run one at a time. Before: each lease ran out mid-call and all three
    ran at once."""
    limits = json.dumps({"slow": {"concurrency": 1, "lease_s": 0.3}})
    if where == "redis":
        url, prefix = _redis_url(request.getfixturevalue("redis_server"))
        limiter = limiter_from_settings(limits, url, prefix=prefix)
    else:
        limiter = limiter_from_settings(limits)
    journal, acts = MemoryJournal(), stubs("slow")
    gauge = {"now": 0, "max": 0}

    async def before() -> None:
        gauge["now"] += 1
        gauge["max"] = max(gauge["max"], gauge["now"])
        await asyncio.sleep(0.8)
        gauge["now"] -= 1

    acts.before = before

    async def main() -> Any:
        async with runtime(journal, acts, da.Limited, limiter=limiter) as rt:
            asks = [rt.ask(f"limited/a{n}", "call", n, msg_id="m") for n in range(3)]
            return await asyncio.wait_for(asyncio.gather(*asks), 15)

    results = run(main(), timeout=30)
    assert [r["id"] for r in results] == [f"slow:limited/a{n}:m:0" for n in range(3)]
    assert gauge["max"] == 1, f"peak concurrent calls {gauge['max']} under a limit of 1"
    assert len(acts.calls) == 3


# -- 5. a call that succeeded is returned although the breaker opened meanwhile ----------------


@pytest.mark.integration
def test_a_succeeded_call_is_returned_when_another_worker_opened_the_breaker(
        redis_server: Any) -> None:
    """Worker A's call is running when worker B's failures open the shared breaker: A's call
    succeeded, so A gets its result (no CircuitOpen after the effect, which a retry would
    have run again); the breaker is open for new calls. Before: A got CircuitOpen."""
    prefix = f"test:breakers:{uuid.uuid4().hex}"

    def worker() -> Breakers:
        return Breakers(fail_max=3, reset_timeout=5,
                        storage=redis_breaker_storage(redis_server.url, prefix=prefix))

    a, b = worker(), worker()
    effects: list[str] = []
    running, opened = threading.Event(), threading.Event()

    def charge() -> Any:
        running.set()
        assert opened.wait(10)
        effects.append("charged")
        return {"ok": True}

    def fail() -> Any:
        raise errors.StorageError("upstream 503")

    out: dict[str, Any] = {}

    def run_a() -> None:
        try:
            out["a"] = a.call("pay", charge)
        except Exception as exc:
            out["a"] = exc

    thread = threading.Thread(target=run_a)
    thread.start()
    try:
        assert running.wait(10)
        for _ in range(3):
            with pytest.raises((errors.StorageError, errors.CircuitOpen)):
                b.call("pay", fail)
        assert b.get("pay").current_state == "open"
    finally:
        opened.set()
        thread.join(10)
    assert out["a"] == {"ok": True}, out["a"]
    assert effects == ["charged"]
    with pytest.raises(errors.CircuitOpen):  # open for the fleet: nothing else runs
        a.call("pay", lambda: effects.append("again"))
    assert effects == ["charged"]
