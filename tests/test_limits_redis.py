"""Fleet-wide limits on a real redis-server: several processes, a killed holder, key layout on
Redis Cluster slots, and what a wiped Redis does."""

from __future__ import annotations

import multiprocessing
import os
import time
import uuid
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from runtime import errors
from runtime.limits import Grant, Wait, limiter_from_settings
from runtime.limits.config import limits_from_dict
from runtime.limits.redis_limiter import RedisLimiter

pytestmark = pytest.mark.integration

CONFIG: dict[str, Any] = {
    "http_post": {"concurrency": 4, "rate_per_s": 50, "burst": 10, "lease_s": 10,
                  "tenants": {"acme": {"concurrency": 2}, "*": {"rate_per_s": 5}}},
    "send_email": {"concurrency": 1},
}


def _limiter(url: str, prefix: str, config: dict[str, Any] = CONFIG) -> RedisLimiter:
    return RedisLimiter(limits_from_dict(config), redis.Redis.from_url(url), prefix=prefix)


def _hammer(url: str, prefix: str, seconds: float, in_flight: Any, peak: Any, calls: Any,
            ready: Any) -> None:
    """A worker process: take a slot, count it in the shared counter, hold it briefly."""
    import threading

    limiter = _limiter(url, prefix, {"send_email": {"concurrency": 2, "lease_s": 10}})
    ready.wait()
    stop = time.monotonic() + seconds

    def loop() -> None:
        while time.monotonic() < stop:
            got = limiter.try_acquire("send_email", "", uuid.uuid4().hex)
            if isinstance(got, Wait):
                time.sleep(min(got.retry_after_s, 0.002))
                continue
            with in_flight.get_lock():
                in_flight.value += 1
                peak.value = max(peak.value, in_flight.value)
                calls.value += 1
            time.sleep(0.002)
            with in_flight.get_lock():
                in_flight.value -= 1
            limiter.release(got)

    threads = [threading.Thread(target=loop) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_concurrency_holds_across_two_processes(redis_server: Any) -> None:
    ctx = multiprocessing.get_context("spawn")
    in_flight, peak, calls = ctx.Value("i", 0), ctx.Value("i", 0), ctx.Value("i", 0)
    ready = ctx.Event()
    prefix = f"test{uuid.uuid4().hex[:8]}:limit"
    procs = [ctx.Process(target=_hammer, args=(redis_server.url, prefix, 1.0, in_flight, peak,
                                              calls, ready)) for _ in range(2)]
    for p in procs:
        p.start()
    ready.set()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    print(f"two processes x 2 threads: {calls.value} calls, peak in flight {peak.value}")
    assert peak.value == 2 and calls.value > 50


def _take_and_die(url: str, prefix: str) -> None:
    limiter = _limiter(url, prefix, {"send_email": {"concurrency": 1, "lease_s": 0.5}})
    assert isinstance(limiter.try_acquire("send_email", "", "doomed"), Grant)
    os._exit(9)  # no release, no cleanup: a worker killed mid-call


def test_a_killed_workers_slot_frees_itself(redis_server: Any) -> None:
    prefix = f"test{uuid.uuid4().hex[:8]}:limit"
    proc = multiprocessing.get_context("spawn").Process(
        target=_take_and_die, args=(redis_server.url, prefix))
    proc.start()
    proc.join(30)
    assert proc.exitcode == 9
    limiter = _limiter(redis_server.url, prefix, {"send_email": {"concurrency": 1,
                                                                  "lease_s": 0.5}})
    blocked = limiter.try_acquire("send_email", "", "survivor")
    assert isinstance(blocked, Wait) and blocked.retry_after_s <= 0.5
    time.sleep(blocked.retry_after_s + 0.02)
    assert isinstance(limiter.try_acquire("send_email", "", "survivor"), Grant)
    # And the dead holder's entries are gone, not just outvoted.
    client = redis.Redis.from_url(redis_server.url)
    assert client.hkeys(f"{prefix}:{{send_email}}:grants") == [b"survivor"]


def test_every_key_of_a_limit_is_in_one_cluster_slot(redis_server: Any) -> None:
    prefix = f"test{uuid.uuid4().hex[:8]}:limit"
    limiter = _limiter(redis_server.url, prefix)
    tenants = ("acme", "globex", "", "we:ird{x}")
    for tenant in tenants:
        assert isinstance(limiter.try_acquire("http_post", tenant, uuid.uuid4().hex), Grant)
    client = redis.Redis.from_url(redis_server.url)
    written = [k.decode() for k in client.scan_iter(f"{prefix}:*")]
    assert len(written) >= 9  # grants, holders, rate, and holders + rate for 3+ tenants
    assert {key_slot(k.encode()) for k in written} == {key_slot(b"http_post")}
    planned = limiter.keys_for("http_post", "acme")
    assert f"{prefix}:{{http_post}}:t:acme:holders" in planned
    assert set(written) <= {k for t in tenants for k in limiter.keys_for("http_post", t)}
    assert {key_slot(k.encode()) for k in limiter.keys_for("send_email", "x")} == \
        {key_slot(b"send_email")}


def test_idle_limits_leave_no_keys_behind(redis_server: Any) -> None:
    prefix = f"test{uuid.uuid4().hex[:8]}:limit"
    limiter = _limiter(redis_server.url, prefix,
                       {"http_post": {"concurrency": 1, "rate_per_s": 100, "lease_s": 0.05}})
    assert isinstance(limiter.try_acquire("http_post", "", "t"), Grant)  # never released
    client = redis.Redis.from_url(redis_server.url)
    assert all(0 < client.pttl(k) <= 1100 for k in client.scan_iter(f"{prefix}:*"))


def test_a_renewed_lease_outlives_its_keys_ttl(redis_server: Any) -> None:
    prefix = f"test{uuid.uuid4().hex[:8]}:limit"
    limiter = _limiter(redis_server.url, prefix, {"send_email": {"concurrency": 1,
                                                                  "lease_s": 2}})
    assert isinstance(limiter.try_acquire("send_email", "", "a"), Grant)
    time.sleep(0.3)
    assert isinstance(limiter.try_acquire("send_email", "", "a"), Grant)  # re-run: renewed
    client = redis.Redis.from_url(redis_server.url)
    for kind in ("grants", "holders"):  # the keys live at least as long as the new lease
        assert client.pttl(f"{prefix}:{{send_email}}:{kind}") > 2900


def test_a_wiped_redis_resets_the_limits(redis_server: Any) -> None:
    prefix = f"test{uuid.uuid4().hex[:8]}:limit"
    limiter = _limiter(redis_server.url, prefix)
    held = limiter.try_acquire("send_email", "", "a")
    assert isinstance(held, Grant)
    assert isinstance(limiter.try_acquire("send_email", "", "b"), Wait)
    client = redis.Redis.from_url(redis_server.url)
    client.delete(*client.scan_iter(f"{prefix}:*"))
    client.script_flush()  # as after a restart: the scripts are loaded again on NOSCRIPT
    assert isinstance(limiter.try_acquire("send_email", "", "b"), Grant)  # limits reset
    assert limiter.release(held) is False  # the old grant is simply gone


def test_settings_pick_the_backend(redis_server: Any) -> None:
    text = '{"send_email": {"concurrency": 1}}'
    limiter = limiter_from_settings(text, redis_server.url,
                                    prefix=f"test{uuid.uuid4().hex[:8]}:limit")
    assert isinstance(limiter, RedisLimiter)
    assert isinstance(limiter.try_acquire("send_email", "", "a"), Grant)


def test_redis_down_is_a_storage_error() -> None:
    from servers import closed_port

    limiter = limiter_from_settings('{"send_email": {"concurrency": 1}}',
                                    f"redis://127.0.0.1:{closed_port()}/0")
    with pytest.raises(errors.StorageError, match="send_email"):
        limiter.try_acquire("send_email", "", "a")
