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
