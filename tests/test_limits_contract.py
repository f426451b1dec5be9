"""One behaviour suite for every limiter: in memory (one process) and on a real redis-server
(fleet-wide). Times are measured on the limiter's own clock (Redis `TIME` for Redis)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from runtime.limits import Grant, Limiter, MemoryLimiter, Wait
from runtime.limits.config import limits_from_dict


@dataclass
class Backend:
    make: Callable[[dict[str, Any]], Limiter]
    now: Callable[[], float]  # the limiter's clock, in seconds


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "memory":
        yield Backend(lambda cfg: MemoryLimiter(limits_from_dict(cfg)), time.monotonic)
        return
    import redis

    from runtime.limits.redis_limiter import RedisLimiter

    server = request.getfixturevalue("redis_server")
    client = redis.Redis.from_url(server.url)
    prefix = f"test{uuid.uuid4().hex[:8]}:limit"

    def now() -> float:
        s, us = client.time()
        return s + us / 1e6

    yield Backend(lambda cfg: RedisLimiter(limits_from_dict(cfg), client, prefix=prefix), now)
    client.close()


def grant(result: Grant | Wait) -> Grant:
    assert isinstance(result, Grant), result
    return result


def wait(result: Grant | Wait) -> Wait:
    assert isinstance(result, Wait), result
    return result


def token() -> str:
    return uuid.uuid4().hex


def test_concurrency_never_exceeds_the_limit_across_threads(backend: Backend) -> None:
    limiter = backend.make({"http_post": {"concurrency": 2, "lease_s": 10}})
    lock = threading.Lock()
    in_flight, peak, calls, waits = 0, 0, 0, 0
    stop = time.monotonic() + 0.6

    def worker() -> None:
        nonlocal in_flight, peak, calls, waits
        while time.monotonic() < stop:
            got = limiter.try_acquire("http_post", "", token())
            if isinstance(got, Wait):
                waits += 1
                time.sleep(min(got.retry_after_s, 0.002))
                continue
            with lock:
                in_flight += 1
                peak = max(peak, in_flight)
                calls += 1
            time.sleep(0.003)
            with lock:
                in_flight -= 1
            assert limiter.release(got)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak == 2, (peak, calls, waits)  # reached, never exceeded
    assert calls > 20 and waits > 0


def test_a_crashed_holders_slot_frees_after_its_lease(backend: Backend) -> None:
    limiter = backend.make({"http_post": {"concurrency": 1, "lease_s": 0.3}})
    crashed = grant(limiter.try_acquire("http_post", "", "crashed"))  # never released
    t0 = backend.now()
    blocked = wait(limiter.try_acquire("http_post", "", "next"))
    assert blocked.limit == "http_post concurrency"
    assert 0.2 < blocked.retry_after_s <= 0.3  # the holder's lease expiry, honestly
    time.sleep(blocked.retry_after_s + 0.02)
    assert backend.now() - t0 >= blocked.retry_after_s
    successor = grant(limiter.try_acquire("http_post", "", "next"))
    # The crashed worker's stale grant cannot free (or extend) the successor's slot.
    assert limiter.release(crashed) is False
    assert limiter.refresh(crashed) is False
    wait(limiter.try_acquire("http_post", "", "third"))
    assert limiter.release(successor) is True


def test_release_is_idempotent(backend: Backend) -> None:
    limiter = backend.make({"http_post": {"concurrency": 1}})
    g = grant(limiter.try_acquire("http_post", "", "a"))
    assert limiter.release(g) is True
    assert limiter.release(g) is False
    b = grant(limiter.try_acquire("http_post", "", "b"))
    assert limiter.release(g) is False  # a second late release does not free b's slot
    wait(limiter.try_acquire("http_post", "", "c"))
    assert limiter.release(b) is True


def test_a_stale_grant_of_the_same_token_cannot_release_the_new_one(backend: Backend) -> None:
    limiter = backend.make({"http_post": {"concurrency": 1, "lease_s": 0.15}})
    old = grant(limiter.try_acquire("http_post", "", "call-1"))
    time.sleep(0.2)  # the first attempt's worker stalls past its lease; a re-run takes over
    new = grant(limiter.try_acquire("http_post", "", "call-1"))
    assert new.nonce != old.nonce
    assert limiter.release(old) is False
    wait(limiter.try_acquire("http_post", "", "other"))  # still held by the re-run
    assert limiter.release(new) is True


def test_the_same_token_again_is_the_same_grant(backend: Backend) -> None:
    limiter = backend.make({"http_post": {"concurrency": 2, "rate_per_s": 0.5, "burst": 2}})
    first = grant(limiter.try_acquire("http_post", "", "call-1"))
    again = grant(limiter.try_acquire("http_post", "", "call-1"))  # a re-run after a crash
    assert again == first  # no second slot, no second rate token
    grant(limiter.try_acquire("http_post", "", "call-2"))  # so the burst of 2 still has room
    assert wait(limiter.try_acquire("http_post", "", "call-3")).limit == "http_post concurrency"


def test_rate_admits_rate_times_time_plus_burst(backend: Backend) -> None:
    rate, burst = 50, 10
    limiter = backend.make({"http_post": {"rate_per_s": rate, "burst": burst}})
    lock = threading.Lock()
    admitted = 0
    start = backend.now()
    stop = time.monotonic() + 1.5

    def worker() -> None:
        nonlocal admitted
        while time.monotonic() < stop:
            got = limiter.try_acquire("http_post", "", token())
            if isinstance(got, Wait):
                assert 0 < got.retry_after_s <= 1 / rate + 1e-6
                time.sleep(got.retry_after_s)
                continue
            with lock:
                admitted += 1
            limiter.release(got)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = backend.now() - start
    expected = burst + rate * elapsed
    print(f"rate: admitted {admitted} in {elapsed:.3f}s, expected {expected:.1f}")
    assert expected - 5 <= admitted <= expected + 1, (admitted, expected, elapsed)


def test_retry_after_is_the_time_to_the_next_token(backend: Backend) -> None:
    limiter = backend.make({"http_post": {"rate_per_s": 10, "burst": 2}})
    grant(limiter.try_acquire("http_post", "", token()))
    grant(limiter.try_acquire("http_post", "", token()))
    w = wait(limiter.try_acquire("http_post", "", token()))
    assert w.limit == "http_post rate"
    assert 0.08 < w.retry_after_s <= 0.1
    time.sleep(w.retry_after_s * 0.5)
    assert wait(limiter.try_acquire("http_post", "", token())).retry_after_s < w.retry_after_s
    time.sleep(w.retry_after_s * 0.5 + 0.005)
    grant(limiter.try_acquire("http_post", "", token()))  # on time, not before or much after
    assert 0.09 < wait(limiter.try_acquire("http_post", "", token())).retry_after_s <= 0.1


def test_tenants_are_limited_separately_and_together(backend: Backend) -> None:
    limiter = backend.make({"http_post": {
        "concurrency": 3,
        "tenants": {"*": {"concurrency": 1}, "big": {"concurrency": 2}}}})
    a = grant(limiter.try_acquire("http_post", "acme", token()))
    assert wait(limiter.try_acquire("http_post", "acme", token())).limit == \
        "http_post tenant 'acme' concurrency"
    grant(limiter.try_acquire("http_post", "globex", token()))  # its own slot
    grant(limiter.try_acquire("http_post", "big", token()))
    # The activity-wide limit (3) binds across tenants, though "big" has room for 2.
    assert wait(limiter.try_acquire("http_post", "big", token())).limit == \
        "http_post concurrency"
    assert limiter.release(a)
    grant(limiter.try_acquire("http_post", "big", token()))


def test_tenant_rate_limits_are_separate(backend: Backend) -> None:
    limiter = backend.make({"http_post": {"tenants": {"*": {"rate_per_s": 1, "burst": 1}}}})
    grant(limiter.try_acquire("http_post", "acme", token()))
    assert wait(limiter.try_acquire("http_post", "acme", token())).limit == \
        "http_post tenant 'acme' rate"
    grant(limiter.try_acquire("http_post", "globex", token()))


def test_unconfigured_activities_are_not_limited(backend: Backend) -> None:
    limiter = backend.make({"http_post": {"concurrency": 1}})
    g = grant(limiter.try_acquire("resize_image", "acme", "t"))
    assert not g.limited and limiter.release(g) is False and limiter.refresh(g) is False


def test_refresh_keeps_a_long_call_its_slot(backend: Backend) -> None:
    limiter = backend.make({"http_post": {"concurrency": 1, "lease_s": 0.25}})
    g = grant(limiter.try_acquire("http_post", "acme", token()))
    for _ in range(3):
        time.sleep(0.15)
        assert limiter.refresh(g) is True
    wait(limiter.try_acquire("http_post", "acme", token()))  # 0.45 s in: still held
    assert limiter.release(g) is True
    assert limiter.refresh(g) is False
