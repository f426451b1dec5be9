"""Host side of the component-v1 world: the `loom:activity/host` imports and the WASI shadows.

Like `hostfuncs` for core modules, every function is a raw C callback on wasmtime's
component API (`wasmtime_component_linker_instance_add_func`), not wasmtime-py's
`LinkerInstance.add_func`: that wrapper parks a Python exception in one process-wide
variable (`wasmtime.component._enter.LAST_EXCEPTION`) and re-raises it in whichever call
fails next, possibly another thread's. Here a violation is recorded on the calling
store's `GuestSession` (found through the store's context address) and wasmtime gets a
plain error, which traps the guest.

Shadows over `add_wasip2` (the linker has `allow_shadowing`; a shadow replaces a whole
interface instance, so every function of it is defined):

- `wasi:clocks/wall-clock` (`now`, `resolution`): without the `clock` grant the guest sees
  the call's start, truncated to the millisecond, as in core-v1.
- `wasi:random/random`, `wasi:random/insecure`, `wasi:random/insecure-seed`: without the
  `clock` grant, a deterministic stream (SHAKE-256 over activity, version, idempotency
  key and a counter), as in core-v1.
- `wasi:sockets/instance-network`: always traps with `capability_denied`. Every socket
  operation needs the network resource it returns, so no socket can be opened or any
  name resolved. Outbound HTTP goes through `loom:activity/host.http` and its allowlist.

`wasi:clocks/monotonic-clock` is not shadowed: its `subscribe-*` functions return
pollable resources that only wasmtime can make. Guests read the host's real monotonic
clock (nanoseconds from an arbitrary origin): they can measure durations, not dates.
"""

from __future__ import annotations

import ctypes
import json
import re
from collections.abc import Callable
from ctypes import POINTER, byref, c_void_p
from typing import Any

import wasmtime
from wasmtime import _bindings
from wasmtime import _ffi as ffi

from runtime import errors
from runtime.executor.session import (
    CLOCK_RESOLUTION_NS,
    MAX_REQUEST_BYTES,
    SESSIONS,
    GuestSession,
    host_failure,
)

WORLD_PACKAGE = "loom:activity"
HOST_INTERFACE = "host"
MAX_RANDOM_BYTES = 1024 * 1024

_add_func = _bindings._wasmtime_component_linker_instance_add_func
_add_instance = _bindings._wasmtime_component_linker_instance_add_instance
_val_new = _bindings._wasmtime_component_val_new
_error_new = _bindings._wasmtime_error_new
_NO_FINALIZER = ctypes.CFUNCTYPE(None, c_void_p)()

K_BOOL = ffi.WASMTIME_COMPONENT_BOOL.value
K_U8 = ffi.WASMTIME_COMPONENT_U8.value
K_U32 = ffi.WASMTIME_COMPONENT_U32.value
K_U64 = ffi.WASMTIME_COMPONENT_U64.value
K_STRING = ffi.WASMTIME_COMPONENT_STRING.value
K_LIST = ffi.WASMTIME_COMPONENT_LIST.value
K_RECORD = ffi.WASMTIME_COMPONENT_RECORD.value
K_TUPLE = ffi.WASMTIME_COMPONENT_TUPLE.value
K_OPTION = ffi.WASMTIME_COMPONENT_OPTION.value

Val = Any
"""A `wasmtime_component_val_t` (ctypes structure)."""
HostFn = Callable[[GuestSession, Any, Any], None]
"""(session, args array, results array) -> None."""


# -- values ---------------------------------------------------------------------------------

def get_string(val: Val) -> str:
    if val.kind != K_STRING:
        raise errors.Trap("host function expected a string argument")
    vec = val.of.string
    if not vec.size:
        return ""
    return ctypes.string_at(vec.data, vec.size).decode("utf-8", "replace")


def put_string(val: Val, text: str | bytes) -> None:
    data = text.encode("utf-8") if isinstance(text, str) else text
    val.kind = K_STRING
    val.of.string = ffi.bytes_to_capi(data)


def put_option_string(val: Val, text: str | None) -> None:
    val.kind = K_OPTION
    if text is None:
        val.of.option = POINTER(ffi.wasmtime_component_val_t)()
        return
    inner = ffi.wasmtime_component_val_t()
    put_string(inner, text)
    val.of.option = _val_new(byref(inner))  # moved into a new heap value owned by wasmtime


def put_u64(val: Val, n: int) -> None:
    val.kind = K_U64
    val.of.u64 = n & 0xFFFFFFFFFFFFFFFF


