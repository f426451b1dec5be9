"""Circuit-breaker state shared through a real redis-server: one breaker across workers."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from runtime import errors
from runtime.actors.resilience import Breakers, breakers_from_settings, redis_breaker_storage


def failing() -> Any:
    raise errors.Timeout("upstream too slow", activity="pay")


def test_two_workers_share_one_breaker(redis_server: Any) -> None:
    prefix = f"test:{uuid.uuid4().hex}"
    # pybreaker's Redis storage keeps opened_at in whole seconds: use a reset timeout of
    # seconds, not fractions, or "still open" depends on where in the second it tripped.
    worker_a = Breakers(fail_max=2, reset_timeout=2,
                        storage=redis_breaker_storage(redis_server.url, prefix=prefix))
    worker_b = Breakers(fail_max=2, reset_timeout=2,
                        storage=redis_breaker_storage(redis_server.url, prefix=prefix))
    with pytest.raises(errors.Timeout):
        worker_a.call("pay", failing)
    with pytest.raises(errors.CircuitOpen):  # the second failure trips it
        worker_a.call("pay", failing)
    ran: list[str] = []
    with pytest.raises(errors.CircuitOpen) as info:  # worker B never ran anything
        worker_b.call("pay", lambda: ran.append("b"))
    assert ran == [] and info.value.retryable
    time.sleep(2.1)
    assert worker_b.call("pay", lambda: ran.append("trial") or "ok") == "ok"  # half-open trial
    assert worker_a.get("pay").current_state == "closed"  # closed for everyone
    assert worker_a.call("pay", lambda: "again") == "again"


def test_a_non_retryable_error_does_not_count(redis_server: Any) -> None:
    breakers = Breakers(fail_max=1, reset_timeout=5,
                        storage=redis_breaker_storage(redis_server.url,
                                                      prefix=f"test:{uuid.uuid4().hex}"))

    def bad_input() -> Any:
        raise errors.InputInvalid("caller mistake", activity="pay")

    for _ in range(3):
        with pytest.raises(errors.InputInvalid):
            breakers.call("pay", bad_input)
    assert breakers.get("pay").current_state == "closed"


def test_settings_choose_the_storage() -> None:
    assert breakers_from_settings("memory://", fail_max=3, reset_timeout=1).fail_max == 3
    with pytest.raises(errors.SettingsInvalid, match="LOOM_BREAKER_URL"):
        breakers_from_settings("mysql://x", fail_max=3, reset_timeout=1)


def test_the_half_open_trial_is_one_for_the_fleet(redis_server: Any) -> None:
    """Eight workers find the breaker half-open at once: one of them sends the trial, the
    others fail fast (each used to send its own: eight calls to a service just failing)."""
    import threading

    from runtime.actors.resilience import RedisTrials

    prefix = f"test:{uuid.uuid4().hex}"
    workers = [Breakers(fail_max=1, reset_timeout=1,
                        storage=redis_breaker_storage(redis_server.url, prefix=prefix),
                        trials=RedisTrials(redis_server.url, 30, prefix=prefix))
               for _ in range(8)]
    with pytest.raises(errors.CircuitOpen):
        workers[0].call("svc", failing)  # trips it
    time.sleep(1.2)
    calls: list[int] = []
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def trial() -> str:
        calls.append(1)
        time.sleep(0.3)  # still running while the others look
        return "ok"

    def go(w: Breakers) -> None:
        barrier.wait()
        try:
            outcomes.append(w.call("svc", trial))
        except errors.CircuitOpen:
            outcomes.append("open")

    threads = [threading.Thread(target=go, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(calls) == 1 and sorted(outcomes) == ["ok"] + ["open"] * 7, outcomes
    assert workers[3].call("svc", lambda: "closed now") == "closed now"  # the trial closed it


def test_a_trial_ends_only_its_own_claim(redis_server: Any) -> None:
    """A trial that outlived its claim (the claim lapsed, another worker claimed it) must
    not delete the other worker's claim when it ends."""
    from runtime.actors.resilience import RedisTrials

    prefix = f"test:{uuid.uuid4().hex}"
    a = RedisTrials(redis_server.url, 0.2, prefix=prefix)
    b = RedisTrials(redis_server.url, 30, prefix=prefix)
    assert a.claim("svc") and not b.claim("svc")
    time.sleep(0.3)  # a's claim lapses while its trial still runs
    assert b.claim("svc")
    a.end("svc")
    assert not a.claim("svc")  # b's claim still stands
    b.end("svc")
    assert a.claim("svc")
