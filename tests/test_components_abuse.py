"""Hostile component guests, in Python and JavaScript (tests/component_guests/conf_*.{py,js},
built by componentize-py and componentize-js): every case ends in the right typed error,
quickly, and the next call on the same executor works."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from component_builds import executor_at, upload

from runtime import errors
from runtime.executor import Executor

QUICK_S = 5.0


@pytest.fixture(scope="module")
def ex(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Executor]:
    with executor_at(tmp_path_factory.mktemp("abuse")) as executor:
        for name in ("conf_py", "conf_js"):
            upload(executor, name)
            upload(executor, name, version="1.2.0",
                   capabilities={"secrets": ["TOKEN"], "log": True, "clock": True})
        yield executor


@pytest.fixture(params=["conf_py", "conf_js"])
def guest(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def abuse(ex: Executor, guest: str, payload: Any, kind: type[errors.LoomError],
          **kw: Any) -> errors.LoomError:
    """Warm an instance, run the hostile call on it, check the error, the time it took,
    that a poisoned instance was retired and that the next call works."""
    tenant = f"t-{guest}-{payload['op']}-{time.monotonic_ns()}"
    ex.execute(guest, {"op": "counter"}, version="1.0.0", tenant=tenant)
    started = time.monotonic()
    with pytest.raises(kind) as caught:
        ex.execute(guest, payload, version="1.0.0", tenant=tenant, **kw)
    assert time.monotonic() - started < QUICK_S
    after = ex.execute(guest, {"op": "counter"}, version="1.0.0", tenant=tenant)
    # a handled guest error keeps the instance (state survives); anything else retires it
    assert after.output == {"count": 2 if kind is errors.GuestError else 1}
    return caught.value


def test_infinite_loop_times_out(ex: Executor, guest: str) -> None:
    err = abuse(ex, guest, {"op": "loop"}, errors.Timeout, timeout_ms=400)
    assert err.retryable


def test_memory_bomb(ex: Executor, guest: str) -> None:
    err = abuse(ex, guest, {"op": "grow"}, errors.MemoryLimitExceeded)
    assert not err.retryable


def test_deep_recursion(ex: Executor, guest: str) -> None:
    abuse(ex, guest, {"op": "recurse"}, errors.StackOverflow)


def test_long_exception_message_is_truncated_with_its_traceback(ex: Executor,
                                                                 guest: str) -> None:
    err = abuse(ex, guest, {"op": "raise", "size": 200_000}, errors.GuestError)
    assert isinstance(err.details, dict)
    assert err.details["type"] in ("ValueError", "Error")
    assert err.message.startswith(f"{err.details['type']}: xxx")
    assert len(err.message) < 2100
    assert 0 < len(err.details["traceback"]) <= 4100
    assert "conf_" in err.details["traceback"]  # it names the guest's own file
    assert not err.retryable


def test_output_past_the_cap(ex: Executor, guest: str) -> None:
    abuse(ex, guest, {"op": "output", "size": 200_000}, errors.OutputTooLarge)


def test_structured_retryable_error(ex: Executor, guest: str) -> None:
    err = abuse(ex, guest, {"op": "fail"}, errors.GuestError)
    assert err.retryable and err.details == {"code": "busy"}


def test_python_cannot_open_files(ex: Executor) -> None:
    err = abuse(ex, "conf_py", {"op": "open", "path": "/etc/passwd"}, errors.GuestError)
    assert err.details["type"] == "FileNotFoundError"  # no preopened directory at all


def test_python_sees_no_environment(ex: Executor) -> None:
    err = abuse(ex, "conf_py", {"op": "environ"}, errors.GuestError)
    assert err.details["type"] == "KeyError" and "HOME" in err.message


def test_python_has_no_sockets(ex: Executor) -> None:
    err = abuse(ex, "conf_py", {"op": "socket", "port": 1}, errors.GuestError)
    assert err.details["type"] == "ModuleNotFoundError" and "socket" in err.message


def test_js_fetch_is_denied(ex: Executor) -> None:
    err = abuse(ex, "conf_js", {"op": "fetch", "url": "http://127.0.0.1:1/"},
                errors.CapabilityDenied)
    assert "loom.http" in err.message


def test_http_without_the_capability_is_denied(ex: Executor, guest: str) -> None:
    abuse(ex, guest, {"op": "http", "url": "http://127.0.0.1:1/"}, errors.CapabilityDenied)


def _time_of(output: dict[str, Any]) -> float:
    return float(output["time"]) if "performance" not in output else output["time"] / 1000


def test_wall_clock_and_random_are_deterministic_without_a_grant(ex: Executor,
                                                                 guest: str) -> None:
    before = time.time()
    first = ex.execute(guest, {"op": "time"}, version="1.0.0").output
    seen = _time_of(first)
    assert before - 1 <= seen <= time.time() + 1
    # the wall clock is the call's start in whole milliseconds
    assert abs(seen * 1000 - round(seen * 1000)) < 1e-3
    # random: a stream derived from the idempotency key, the same for the same key
    a = ex.execute(guest, {"op": "random"}, version="1.0.0", idempotency_key="k-1",
                   tenant="r-a").output
    b = ex.execute(guest, {"op": "random"}, version="1.0.0", idempotency_key="k-1",
                   tenant="r-b").output
    c = ex.execute(guest, {"op": "random"}, version="1.0.0", idempotency_key="k-2",
                   tenant="r-c").output
    field = "urandom" if guest == "conf_py" else "bytes"
    assert a[field] == b[field] != c[field]


def test_the_clock_grant_gives_real_time_and_randomness(ex: Executor, guest: str) -> None:
    field = "urandom" if guest == "conf_py" else "bytes"
    a = ex.execute(guest, {"op": "random"}, version="1.2.0", idempotency_key="k-1",
                   tenant="g-a").output
    b = ex.execute(guest, {"op": "random"}, version="1.2.0", idempotency_key="k-1",
                   tenant="g-b").output
    assert a[field] != b[field]
    seen = _time_of(ex.execute(guest, {"op": "time"}, version="1.2.0").output)
    assert abs(seen - time.time()) < 5


def test_idempotency_key_reaches_the_guest(ex: Executor, guest: str) -> None:
    out = ex.execute(guest, {"op": "key"}, version="1.0.0", idempotency_key="order-7:3")
    assert out.output == {"key": "order-7:3"}
