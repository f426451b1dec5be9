"""Hostile and broken guests: every case must end quickly in the right typed error, leave the
host healthy and never hand a poisoned instance to the next call."""

from __future__ import annotations

import dataclasses
import os
import random
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import guests
import pytest
from guests import check_error, manifest

from runtime import errors
from runtime.executor import Executor

KEY = "order-42"
MiB = 1024 * 1024
QUICK_S = 3.0  # every failure must be reported well within this


@pytest.fixture
def executor(tmp_path: Path) -> Iterator[Executor]:
    with guests.executor_at(tmp_path / "home", secrets={"API_TOKEN": "t0ps3cret"},
                            env={"REGION": "eu-west", "HOME_DIR": "/root"}) as ex:
        yield ex


def assert_healthy(executor: Executor) -> None:
    """A plain echo activity still works on this executor."""
    executor.upload(guests.echo(), manifest("healthy-echo"))
    payload = {"still": "alive", "n": random.randrange(1 << 30)}
    assert executor.execute("healthy-echo", payload).output == payload


def nothing_stored(executor: Executor, name: str) -> None:
    assert executor.registry.versions(name) == []
    assert executor.registry.blob.list("wasm/") == []
    assert executor.registry.blob.list("manifests/") == []


def hostile_run(executor: Executor, name: str, wasm: bytes, *, payload: Any = None,
                limits: dict[str, Any] | None = None,
                capabilities: dict[str, Any] | None = None, **fields: Any) -> errors.LoomError:
    """Warm one pooled instance with a benign `{}` call, run the hostile call on it, and
    check the poisoned instance is retired and the next call gets a fresh one."""
    executor.upload(wasm, manifest(name, limits=limits, capabilities=capabilities,
                                   reuse_instances=True, **fields))
    sha = executor.registry.get(name).sha256
    pool_key = (name, "1.0.0", sha, "")
    warm = executor.execute(name, {})
    assert not warm.reused_instance
    assert executor.pool.idle_count(pool_key) == 1
    before = dataclasses.replace(executor.pool.stats)
    started = time.monotonic()
    with pytest.raises(errors.LoomError) as info:
        executor.execute(name, {"go": 1} if payload is None else payload, idempotency_key=KEY)
    assert time.monotonic() - started < QUICK_S
    stats = executor.pool.stats
    assert stats.reused == before.reused + 1, "the hostile call should have run on the warm one"
    assert stats.retired == before.retired + 1, "the poisoned instance must be retired"
    assert executor.pool.idle_count(pool_key) == 0
    after = executor.execute(name, {})
    assert not after.reused_instance
    assert stats.created == before.created + 1
    assert executor.pool.idle_count(pool_key) == 1
    assert_healthy(executor)
    return info.value


# -- runaway guests ----------------------------------------------------------------------------

def test_infinite_loop_times_out(executor: Executor) -> None:
    started = time.monotonic()
    exc = hostile_run(executor, "spin", guests.infinite_loop(), limits={"timeout_ms": 300})
    check_error(exc, errors.Timeout, code="timeout", activity="spin", key=KEY, retryable=True,
                mentions=("300 ms",))
    assert time.monotonic() - started < QUICK_S


def test_infinite_loop_with_fuel_runs_out_of_fuel(executor: Executor) -> None:
    exc = hostile_run(executor, "burn", guests.infinite_loop(),
                      limits={"fuel": 2_000_000, "timeout_ms": 10_000})
    check_error(exc, errors.OutOfFuel, code="out_of_fuel", activity="burn", key=KEY,
                mentions=("2000000", "fuel"))


def test_memory_bomb_hits_the_memory_limit(executor: Executor) -> None:
    exc = hostile_run(executor, "bomb", guests.memory_bomb(), limits={"memory_bytes": 2 * MiB})
    check_error(exc, errors.MemoryLimitExceeded, code="memory_limit", activity="bomb", key=KEY,
                mentions=(str(2 * MiB),))


def test_initial_memory_above_the_limit(executor: Executor) -> None:
    executor.upload(guests.big_initial_memory(pages=64), manifest(
        "fat", limits={"memory_bytes": 2 * MiB}, reuse_instances=True))
    with pytest.raises(errors.LoomError) as info:
        executor.execute("fat", {}, idempotency_key=KEY)
    check_error(info.value, errors.MemoryLimitExceeded, code="memory_limit", activity="fat",
                key=KEY, mentions=(str(2 * MiB),))
    assert executor.pool.idle_count() == 0
    assert executor.pool.stats.created == 0
    assert_healthy(executor)