def put_datetime(val: Val, ns: int) -> None:
    """A `wasi:clocks/wall-clock.datetime` record {seconds: u64, nanoseconds: u32}."""
    rec = ffi.wasmtime_component_valrecord_t()
    ffi.wasmtime_component_valrecord_new_uninit(byref(rec), 2)
    for i, (name, kind, value) in enumerate((("seconds", K_U64, ns // 1_000_000_000),
                                             ("nanoseconds", K_U32, ns % 1_000_000_000))):
        entry = rec.data[i]
        entry.name = ffi.str_to_capi(name)
        entry.val.kind = kind
        if kind == K_U64:
            entry.val.of.u64 = value
        else:
            entry.val.of.u32 = value
    val.kind = K_RECORD
    val.of.record = rec


def put_bytes_list(val: Val, data: bytes) -> None:
    """A `list<u8>`."""
    lst = ffi.wasmtime_component_vallist_t()
    ffi.wasmtime_component_vallist_new_uninit(byref(lst), len(data))
    for i, b in enumerate(data):
        lst.data[i].kind = K_U8
        lst.data[i].of.u8 = b
    val.kind = K_LIST
    val.of.list = lst


def put_u64_pair(val: Val, a: int, b: int) -> None:
    tup = ffi.wasmtime_component_valtuple_t()
    ffi.wasmtime_component_valtuple_new_uninit(byref(tup), 2)
    for i, n in enumerate((a, b)):
        tup.data[i].kind = K_U64
        tup.data[i].of.u64 = n & 0xFFFFFFFFFFFFFFFF
    val.kind = K_TUPLE
    val.of.tuple = tup


# -- plumbing -------------------------------------------------------------------------------

def _error(message: str) -> int:
    err = _error_new(message.encode("utf-8", "replace"))
    return ctypes.cast(err, c_void_p).value or 0


def _callback(fn: HostFn, nargs: int, nresults: int) -> Any:
    """`fn` as a wasmtime callback for a function of `nargs` parameters and `nresults`
    results. The linker takes any signature for a name, so a component importing it with
    another (an upload's own WIT) would have `fn` read or write past the arrays: refused."""
    def callback(_env: Any, ctx: Any, _ty: Any, args: Any, given_args: int, results: Any,
                 given_results: int) -> int:
        if given_args != nargs or given_results != nresults:
            return _error(f"host function imported with {given_args} parameter(s) and "
                          f"{given_results} result(s); it has {nargs} and {nresults}")
        session: GuestSession | None = None
        try:
            session = SESSIONS.get(ctypes.cast(ctx, c_void_p).value or 0)
            if session is None:  # pragma: no cover - only if a store outlives its registration
                return _error("host call from an unregistered store")
            fn(session, args, results)
            return 0
        except BaseException as exc:  # nothing may unwind into wasmtime
            return _error(host_failure(session, exc))

    return _bindings.wasmtime_component_func_callback_t(callback)


# -- loom:activity/host ---------------------------------------------------------------------

def _log(session: GuestSession, args: Any, results: Any) -> None:
    fields_text = get_string(args[2])
    try:
        fields = json.loads(fields_text) if fields_text else {}
    except ValueError:
        fields = {"fields": fields_text}
    session.handle({"op": "log", "level": get_string(args[0]),
                            "message": get_string(args[1]),
                            "fields": fields if isinstance(fields, dict) else {}})


def _http(session: GuestSession, args: Any, results: Any) -> None:
    raw = get_string(args[0])
    if len(raw) > MAX_REQUEST_BYTES:
        raise errors.Trap(f"http request of {len(raw)} bytes exceeds {MAX_REQUEST_BYTES}")
    try:
        request = json.loads(raw)
    except ValueError:
        request = None
    if isinstance(request, dict):
        request = {**request, "op": "http"}
    answer = session.handle(request)
    put_string(results[0], json.dumps(answer, separators=(",", ":")))


def _named(op: str) -> HostFn:
    def lookup(session: GuestSession, args: Any, results: Any) -> None:
        answer = session.handle({"op": op, "name": get_string(args[0])})
        value = answer.get("value")
        put_option_string(results[0], None if value is None else str(value))

    return lookup


def _idempotency_key(session: GuestSession, args: Any, results: Any) -> None:
    put_string(results[0], session.idempotency_key or "")


# -- WASI shadows ---------------------------------------------------------------------------

def _wall_now(session: GuestSession, args: Any, results: Any) -> None:
    put_datetime(results[0], session.frozen_time_ns(0))


def _wall_resolution(session: GuestSession, args: Any, results: Any) -> None:
    put_datetime(results[0], CLOCK_RESOLUTION_NS)


def _random_bytes(session: GuestSession, args: Any, results: Any) -> None:
    if args[0].kind != K_U64:
        raise errors.Trap("get-random-bytes expects a u64 length")
    n = args[0].of.u64
    if n > MAX_RANDOM_BYTES:
        raise errors.Trap(f"asked for {n} random bytes (at most {MAX_RANDOM_BYTES})")
    put_bytes_list(results[0], session.random_bytes(n))


def _random_u64(session: GuestSession, args: Any, results: Any) -> None:
    put_u64(results[0], int.from_bytes(session.random_bytes(8), "little"))


def _random_seed(session: GuestSession, args: Any, results: Any) -> None:
    data = session.random_bytes(16)
    put_u64_pair(results[0], int.from_bytes(data[:8], "little"), int.from_bytes(data[8:], "little"))


def _denied(reason: str) -> HostFn:
    def deny(session: GuestSession, args: Any, results: Any) -> None:
        raise errors.CapabilityDenied(reason)

    return deny


HOST_FUNCS: dict[str, Any] = {
    "log": _callback(_log, 3, 0),
    "http": _callback(_http, 1, 1),
    "secret": _callback(_named("secret"), 1, 1),
    "env": _callback(_named("env"), 1, 1),
    "idempotency-key": _callback(_idempotency_key, 0, 1),
}
DETERMINISTIC: dict[str, dict[str, Any]] = {
    "wasi:clocks/wall-clock": {"now": _callback(_wall_now, 0, 1),
                               "resolution": _callback(_wall_resolution, 0, 1)},
    "wasi:random/random": {"get-random-bytes": _callback(_random_bytes, 1, 1),
                           "get-random-u64": _callback(_random_u64, 0, 1)},
    "wasi:random/insecure": {"get-insecure-random-bytes": _callback(_random_bytes, 1, 1),
                             "get-insecure-random-u64": _callback(_random_u64, 0, 1)},
    "wasi:random/insecure-seed": {"insecure-seed": _callback(_random_seed, 0, 1)},
}
ALWAYS_DENIED: dict[str, dict[str, Any]] = {
    "wasi:sockets/instance-network": {"instance-network": _callback(_denied(
        "sockets are not available to activities (use loom.http with the 'http' "
        "capability)"), 0, 1)},
}

_VERSIONED = re.compile(r"^(?P<base>[a-z0-9-]+:[a-z0-9-]+/[a-z0-9-]+)(?:@(?P<version>.+))?$")


def split_name(name: str) -> tuple[str, str | None]:
    """'wasi:clocks/wall-clock@0.2.9' -> ('wasi:clocks/wall-clock', '0.2.9')."""
    m = _VERSIONED.match(name)
    if m is None:
        return name, None
    return m["base"], m["version"]


def _define_instance(root: Any, name: str, funcs: dict[str, Any]) -> None:
    raw = name.encode()
    inst = POINTER(ffi.wasmtime_component_linker_instance_t)()
    err = _add_instance(root, ctypes.create_string_buffer(raw), len(raw), byref(inst))
    if err:
        raise wasmtime.WasmtimeError._from_ptr(err)
    try:
        for fname, callback in funcs.items():
            fb = fname.encode()
            err = _add_func(inst, ctypes.create_string_buffer(fb), len(fb), callback, None,
                            _NO_FINALIZER)
            if err:
                raise wasmtime.WasmtimeError._from_ptr(err)
    finally:
        ffi.wasmtime_component_linker_instance_delete(inst)


def build_linker(engine: wasmtime.Engine, imports: list[str], *,
                 clock: bool) -> wasmtime.component.Linker:
    """A component linker for a component importing `imports`: WASI p2, the loom host
    interface under the version the component asks for, and the shadows above."""
    from wasmtime.component import Linker

    linker = Linker(engine)
    linker.add_wasip2()
    linker.allow_shadowing = True
    root = ffi.wasmtime_component_linker_root(linker.ptr())
    try:
        for name in imports:
            base, _version = split_name(name)
            if base == f"{WORLD_PACKAGE}/{HOST_INTERFACE}":
                _define_instance(root, name, HOST_FUNCS)
            elif base in ALWAYS_DENIED:
                _define_instance(root, name, ALWAYS_DENIED[base])
            elif not clock and base in DETERMINISTIC:
                _define_instance(root, name, DETERMINISTIC[base])
    finally:
        ffi.wasmtime_component_linker_instance_delete(root)
    return linker
