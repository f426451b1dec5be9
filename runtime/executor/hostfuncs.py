"""Host functions as raw C callbacks on wasmtime's unchecked API.

Why not `Linker.define_func`: wasmtime-py's trampoline stores a host function's exception
in one process-wide variable (`wasmtime._func.LAST_EXCEPTION`) and re-raises it from
whichever thread next fails inside wasmtime-py, so one tenant's error could surface in
another's call. These callbacks keep every error on the calling store's session
(`GuestSession.violation`) and hand wasmtime a plain trap.

Why shadow `fd_write`: guest stdout/stderr are captured here, not through
`WasiConfig.stdout_custom`/`stderr_custom` (with those callbacks wasmtime-py 50 panics at
process exit after a trap, "panic in a function that cannot unwind", and sometimes
aborts). Counting bytes here also stops a guest at its first write past
`max_output_bytes`, whatever its deadline.

Why shadow the clocks and `random_get`: without the `clock` grant a guest sees a frozen,
millisecond clock and a deterministic random stream (see activities/README.md).
"""

from __future__ import annotations

import ctypes
import json
from collections.abc import Callable
from ctypes import POINTER, byref, c_size_t, c_void_p
from typing import Any, cast

import wasmtime
from wasmtime import ValType, _bindings
from wasmtime import _ffi as ffi

from runtime import errors
from runtime.executor.session import (
    CLOCK_RESOLUTION_NS,
    MAX_REQUEST_BYTES,
    SESSIONS,
    GuestSession,
    host_failure,
)

WASI = "wasi_snapshot_preview1"
ESUCCESS, EBADF, EFAULT, EINVAL = 0, 8, 21, 28
IOV_MAX = 1024
U32 = 0xFFFFFFFF
I32, I64 = ValType.i32(), ValType.i64()

_caller_context = _bindings._wasmtime_caller_context
_caller_export_get = _bindings._wasmtime_caller_export_get
_trap_new = _bindings._wasmtime_trap_new
_define = _bindings._wasmtime_linker_define_func_unchecked
memory_data = ctypes.CFUNCTYPE(c_void_p, POINTER(ffi.wasmtime_context_t),
                               POINTER(ffi.wasmtime_memory_t))(("wasmtime_memory_data", ffi.dll))
memory_size = ctypes.CFUNCTYPE(c_size_t, POINTER(ffi.wasmtime_context_t),
                               POINTER(ffi.wasmtime_memory_t))(
    ("wasmtime_memory_data_size", ffi.dll))
_MEMORY_KIND = ffi.WASMTIME_EXTERN_MEMORY.value
_NO_FINALIZER = ctypes.CFUNCTYPE(None, c_void_p)()  # NULL: the callbacks are module-global

HostFn = Callable[[GuestSession, Any, Any, Any], None]
"""(session, caller, context, args_and_results) -> None; results go into args[0]."""


# -- plumbing -----------------------------------------------------------------------------

def _trap(message: str) -> int:
    raw = message.encode("utf-8", "replace")
    trap = _trap_new(ctypes.create_string_buffer(raw), len(raw))
    return ctypes.cast(trap, c_void_p).value or 0


def _callback(fn: HostFn) -> Any:
    def callback(_env: Any, caller: Any, args: Any, _n: int) -> int:
        session: GuestSession | None = None
        try:
            ctx = _caller_context(caller)
            session = SESSIONS.get(ctypes.cast(ctx, c_void_p).value or 0)
            if session is None:  # pragma: no cover - only if a store outlives its registration
                return _trap("host call from an unregistered store")
            fn(session, caller, ctx, args)
            return 0
        except BaseException as exc:  # nothing may unwind into wasmtime
            return _trap(host_failure(session, exc))

    return _bindings.wasmtime_func_unchecked_callback_t(callback)


def extern_kind(ext: Any) -> int:
    """The kind of a wasmtime_extern_t (ctypes hands back a plain int)."""
    return cast(int, ext.kind)


