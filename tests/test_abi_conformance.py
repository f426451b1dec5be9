"""One conformance suite over every ABI: core-v1 (C), wasi-command (C), component-v1
(Python and JavaScript). Each guest implements the same operations
(tests/component_guests/conf_ops.h, conf_py.py, conf_js.js) and is built by the real
toolchain; the suite checks echo, schemas, limits and capabilities (outbound HTTP against a
real loopback server included) the same way for all, and that the call after every
failure works."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from component_builds import built, executor_at, upload
from servers import HttpTestServer, Response, closed_port

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


# -- outbound HTTP through the host capability (a real loopback server) ----------------------
#
# Every ABI offers it: core-v1 and wasi-command through the C SDK's loom_http (the `loom`
# host calls are linked for commands too), component-v1 through `loom.http`. Version 1.2.0
# of each guest is granted http to the fixture's 127.0.0.1:<port> (allow_private), with a
# host-call deadline of HOST_CALL_MS.

HTTP_VERSION = "1.2.0"
HOST_CALL_MS = 500


@pytest.fixture(scope="module")
def web(ex: Executor, http_server: HttpTestServer) -> HttpTestServer:
    """The loopback server, with every guest's HTTP_VERSION granted to reach it."""
    port = int(http_server.base_url.rsplit(":", 1)[1])
    for name in GUESTS:
        caps = {**built(name)[1].get("capabilities", {}), "http": {
            "allow": [{"scheme": "http", "host": "127.0.0.1", "port": port}],
            "allow_private": True, "max_requests": 4}}
        upload(ex, name, version=HTTP_VERSION, capabilities=caps,
               limits={"host_call_timeout_ms": HOST_CALL_MS})
    return http_server


def call(ex: Executor, guest: str, key: str | None = None, **request: Any) -> Any:
    return ex.execute(guest, {"op": "http", **request}, version=HTTP_VERSION,
                      idempotency_key=key).output


def http_works(ex: Executor, guest: str, web: HttpTestServer) -> None:
    """The next HTTP call after a failure is served normally."""
    assert call(ex, guest, url=web.url("/hello")) == {"status": 200,
                                                      "body": "hello from loopback"}


def test_http_call_reaches_the_server_as_sent(ex: Executor, guest: str,
                                              web: HttpTestServer) -> None:
    web.reset()
    web.route("POST", "/orders/7", Response(201, "créé ✓", {"Content-Type": "text/plain"}))
    body = json.dumps({"amount": 5, "note": "héllo ✓"}, ensure_ascii=False)
    out = call(ex, guest, f"k-http-{guest}", url=web.url("/orders/7?dry=1"), method="POST",
               body=body, headers={"X-Trace": "t-1", "Idempotency-Key": "forged"})
    assert out == {"status": 201, "body": "créé ✓"}
    [seen] = web.requests
    assert (seen.method, seen.path, seen.body) == ("POST", "/orders/7?dry=1", body.encode())
    # the host adds the invocation's key; the guest's own Idempotency-Key is dropped
    assert seen.headers["idempotency-key"] == f"k-http-{guest}"
    assert seen.headers["x-trace"] == "t-1"
    assert seen.headers["user-agent"] == "loom-activity"

    web.reset()  # a GET without a body, and a status the guest passes on as it is
    assert call(ex, guest, "k-get", url=web.url("/status/404")) == {"status": 404,
                                                                    "body": "status 404"}
    [seen] = web.requests
    assert (seen.method, seen.path, seen.body) == ("GET", "/status/404", b"")
    assert seen.headers["idempotency-key"] == "k-get"


def test_http_to_a_host_off_the_allowlist_is_refused(ex: Executor, guest: str,
                                                     web: HttpTestServer) -> None:
    port = int(web.base_url.rsplit(":", 1)[1])
    web.reset()
    for url in (f"http://localhost:{port}/hello",  # same server, a name not on the list
                f"http://127.0.0.1:{closed_port()}/hello",  # same host, another port
                f"https://127.0.0.1:{port}/hello"):  # another scheme
        with pytest.raises(errors.CapabilityDenied) as caught:
            call(ex, guest, url=url, method="POST", body="x")
        assert caught.value.activity == guest
        assert "not on the HTTP allowlist" in caught.value.message
        http_works(ex, guest, web)
    assert [r.path for r in web.requests] == ["/hello"] * 3  # only the calls that worked


def test_http_host_call_deadline(ex: Executor, guest: str, web: HttpTestServer) -> None:
    started = time.monotonic()
    with pytest.raises(errors.GuestError) as caught:
        call(ex, guest, url=web.url("/slow?s=2"))
    took = time.monotonic() - started
    err = caught.value
    assert err.activity == guest and "timed out" in err.message
    assert f"budget was {HOST_CALL_MS} ms" in err.message
    if ABI[guest] == "wasi-command":  # exit code 1, the guest's error JSON on stderr
        assert not err.retryable and '"code":"host_call_failed"' in err.message
    else:
        assert err.retryable and err.details["code"] == "host_call_failed"
    assert HOST_CALL_MS / 1000 <= took < HOST_CALL_MS / 1000 + 0.8, took
    http_works(ex, guest, web)
    works(ex, guest)



def test_http_is_bounded_by_the_activity_deadline(ex: Executor, guest: str,
                                                  web: HttpTestServer) -> None:
    """The request's budget is the call's remaining time when that is shorter; a request
    cut by the activity's own deadline ends the call as `Timeout` (retryable), on time,
    whatever the guest would have made of the failed request."""
    started = time.monotonic()
    with pytest.raises(errors.ActivityError) as caught:
        ex.execute(guest, {"op": "http", "url": web.url("/slow?s=2")}, version=HTTP_VERSION,
                   timeout_ms=300)
    took = time.monotonic() - started
    assert 0.3 <= took < 0.8, took
    assert isinstance(caught.value, errors.Timeout), caught.value
    assert caught.value.retryable
    http_works(ex, guest, web)


SDK_GUESTS = [g if ABI[g] == "component-v1" else pytest.param(g, marks=pytest.mark.skip(
    reason="the C SDK's loom_http takes the body as bytes and the headers as JSON text"))
    for g in GUESTS]


@pytest.mark.parametrize("guest", SDK_GUESTS)
def test_http_sdk_refuses_what_the_host_would_not_send(ex: Executor, guest: str,
                                                       web: HttpTestServer) -> None:
    """A body that is not text was sent as no body at all (the host only sends strings);
    loom.http refuses it, and headers that are not an object, in the guest."""
    web.reset()
    for request, what in (({"body": {"amount": 5}}, "body"), ({"body": 5}, "body"),
                          ({"headers": ["X-Trace"]}, "headers")):
        with pytest.raises(errors.GuestError) as caught:
            call(ex, guest, url=web.url("/echo"), method="POST", **request)
        err = caught.value
        assert err.details["type"] == "TypeError" and f"{what} must be" in err.message
        assert not err.retryable
        http_works(ex, guest, web)
    assert [r.path for r in web.requests] == ["/hello"] * 3