def test_the_same_module_fits_a_larger_limit(executor: Executor) -> None:
    """Control for the test above: 64 pages are fine under a 8 MiB limit."""
    executor.upload(guests.big_initial_memory(pages=64),
                    manifest("fat", limits={"memory_bytes": 8 * MiB}))
    result = executor.execute("fat", {"a": 1})
    assert result.output == {"a": 1}
    assert result.memory_bytes == 4 * MiB


def test_deep_recursion_overflows_the_stack(executor: Executor) -> None:
    exc = hostile_run(executor, "deep", guests.deep_recursion())
    check_error(exc, errors.StackOverflow, code="stack_overflow", activity="deep", key=KEY,
                mentions=("stack",))


def test_plain_trap_is_a_trap(executor: Executor) -> None:
    exc = hostile_run(executor, "trap", guests.trapper())
    check_error(exc, errors.Trap, code="trap", activity="trap", key=KEY,
                mentions=("trapped",))
    assert "unreachable" in str(exc.details)


def test_bug_trap_message_names_the_trap_reason(executor: Executor) -> None:
    executor.upload(guests.trapper(), manifest("trap"))
    with pytest.raises(errors.Trap) as info:
        executor.execute("trap", {"go": 1})
    assert "unreachable" in info.value.message



def test_initialize_that_never_returns_times_out(executor: Executor) -> None:
    executor.upload(guests.initialize_loop(), manifest(
        "slow-init", limits={"timeout_ms": 250}, reuse_instances=True))
    started = time.monotonic()
    with pytest.raises(errors.LoomError) as info:
        executor.execute("slow-init", {}, idempotency_key=KEY)
    assert time.monotonic() - started < QUICK_S
    check_error(info.value, errors.Timeout, code="timeout", activity="slow-init", key=KEY,
                retryable=True, mentions=("250 ms",))
    assert executor.pool.idle_count() == 0
    assert_healthy(executor)


@pytest.mark.parametrize("ptr, length", [(0x7FFFFF00, 512), (-16, 8), (100, 2 * 1024 * 1024)],
                         ids=["beyond-memory", "negative", "too-long"])
def test_host_call_request_out_of_bounds(executor: Executor, ptr: int, length: int) -> None:
    exc = hostile_run(executor, "poke", guests.host_call_out_of_bounds(ptr, length),
                      capabilities={"log": True})
    check_error(exc, errors.Trap, code="trap", activity="poke", key=KEY,
                mentions=("host_call", "out of bounds"))


def test_host_result_destination_out_of_bounds(executor: Executor) -> None:
    exc = hostile_run(executor, "poke", guests.host_result_out_of_bounds(0x7FFFFFF0),
                      payload={"op": "idempotency_key"})
    check_error(exc, errors.Trap, code="trap", activity="poke", key=KEY,
                mentions=("host_result", "out of bounds"))

# -- bad outputs -------------------------------------------------------------------------------

def test_output_larger_than_max_output_bytes(executor: Executor) -> None:
    wasm = guests.raw_result((5000 << 32) | guests.INPUT_BASE)
    exc = hostile_run(executor, "huge", wasm, limits={"max_output_bytes": 4096})
    check_error(exc, errors.OutputTooLarge, code="output_too_large", activity="huge", key=KEY,
                mentions=("5000", "max_output_bytes=4096"))


@pytest.mark.parametrize("ptr", [0xFFFF0000, 2 * 65536 - 4], ids=["far", "straddling-end"])
def test_output_pointer_out_of_bounds(executor: Executor, ptr: int) -> None:
    exc = hostile_run(executor, "wild", guests.raw_result((16 << 32) | ptr))
    check_error(exc, errors.OutputInvalid, code="output_invalid", activity="wild", key=KEY,
                mentions=("outside linear memory", str(ptr)))


@pytest.mark.parametrize("text", [b"not json", b'{"a":', b"\xff\xfe{}", b"NaN", b'{"a":Infinity}'],
                         ids=["words", "truncated", "bad-utf8", "nan", "infinity"])