def guest_memory(caller: Any, ctx: Any) -> tuple[int, int]:
    """(base address, size) of the calling instance's exported `memory`."""
    ext = ffi.wasmtime_extern_t()
    if not _caller_export_get(caller, b"memory", 6, byref(ext)) or extern_kind(ext) != _MEMORY_KIND:
        raise errors.Trap("guest has no exported memory for host calls")
    ref = byref(ext.of.memory)
    return memory_data(ctx, ref) or 0, memory_size(ctx, ref)


# -- loom.host_call / loom.host_result ------------------------------------------------------

def _host_call(session: GuestSession, caller: Any, ctx: Any, args: Any) -> None:
    ptr, length = args[0].i32, args[1].i32
    base, size = guest_memory(caller, ctx)
    if length < 0 or length > MAX_REQUEST_BYTES or ptr < 0 or ptr + length > size:
        raise errors.Trap(f"host_call request out of bounds (ptr={ptr}, len={length})")
    try:
        request = json.loads(ctypes.string_at(base + ptr, length))
    except ValueError:
        request = None
    response = session.handle(request)
    session.pending = json.dumps(response, separators=(",", ":")).encode()
    args[0].i32 = len(session.pending)


def _host_result(session: GuestSession, caller: Any, ctx: Any, args: Any) -> None:
    dst = args[0].i32
    data, session.pending = session.pending, b""
    base, size = guest_memory(caller, ctx)
    if dst < 0 or dst + len(data) > size:
        raise errors.Trap(f"host_result destination out of bounds (ptr={dst})")
    ctypes.memmove(base + dst, data, len(data))
    args[0].i32 = len(data)


# -- WASI shadows ---------------------------------------------------------------------------

def _fd_write(session: GuestSession, caller: Any, ctx: Any, args: Any) -> None:
    fd, iovs, count, out = args[0].i32, args[1].i32 & U32, args[2].i32 & U32, args[3].i32 & U32
    if fd not in (1, 2):
        args[0].i32 = EBADF  # stdout and stderr are the only writable streams
        return
    if count > IOV_MAX:
        args[0].i32 = EINVAL
        return
    base, size = guest_memory(caller, ctx)
    if iovs + 8 * count > size or out + 4 > size:
        args[0].i32 = EFAULT
        return
    vec = (ctypes.c_uint32 * (2 * count)).from_address(base + iovs)
    chunks = []
    for i in range(count):
        buf, length = vec[2 * i], vec[2 * i + 1]
        if buf + length > size:
            args[0].i32 = EFAULT
            return
        chunks.append(ctypes.string_at(base + buf, length))
    data = b"".join(chunks)
    session.write(fd, data)  # raises OutputTooLarge at the first write past the cap
    ctypes.c_uint32.from_address(base + out).value = len(data)
    args[0].i32 = ESUCCESS


def _put_u64(caller: Any, ctx: Any, at: int, value: int) -> int:
    base, size = guest_memory(caller, ctx)
    if at + 8 > size:
        return EFAULT
    ctypes.c_uint64.from_address(base + at).value = value
    return ESUCCESS


def _clock_time_get(session: GuestSession, caller: Any, ctx: Any, args: Any) -> None:
    clock_id, out = args[0].i32, args[2].i32 & U32
    if not 0 <= clock_id <= 3:
        args[0].i32 = EINVAL
        return
    args[0].i32 = _put_u64(caller, ctx, out, session.frozen_time_ns(clock_id))


def _clock_res_get(session: GuestSession, caller: Any, ctx: Any, args: Any) -> None:
    clock_id, out = args[0].i32, args[1].i32 & U32
    if not 0 <= clock_id <= 3:
        args[0].i32 = EINVAL
        return
    args[0].i32 = _put_u64(caller, ctx, out, CLOCK_RESOLUTION_NS)


def _random_get(session: GuestSession, caller: Any, ctx: Any, args: Any) -> None:
    buf, length = args[0].i32 & U32, args[1].i32 & U32
    base, size = guest_memory(caller, ctx)
    if buf + length > size:
        args[0].i32 = EFAULT
        return
    ctypes.memmove(base + buf, session.random_bytes(length), length)
    args[0].i32 = ESUCCESS


