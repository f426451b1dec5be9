"""One conformance suite over every ABI: core-v1 (C), wasi-command (C), component-v1
(Python and JavaScript). Each guest implements the same operations
(tests/component_guests/conf_ops.h, conf_py.py, conf_js.js) and is built by the real
toolchain; the suite checks echo, schemas, limits and capabilities the same way for all,
and that the call after every failure works."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from component_builds import built, executor_at, upload

from runtime import errors
from runtime.executor import Executor

GUESTS = ["conf_core", "conf_cmd", "conf_py", "conf_js"]
ABI = {"conf_core": "core-v1", "conf_cmd": "wasi-command", "conf_py": "component-v1",
       "conf_js": "component-v1"}
STRICT = {
    "version": "1.1.0",
    "input_schema": {"type": "object", "properties": {
        "op": {"enum": ["echo", "secret", "output"]}, "value": {"type": "integer"}},
        "required": ["op"]},
    "output_schema": {"type": "object", "required": ["value"]},
}


@pytest.fixture(scope="module")
def ex(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Executor]:
    with executor_at(tmp_path_factory.mktemp("conformance")) as executor:
        for name in GUESTS:
            upload(executor, name)
            upload(executor, name, **STRICT)
        yield executor


@pytest.fixture(params=GUESTS)
def guest(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def works(ex: Executor, guest: str) -> None:
    """The next call after a failure is served normally."""
    payload = {"op": "echo", "n": 7}
    assert ex.execute(guest, payload, version="1.0.0").output == payload


def fails(ex: Executor, guest: str, payload: Any, kind: type[errors.LoomError],
          **kw: Any) -> errors.LoomError:
    with pytest.raises(kind) as caught:
        ex.execute(guest, payload, **kw)
    assert caught.value.activity == guest
    works(ex, guest)
    return caught.value


def test_the_guests_use_the_abi_they_claim(guest: str) -> None:
    assert built(guest)[1]["abi"] == ABI[guest]


def test_echo(ex: Executor, guest: str) -> None:
    payload = {"op": "echo", "text": "héllo ✓", "nested": {"list": [1, 2.5, None, True]}}
    result = ex.execute(guest, payload, version="1.0.0", idempotency_key="k-echo")
    assert result.output == payload
    assert result.idempotency_key == "k-echo"
    assert result.activity == guest


def test_input_against_the_schema_is_refused_before_the_guest_runs(ex: Executor,
                                                                    guest: str) -> None:
    created, reused = ex.pool.stats.created, ex.pool.stats.reused
    with pytest.raises(errors.InputInvalid) as caught:
        ex.execute(guest, {"op": "loop"}, version="1.1.0")
    assert "op" in caught.value.message
    assert (ex.pool.stats.created, ex.pool.stats.reused) == (created, reused)
    works(ex, guest)


def test_output_against_the_schema_is_refused(ex: Executor, guest: str) -> None:
    err = fails(ex, guest, {"op": "echo"}, errors.OutputInvalid, version="1.1.0")
    assert "value" in err.message


def test_deadline(ex: Executor, guest: str) -> None:
    err = fails(ex, guest, {"op": "loop"}, errors.Timeout, version="1.0.0", timeout_ms=300)
    assert err.retryable and "300 ms" in err.message


def test_memory_limit(ex: Executor, guest: str) -> None:
    fails(ex, guest, {"op": "grow"}, errors.MemoryLimitExceeded, version="1.0.0")


def test_output_cap(ex: Executor, guest: str) -> None:
    err = fails(ex, guest, {"op": "output", "size": 100_000}, errors.OutputTooLarge,
                version="1.0.0")
    assert "max_output_bytes=65536" in err.message
    small = ex.execute(guest, {"op": "output", "size": 1000}, version="1.0.0").output
    assert small == {"data": "x" * 1000}


def test_input_cap(ex: Executor, guest: str) -> None:
    fails(ex, guest, {"op": "echo", "pad": "x" * (1 << 20)}, errors.InputTooLarge,
          version="1.0.0")


def test_granted_secret_and_log(ex: Executor, guest: str) -> None:
    assert ex.execute(guest, {"op": "secret", "name": "TOKEN"},
                      version="1.0.0").output == {"value": "s3cret"}
    result = ex.execute(guest, {"op": "log"}, version="1.0.0")
    assert [e["level"] for e in result.logs] == ["info"]
    assert result.logs[0]["message"].startswith("hello from")


def test_ungranted_secret_and_env_are_denied(ex: Executor, guest: str) -> None:
    err = fails(ex, guest, {"op": "secret", "name": "OTHER"}, errors.CapabilityDenied,
                version="1.0.0")
    assert "OTHER" in err.message
    fails(ex, guest, {"op": "env", "name": "REGION"}, errors.CapabilityDenied,
          version="1.0.0")


def test_handler_errors_are_typed(ex: Executor, guest: str) -> None:
    err = fails(ex, guest, {"op": "fail"}, errors.GuestError, version="1.0.0")
    assert "busy, try again" in err.message
    # a WASI command can only exit non-zero: its error is never retryable
    assert err.retryable is (ABI[guest] != "wasi-command")


def test_guests_are_built_from_sources_in_this_repo(tmp_path: Path) -> None:
    for name in GUESTS:
        wasm, manifest = built(name)
        assert wasm[:4] == b"\0asm" and manifest["name"] == name