def test_output_not_json(executor: Executor, text: bytes) -> None:
    executor.upload(guests.gated_constant(text), manifest("garbage", reuse_instances=True))
    with pytest.raises(errors.LoomError) as info:
        executor.execute("garbage", {"go": 1}, idempotency_key=KEY)
    check_error(info.value, errors.OutputInvalid, code="output_invalid", activity="garbage",
                key=KEY, mentions=("output is not",))
    assert_healthy(executor)


OUTPUT_SCHEMA = {
    "type": "object",
    "properties": {"result": {"type": "object", "properties": {"count": {"type": "integer"}},
                              "required": ["count"]}},
    "required": ["result"],
}


def test_output_violating_the_schema_names_the_field(executor: Executor) -> None:
    executor.upload(guests.gated_constant('{"result":{"count":"many"}}'),
                    manifest("liar", output_schema=OUTPUT_SCHEMA, reuse_instances=True))
    with pytest.raises(errors.LoomError) as info:
        executor.execute("liar", {"go": 1}, idempotency_key=KEY)
    check_error(info.value, errors.OutputInvalid, code="output_invalid", activity="liar",
                key=KEY, mentions=("result.count", "integer"))
    assert_healthy(executor)


def test_output_schema_passes_a_correct_output(executor: Executor) -> None:
    """Control: the schema above accepts a well-formed output."""
    executor.upload(guests.gated_constant('{"result":{"count":3}}'),
                    manifest("honest", output_schema=OUTPUT_SCHEMA))
    assert executor.execute("honest", {"go": 1}).output == {"result": {"count": 3}}


@pytest.mark.parametrize("text, schema", [
    ("not json", {"type": "object"}),
    ('{"result":{"count":"many"}}', OUTPUT_SCHEMA),
], ids=["not-json", "out-of-schema"])
def test_bug_invalid_output_instance_is_not_reused(executor: Executor, text: str,
                                                   schema: dict[str, Any]) -> None:
    executor.upload(guests.gated_constant(text),
                    manifest("bad-out", output_schema=schema, reuse_instances=True))
    with pytest.raises(errors.OutputInvalid):
        executor.execute("bad-out", {"go": 1})
    assert executor.pool.idle_count() == 0
    assert not executor.execute("bad-out", {}, validate=False).reused_instance


# -- forbidden imports and malformed modules: refused at upload, nothing stored ------------------

@pytest.mark.parametrize("module, name, signature", [
    ("env", "system", "(param i32) (result i32)"),
    ("wasi_snapshot_preview1", "sock_accept", "(param i32 i32 i32) (result i32)"),
    ("wasi_snapshot_preview1", "poll_oneoff", "(param i32 i32 i32 i32) (result i32)"),
    ("loom", "spawn_process", "(param i32) (result i32)"),
])
def test_forbidden_import_refused_at_upload(executor: Executor, module: str, name: str,
                                            signature: str) -> None:
    with pytest.raises(errors.LoomError) as info:
        executor.upload(guests.with_import(module, name, signature), manifest("sneaky"))
    check_error(info.value, errors.CapabilityDenied, code="capability_denied", activity="sneaky",
                mentions=(f"{module}.{name}",))
    nothing_stored(executor, "sneaky")
    with pytest.raises(errors.NotFound):
        executor.execute("sneaky", {})
    assert_healthy(executor)


def _random_bytes() -> bytes:
    return random.Random(1234).randbytes(512)


def _garbage_after_magic() -> bytes:
    return b"\0asm\x01\0\0\0" + random.Random(99).randbytes(200)