def _denier(reason: str) -> HostFn:
    def denied(session: GuestSession, caller: Any, ctx: Any, args: Any) -> None:
        raise errors.CapabilityDenied(reason)

    return denied


# -- what each linker gets --------------------------------------------------------------------

SIGNATURES: dict[str, tuple[str, str]] = {
    "fd_write": ("iiii", "i"),
    "clock_time_get": ("iIi", "i"),
    "clock_res_get": ("ii", "i"),
    "random_get": ("ii", "i"),
    "path_open": ("iiiiiIIii", "i"),
    "path_filestat_get": ("iiiii", "i"),
    "path_readlink": ("iiiiii", "i"),
    "poll_oneoff": ("iiii", "i"),
    "sock_accept": ("iii", "i"),
    "sock_recv": ("iiiiii", "i"),
    "sock_send": ("iiiii", "i"),
    "sock_shutdown": ("ii", "i"),
}
"""Parameter and result types: i = i32, I = i64."""
FS_CALLS = {"path_open", "path_filestat_get", "path_readlink"}
ALWAYS_DENIED = {"poll_oneoff", "sock_accept", "sock_recv", "sock_send", "sock_shutdown"}

_FIXED: dict[tuple[str, str], Any] = {
    ("loom", "host_call"): _callback(_host_call),
    ("loom", "host_result"): _callback(_host_result),
    (WASI, "fd_write"): _callback(_fd_write),
}
_DETERMINISTIC: dict[str, Any] = {
    "clock_time_get": _callback(_clock_time_get),
    "clock_res_get": _callback(_clock_res_get),
    "random_get": _callback(_random_get),
}
_DENIERS: dict[str, Any] = {}
"""Reason -> callback; ctypes callbacks must outlive every linker that uses them."""

_LOOM_SIGNATURES = {"host_call": ("ii", "i"), "host_result": ("i", "i")}


def _valtypes(kinds: str) -> Any:
    vec = ffi.wasm_valtype_vec_t()
    ffi.wasm_valtype_vec_new_uninitialized(byref(vec), len(kinds))
    for i, kind in enumerate(kinds):
        vec.data[i] = ffi.wasm_valtype_new(ffi.WASM_I32 if kind == "i" else ffi.WASM_I64)
    return vec


def _define_one(linker: wasmtime.Linker, module: str, name: str, callback: Any) -> None:
    params, results = (_LOOM_SIGNATURES[name] if module == "loom" else SIGNATURES[name])
    # a fresh C functype per definition (a type is bound to the first engine using it);
    # built on the C API directly: wasmtime.FuncType costs ~20 us each
    ty = ffi.wasm_functype_new(byref(_valtypes(params)), byref(_valtypes(results)))
    m, n = module.encode(), name.encode()
    try:
        err = _define(linker.ptr(), m, len(m), n, len(n), ty, callback, None, _NO_FINALIZER)
    finally:
        ffi.wasm_functype_delete(ty)
    if err:
        raise wasmtime.WasmtimeError._from_ptr(err)


def define(linker: wasmtime.Linker, *, fs: bool, clock: bool) -> None:
    """Define the loom host calls and the WASI shadows on a linker that has WASI defined
    and `allow_shadowing` set."""
    for (module, name), callback in _FIXED.items():
        _define_one(linker, module, name, callback)
    if not clock:
        for name, callback in _DETERMINISTIC.items():
            _define_one(linker, WASI, name, callback)
    denied = {name: f"WASI {name} is not available to activities" for name in ALWAYS_DENIED}
    if not fs:
        denied.update({n: f"filesystem access ({n}) requires the 'dirs' capability"
                       for n in FS_CALLS})
    for name, reason in denied.items():
        callback = _DENIERS.get(reason)
        if callback is None:
            callback = _DENIERS.setdefault(reason, _callback(_denier(reason)))
        _define_one(linker, WASI, name, callback)