def _truncated() -> bytes:
    wasm = guests.echo()
    return wasm[: len(wasm) // 2]


MALFORMED = {
    "random-bytes": (_random_bytes, "WebAssembly"),
    "empty": (lambda: b"", "WebAssembly"),
    "garbage-after-magic": (_garbage_after_magic, "compile"),
    "truncated": (_truncated, "compile"),
    "missing-loom_run": (guests.missing_run, "loom_run"),
    "wrong-loom_run-signature": (guests.wrong_run_signature, "loom_run"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_module_refused_at_upload(executor: Executor, case: str) -> None:
    make, mentioned = MALFORMED[case]
    with pytest.raises(errors.LoomError) as info:
        executor.upload(make(), manifest("broken"))
    exc = info.value
    assert type(exc) is errors.ModuleInvalid, f"{type(exc).__name__}: {exc}"
    assert exc.code.value == "module_invalid"
    assert exc.retryable is False
    assert mentioned in exc.message
    nothing_stored(executor, "broken")
    assert_healthy(executor)


@pytest.mark.parametrize("case", ["garbage-after-magic", "truncated"])
def test_bug_uncompilable_module_error_names_the_activity(executor: Executor, case: str) -> None:
    make, _ = MALFORMED[case]
    with pytest.raises(errors.ModuleInvalid) as info:
        executor.upload(make(), manifest("broken"))
    assert (info.value.activity, info.value.version) == ("broken", "1.0.0")


# -- capabilities ------------------------------------------------------------------------------

def test_file_access_without_capability(executor: Executor) -> None:
    exc = hostile_run(executor, "snoop", guests.file_opener("passwd", gate=True))
    check_error(exc, errors.CapabilityDenied, code="capability_denied", activity="snoop",
                key=KEY, mentions=("path_open", "dirs"))


def test_file_access_with_capability_works(executor: Executor, tmp_path: Path) -> None:
    """Control: the same guest opens a file in a granted directory (errno 0), and a missing
    file gives a WASI errno instead of a trap."""
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "hello.txt").write_text("hi")
    dirs = [{"host_path": str(shared), "guest_path": "/data"}]
    executor.upload(guests.file_opener("hello.txt"), manifest("reader", capabilities={
        "dirs": dirs}))
    assert executor.execute("reader", {"go": 1}).output == {"errno": 0}
    executor.upload(guests.file_opener("absent.txt"), manifest("reader2", capabilities={
        "dirs": dirs}))
    assert executor.execute("reader2", {"go": 1}).output["errno"] != 0



def test_granted_directory_that_does_not_exist(executor: Executor, tmp_path: Path) -> None:
    dirs = [{"host_path": str(tmp_path / "missing"), "guest_path": "/data"}]
    executor.upload(guests.file_opener("x"), manifest("reader", capabilities={"dirs": dirs}))
    with pytest.raises(errors.LoomError) as info:
        executor.execute("reader", {}, idempotency_key=KEY)
    check_error(info.value, errors.CapabilityDenied, code="capability_denied", activity="reader",
                key=KEY, mentions=("missing",))
    assert_healthy(executor)

def _probe(executor: Executor, name: str, key: str) -> tuple[Any, ...]:
    out = executor.execute(name, {}, idempotency_key=key).output
    return struct.unpack(guests.CLOCK_PROBE_LAYOUT, bytes.fromhex(out))


def test_clock_without_capability_is_frozen_and_coarse(executor: Executor) -> None:
    """No `clock` grant: realtime = the call's start in whole milliseconds, not moving;
    other clocks read 0; resolution 1 ms; random_get is a deterministic stream per
    (activity, version, idempotency key) that differs between two reads."""
    executor.upload(guests.clock_probe(), manifest("timer", output_schema={"type": "string"}))
    before = time.time_ns()
    rt, rt2, mono, res, rnd1, rnd2, errnos = _probe(executor, "timer", "k1")
    after = time.time_ns()
    assert errnos == 0
    assert rt == rt2, "the default clock is frozen for the whole call"
    assert rt % 1_000_000 == 0, "and coarse: whole milliseconds"
    assert before - before % 1_000_000 <= rt <= after
    assert (mono, res) == (0, 1_000_000)
    assert rnd1 != rnd2 and len({rnd1, rnd2, bytes(16)}) == 3
    again = _probe(executor, "timer", "k1")
    assert again[4:6] == (rnd1, rnd2), "same idempotency key, same random bytes"
    other = _probe(executor, "timer", "k2")
    assert other[4] not in (rnd1, rnd2), "another key, other random bytes"


def test_clock_with_capability_is_the_real_clock(executor: Executor) -> None:
    executor.upload(guests.clock_probe(), manifest("timer", output_schema={"type": "string"},
                                                   capabilities={"clock": True}))
    seen = [_probe(executor, "timer", "k1") for _ in range(3)]
    for rt, rt2, mono, res, _, _, errnos in seen:
        assert errnos == 0
        assert rt2 >= rt and abs(rt - time.time_ns()) < 60 * 10**9
        assert mono > 0 and res < 1_000_000
    assert len({s[1] for s in seen}) == 3, "the real clock moves (ns resolution)"
    assert len({s[4] for s in seen}) == 3, "real randomness, even for the same key"


def test_unmodified_command_reading_the_clock_at_start_up_runs(executor: Executor) -> None:
    executor.upload(guests.wasi_clock_echo(), manifest("wclock", abi="wasi-command"))
    assert executor.execute("wclock", {"a": 1}).output == {"a": 1}


@pytest.mark.parametrize("request_, capabilities, mentions", [
    ({"op": "env", "name": "HOME_DIR"}, {"env": ["REGION"]}, ("HOME_DIR", "not granted")),
    ({"op": "env", "name": "REGION"}, None, ("REGION", "not granted")),
    ({"op": "secret", "name": "API_TOKEN"}, {"secrets": ["OTHER"]}, ("API_TOKEN", "not granted")),
    ({"op": "secret", "name": "REGION"}, {"env": ["REGION"]},
     ("REGION", "not granted")),
    ({"op": "log", "message": "hi"}, None, ("log",)),
    ({"op": "http", "method": "GET", "url": "https://example.com/"}, None, ("http",)),
    ({"op": "http", "method": "GET", "url": "https://evil.example.net/steal"},
     {"http": {"allow": [{"host": "example.com"}]}},
     ("evil.example.net", "allowlist")),
    ({"op": "http", "method": "GET", "url": "http://example.com/"},
     {"http": {"allow": [{"host": "example.com"}]}},
     ("example.com:80", "allowlist")),
    ({"op": "http", "method": "GET", "url": "https://example.com:8443/"},
     {"http": {"allow": [{"host": "example.com"}]}},
     ("example.com:8443", "allowlist")),
], ids=["env-other", "env-none", "secret-other", "secret-as-env", "log", "http-none",
        "http-host", "http-scheme", "http-port"])
def test_host_call_without_capability(executor: Executor, request_: dict[str, Any],
                                      capabilities: dict[str, Any] | None,
                                      mentions: tuple[str, ...]) -> None:
    exc = hostile_run(executor, "proxy", guests.host_proxy(), payload=request_,
                      capabilities=capabilities)
    check_error(exc, errors.CapabilityDenied, code="capability_denied", activity="proxy",
                key=KEY, mentions=mentions)


class _Recorder(BaseHTTPRequestHandler):
    hits: list[str]

    def do_GET(self) -> None:
        self.hits.append(self.path)
        body = b'{"pong":true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@contextmanager
def recording_server() -> Iterator[tuple[int, list[str]]]:
    hits: list[str] = []
    handler = type("Handler", (_Recorder,), {"hits": hits})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], hits
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_http_to_private_address_needs_allow_private(executor: Executor) -> None:
    with recording_server() as (port, hits):
        allow = [{"scheme": "http", "host": "127.0.0.1", "port": port}]
        url = f"http://127.0.0.1:{port}/ping"
        exc = hostile_run(executor, "ssrf", guests.host_proxy(),
                          payload={"op": "http", "method": "GET", "url": url},
                          capabilities={"http": {"allow": allow}})
        check_error(exc, errors.CapabilityDenied, code="capability_denied", activity="ssrf",
                    key=KEY, mentions=("127.0.0.1", "allow_private"))
        assert hits == [], "no request may reach a private address without allow_private"

        # control: the same request with allow_private reaches the server
        executor.upload(guests.host_proxy(), manifest("ssrf-ok", capabilities={
            "http": {"allow": allow, "allow_private": True}}))
        out = executor.execute("ssrf-ok", {"op": "http", "method": "GET", "url": url}).output
        assert out["ok"] is True and out["status"] == 200
        assert hits == ["/ping"]


def test_localhost_name_resolving_to_loopback_is_private(executor: Executor) -> None:
    with recording_server() as (port, hits):
        allow = [{"scheme": "http", "host": "localhost", "port": port}]
        executor.upload(guests.host_proxy(), manifest("ssrf2", capabilities={
            "http": {"allow": allow}}))
        with pytest.raises(errors.LoomError) as info:
            executor.execute("ssrf2", {"op": "http", "url": f"http://localhost:{port}/"},
                             idempotency_key=KEY)
        check_error(info.value, errors.CapabilityDenied, code="capability_denied",
                    activity="ssrf2", key=KEY, mentions=("allow_private",))
        assert hits == []


# -- inputs ------------------------------------------------------------------------------------

INPUT_SCHEMA = {
    "type": "object",
    "properties": {"order": {"type": "object", "properties": {"qty": {"type": "integer",
                                                                      "minimum": 1}},
                             "required": ["qty"], "additionalProperties": False}},
    "required": ["order"],
}


@pytest.mark.parametrize("bad", [{"s": {1, 2}}, {"x": float("nan")}, {"x": float("inf")},
                                 {"o": object()}, b"bytes"],
                         ids=["set", "nan", "inf", "object", "bytes"])
def test_input_not_json_serializable(executor: Executor, bad: Any) -> None:
    executor.upload(guests.counter(), manifest("count", reuse_instances=True))
    with pytest.raises(errors.LoomError) as info:
        executor.execute("count", bad, idempotency_key=KEY)
    check_error(info.value, errors.InputInvalid, code="input_invalid", activity="count",
                key=KEY, mentions=("JSON",))
    assert executor.pool.stats.created == 0, "the guest must not have been instantiated"
    assert executor.execute("count", {}).output == {"count": 1}


@pytest.mark.parametrize("bad, path", [
    ({"order": {"qty": "3"}}, "order.qty"),
    ({"order": {"qty": True}}, "order.qty"),
    ({"order": {"qty": 0}}, "order.qty"),
    ({"order": {"qty": 1, "extra": 1}}, "order.extra"),
    ({"order": {}}, "order.qty"),
    ({}, "order"),
    ([1, 2], "<root>"),
], ids=["string-for-int", "bool-for-int", "below-minimum", "extra-field", "missing-nested",
        "missing", "not-an-object"])
def test_input_violating_the_schema_never_reaches_the_guest(executor: Executor, bad: Any,
                                                            path: str) -> None:
    executor.upload(guests.counter(), manifest("count", input_schema=INPUT_SCHEMA,
                                               reuse_instances=True))
    good = {"order": {"qty": 2}}
    assert executor.execute("count", good).output == {"count": 1}
    with pytest.raises(errors.LoomError) as info:
        executor.execute("count", bad, idempotency_key=KEY)
    check_error(info.value, errors.InputInvalid, code="input_invalid", activity="count",
                key=KEY, mentions=(path,))
    assert info.value.details, "structured details expected"
    # the guest counts its calls: had it run on the bad input, this would be 3
    second = executor.execute("count", good)
    assert second.reused_instance
    assert second.output == {"count": 2}
    assert executor.pool.stats.created == 1


def test_input_larger_than_max_input_bytes(executor: Executor) -> None:
    executor.upload(guests.counter(), manifest("count", limits={"max_input_bytes": 64},
                                               reuse_instances=True))
    with pytest.raises(errors.LoomError) as info:
        executor.execute("count", {"blob": "x" * 100}, idempotency_key=KEY)
    check_error(info.value, errors.InputTooLarge, code="input_too_large", activity="count",
                key=KEY, mentions=("max_input_bytes=64", "111"))
    assert executor.pool.stats.created == 0
    assert executor.execute("count", {"blob": "x" * 40}).output == {"count": 1}


# -- guest-reported errors ---------------------------------------------------------------------

@pytest.mark.parametrize("retryable", [True, False])
def test_guest_error_result_carries_retryable(executor: Executor, retryable: bool) -> None:
    body = f'{{"message":"upstream said no","retryable":{str(retryable).lower()},"code":"E42"}}'
    executor.upload(guests.constant(body, error=True), manifest("refuser"))
    with pytest.raises(errors.LoomError) as info:
        executor.execute("refuser", {}, idempotency_key=KEY)
    check_error(info.value, errors.GuestError, code="guest_error", activity="refuser", key=KEY,
                retryable=retryable, mentions=("upstream said no",))
    assert info.value.details == {"code": "E42"}
    assert_healthy(executor)


def test_guest_error_with_unparseable_body(executor: Executor) -> None:
    executor.upload(guests.constant("kaput", error=True), manifest("refuser"))
    with pytest.raises(errors.LoomError) as info:
        executor.execute("refuser", {}, idempotency_key=KEY)
    check_error(info.value, errors.GuestError, code="guest_error", activity="refuser", key=KEY,
                mentions=("kaput",))


# -- WASI command programs ---------------------------------------------------------------------

def wasi_manifest(name: str, **limits: Any) -> dict[str, Any]:
    return manifest(name, abi="wasi-command", limits=limits or None)


def test_wasi_command_echo_works(executor: Executor) -> None:
    executor.upload(guests.wasi_echo(), wasi_manifest("wecho"))
    assert executor.execute("wecho", {"a": [1, "two"]}).output == {"a": [1, "two"]}


def test_wasi_nonzero_exit_is_a_guest_error_with_stderr_tail(executor: Executor) -> None:
    stderr = "BEGIN-OF-LOG " + "." * 5000 + " fatal: disk on fire"
    executor.upload(guests.wasi_fail(stderr, 3), wasi_manifest("crash"))
    with pytest.raises(errors.LoomError) as info:
        executor.execute("crash", {}, idempotency_key=KEY)
    exc = info.value
    check_error(exc, errors.GuestError, code="guest_error", activity="crash", key=KEY,
                mentions=("code 3", "fatal: disk on fire"))
    assert "BEGIN-OF-LOG" not in exc.message, "only the tail of stderr belongs in the message"
    assert exc.details["exit_code"] == 3
    assert_healthy(executor)


def test_wasi_stdout_flood(executor: Executor) -> None:
    executor.upload(guests.wasi_flood(), wasi_manifest("flood", max_output_bytes=10_000,
                                                       timeout_ms=5_000))
    started = time.monotonic()
    with pytest.raises(errors.LoomError) as info:
        executor.execute("flood", {}, idempotency_key=KEY)
    assert time.monotonic() - started < QUICK_S
    check_error(info.value, errors.OutputTooLarge, code="output_too_large", activity="flood",
                key=KEY, mentions=("max_output_bytes=10000",))
    assert_healthy(executor)


def test_wasi_flood_ignoring_write_errors_stops_at_the_cap(executor: Executor) -> None:
    """A guest that keeps writing after refused writes is stopped at its first write past
    the cap, with the non-retryable OutputTooLarge, long before its deadline."""
    executor.upload(guests.wasi_flood_forever(), wasi_manifest(
        "flood", max_output_bytes=10_000, timeout_ms=60_000))
    started = time.monotonic()
    with pytest.raises(errors.LoomError) as info:
        executor.execute("flood", {}, idempotency_key=KEY)
    elapsed = time.monotonic() - started
    check_error(info.value, errors.OutputTooLarge, code="output_too_large", activity="flood",
                key=KEY, mentions=("max_output_bytes=10000", "after 8192"))
    assert elapsed < 0.5, f"took {elapsed * 1000:.0f} ms"
    assert_healthy(executor)


def test_wasi_infinite_loop_times_out(executor: Executor) -> None:
    executor.upload(guests.wasi_loop(), wasi_manifest("wspin", timeout_ms=250))
    started = time.monotonic()
    with pytest.raises(errors.LoomError) as info:
        executor.execute("wspin", {}, idempotency_key=KEY)
    assert time.monotonic() - started < QUICK_S
    check_error(info.value, errors.Timeout, code="timeout", activity="wspin", key=KEY,
                retryable=True, mentions=("250 ms",))
    assert_healthy(executor)


# -- tampered storage --------------------------------------------------------------------------

def _cache_files(home: Path) -> list[Path]:
    return sorted((home / "cache").glob("*.cwasm"))


def test_tampered_disk_cache_is_rejected_and_replaced(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with guests.executor_at(home) as ex:
        ex.upload(guests.echo(), manifest("echo"))
        assert ex.execute("echo", {"n": 1}).output == {"n": 1}
    [cached] = _cache_files(home)
    tampered = bytearray(cached.read_bytes())
    tampered[len(tampered) // 2] ^= 0x01
    cached.write_bytes(bytes(tampered))

    with guests.executor_at(home) as ex:
        assert ex.execute("echo", {"n": 2}).output == {"n": 2}
        assert ex.modules.stats.rejected == 1
        assert ex.modules.stats.disk_hits == 0
        assert ex.modules.stats.compiles == 1
    assert _cache_files(home) == [cached]
    assert cached.read_bytes() != bytes(tampered)

    with guests.executor_at(home) as ex:  # the replacement is a valid entry
        assert ex.execute("echo", {"n": 3}).output == {"n": 3}
        assert (ex.modules.stats.disk_hits, ex.modules.stats.rejected) == (1, 0)
        assert ex.modules.stats.compiles == 0


def test_truncated_disk_cache_file_is_rejected(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with guests.executor_at(home) as ex:
        ex.upload(guests.echo(), manifest("echo"))
    [cached] = _cache_files(home)
    cached.write_bytes(cached.read_bytes()[:10])
    with guests.executor_at(home) as ex:
        assert ex.execute("echo", {"n": 1}).output == {"n": 1}
        assert ex.modules.stats.rejected == 1


def test_cache_file_from_another_installation_is_rejected(tmp_path: Path) -> None:
    homes = [tmp_path / "a", tmp_path / "b"]
    for home in homes:
        with guests.executor_at(home) as ex:
            ex.upload(guests.echo(), manifest("echo"))
            assert ex.execute("echo", {}).output == {}
    assert (homes[0] / "cache.key").read_bytes() != (homes[1] / "cache.key").read_bytes()
    [foreign] = _cache_files(homes[0])
    [local] = _cache_files(homes[1])
    assert foreign.name == local.name
    local.write_bytes(foreign.read_bytes())
    with guests.executor_at(homes[1]) as ex:
        assert ex.execute("echo", {"n": 1}).output == {"n": 1}
        assert ex.modules.stats.rejected == 1
        assert ex.modules.stats.compiles == 1
    assert local.read_bytes() != foreign.read_bytes()


def _tamper_blob(home: Path) -> None:
    with guests.executor_at(home) as ex:
        up = ex.upload(guests.echo(), manifest("echo"))
    blob = home / "blobs" / "wasm" / f"{up.manifest.sha256}.wasm"
    assert blob.is_file()
    blob.write_bytes(guests.constant('{"evil":true}'))
    for cached in _cache_files(home):  # force a fetch from the blob store
        cached.unlink()


def test_blob_not_matching_its_sha256_is_an_integrity_error(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _tamper_blob(home)
    with guests.executor_at(home) as ex:
        with pytest.raises(errors.LoomError) as info:
            ex.execute("echo", {"n": 1}, idempotency_key=KEY)
        check_error(info.value, errors.IntegrityError, code="integrity", activity="echo",
                    mentions=("sha256",))
        assert ex.modules.stats.compiles == 0, "tampered bytes must never be compiled"
        assert _cache_files(home) == []
        assert ex.pool.stats.created == 0


def test_bug_integrity_error_names_the_idempotency_key(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _tamper_blob(home)
    with guests.executor_at(home) as ex, pytest.raises(errors.IntegrityError) as info:
        ex.execute("echo", {"n": 1}, idempotency_key=KEY)
    assert info.value.idempotency_key == KEY


# -- a guest's manifest must not be able to take the host process down -------------------------

_CRASH_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    import guests
    with guests.executor_at(Path({home!r})) as ex:
        ex.upload(guests.echo(), guests.manifest("plain"))
        ex.upload(guests.echo(), guests.manifest("{name}", limits={limits!r}))
        assert ex.execute("plain", {{"a": 1}}).output == {{"a": 1}}
        assert ex.execute("{name}", {{"b": 2}}).output == {{"b": 2}}
    print("survived")
""")


@pytest.mark.parametrize("limits", [{"fuel": 1_000_000}, {"stack_bytes": 128 * 1024}],
                         ids=["fuel", "stack_bytes"])
def test_bug_second_engine_config_aborts_the_process(tmp_path: Path,
                                                     limits: dict[str, Any]) -> None:
    script = _CRASH_SCRIPT.format(tests=str(Path(__file__).parent), home=str(tmp_path / "h"),
                                  name="tuned", limits=limits)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).parents[1],
                          env={**os.environ, "RUST_BACKTRACE": "0"})
    assert proc.returncode == 0, f"exit code {proc.returncode}: {proc.stderr[-1000:]}"
    assert "survived" in proc.stdout
