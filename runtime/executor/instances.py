"""Sandboxed guest instances: one store each, with limits, WASI and the host session.

Instantiation and every call go through wasmtime's C API directly
(`wasmtime_instance_pre_instantiate`, `func_call_unchecked` with pre-allocated argument
slots, `memmove` into linear memory): a few microseconds instead of the tens that
`Func.__call__` spends rebuilding types, and a failure's error is always this store's own
(wasmtime-py's wrappers re-raise a process-wide "last host exception", which can belong to
another thread's call).
"""

from __future__ import annotations

import ctypes
from ctypes import POINTER, byref, c_size_t, c_uint64, c_void_p
from typing import Any

import wasmtime
from wasmtime import _bindings
from wasmtime import _ffi as ffi

from runtime import errors
from runtime.executor.hostfuncs import extern_kind, memory_data, memory_size
from runtime.executor.session import SESSIONS, STDERR_TAIL, GuestSession, context_address
from schemas.manifest import ActivityManifest

_call_unchecked = _bindings._wasmtime_func_call_unchecked
_set_deadline = _bindings._wasmtime_context_set_epoch_deadline
_pre_instantiate = _bindings._wasmtime_instance_pre_instantiate
_export_get = _bindings._wasmtime_instance_export_get
_FUNC, _MEMORY = ffi.WASMTIME_EXTERN_FUNC.value, ffi.WASMTIME_EXTERN_MEMORY.value
# The per-call entry points of a warm core-v1 call, declared without argument types: the
# arguments are prepared ctypes objects, so ctypes converts nothing (half of each call's
# cost). The two tiny ones keep the GIL (PYFUNCTYPE); the guest call releases it.
_hot_call = ctypes.CFUNCTYPE(c_void_p)(("wasmtime_func_call_unchecked", ffi.dll))
_hot_deadline = ctypes.PYFUNCTYPE(None)(("wasmtime_context_set_epoch_deadline", ffi.dll))
_hot_size = ctypes.PYFUNCTYPE(c_size_t)(("wasmtime_memory_data_size", ffi.dll))
_ERROR_PTR = POINTER(ffi.wasmtime_error_t)
ERROR_BIT = 1 << 63
PAGE = 65536


class GuestStore:
    """A wasmtime store configured from a manifest, bound to a session."""

    def __init__(self, engine: wasmtime.Engine, manifest: ActivityManifest,
                 session: GuestSession, *, stdin: bytes | None = None) -> None:
        self.manifest = manifest
        self.session = session
        self.fuel = manifest.limits.fuel
        self.store = wasmtime.Store(engine)
        self.store.set_limits(memory_size=manifest.limits.memory_bytes,
                              table_elements=1_000_000, instances=2, tables=4, memories=1)
        # stdout/stderr stay unset (a sink): the fd_write shadow captures them (hostfuncs)
        wasi = wasmtime.WasiConfig()
        wasi.argv = [manifest.name]
        wasi.env = list(session.env.items())
        for d in manifest.capabilities.dirs:
            try:
                wasi.preopen_dir(d.host_path, d.guest_path, fs_mutable=False)
            except wasmtime.WasmtimeError:
                raise errors.CapabilityDenied(f"granted directory {d.host_path!r} cannot be "
                                              "opened", **self.where()) from None
        if stdin is not None:
            vec = ffi.wasm_byte_vec_t()
            ffi.wasm_byte_vec_new(byref(vec), len(stdin),
                                  ctypes.cast(ctypes.c_char_p(stdin), POINTER(ffi.wasm_byte_t)))
            ffi.wasi_config_set_stdin_bytes(wasi.ptr(), byref(vec))
        self.store.set_wasi(wasi)
        self.ctx = self.store._context()
        self.address = context_address(self.ctx)
        SESSIONS[self.address] = session
        self._instance = ffi.wasmtime_instance_t()
        self._exports: list[Any] = []  # keeps the extern structs behind the refs alive
        self._memory_ref: Any = None
        self._trap = POINTER(ffi.wasm_trap_t)()
        self._trap_ref = byref(self._trap)

    def instantiate(self, pre: wasmtime.InstancePre) -> None:
        """Instantiate through the C API; find the exported memory (if any)."""
        err = _pre_instantiate(pre.ptr(), self.ctx, byref(self._instance), self._trap_ref)
        if err:
            raise wasmtime.WasmtimeError._from_ptr(err)
        self._raise_trap()
        memory = self.export(b"memory", _MEMORY)
        self._memory_ref = None if memory is None else byref(memory.of.memory)

    def export(self, name: bytes, kind: int) -> Any:
        """The export `name` as a wasmtime_extern_t of `kind`, or None."""
        ext = ffi.wasmtime_extern_t()
        if not _export_get(self.ctx, byref(self._instance), name, len(name), byref(ext)):
            return None
        if extern_kind(ext) != kind:
            return None
        self._exports.append(ext)
        return ext

    def func_ref(self, name: bytes, *, required: bool = True) -> Any:
        ext = self.export(name, _FUNC)
        if ext is None:
            if required:
                raise errors.ModuleInvalid(f"export {name.decode()} is not a function",
                                           **self.where())
            return None
        return byref(ext.of.func)

    def where(self) -> dict[str, Any]:
        return {"activity": self.manifest.name, "version": self.manifest.version,
                "idempotency_key": self.session.idempotency_key}

    def arm(self, ticks: int) -> None:
        """Set the deadline (in epoch ticks) and the fuel budget for the next call."""
        _set_deadline(self.ctx, ticks)
        if self.fuel is not None:
            err = ffi.wasmtime_context_set_fuel(self.ctx, self.fuel)
            if err:
                raise wasmtime.WasmtimeError._from_ptr(err)

    def fuel_used(self) -> int | None:
        if self.fuel is None:
            return None
        left = ctypes.c_uint64(0)
        err = ffi.wasmtime_context_get_fuel(self.ctx, byref(left))
        if err:
            wasmtime.WasmtimeError._from_ptr(err)
            return None
        return self.fuel - left.value

    def raw_call(self, func_ref: Any, args: Any, nargs: int) -> None:
        err = _call_unchecked(self.ctx, func_ref, args, nargs, self._trap_ref)
        if err:
            raise wasmtime.WasmtimeError._from_ptr(err)
        self._raise_trap()

    def _raise_trap(self) -> None:
        if self._trap:
            trap = wasmtime.Trap._from_ptr(self._trap)
            self._trap = POINTER(ffi.wasm_trap_t)()
            self._trap_ref = byref(self._trap)
            raise trap

    def memory_view(self) -> tuple[int, int]:
        ref = self._memory_ref
        if ref is None:
            return 0, 0
        return memory_data(self.ctx, ref) or 0, memory_size(self.ctx, ref)

    def classify(self, exc: BaseException) -> errors.LoomError:
        """Map whatever stopped the guest to one error of the taxonomy."""
        where = self.where()
        if self.session.violation is not None:
            v = self.session.violation
            v.activity, v.version, v.idempotency_key = (where["activity"], where["version"],
                                                        where["idempotency_key"])
            return v
        if isinstance(exc, errors.LoomError):
            return exc
        limits = self.manifest.limits
        if isinstance(exc, wasmtime.Trap):
            code = exc.trap_code
            detail = _first_line(exc)
            if code is wasmtime.TrapCode.INTERRUPT:
                return errors.Timeout(f"exceeded the {limits.timeout_ms} ms deadline", **where)
            if code is wasmtime.TrapCode.OUT_OF_FUEL:
                return errors.OutOfFuel(f"used all {limits.fuel} units of fuel", **where)
            if code is wasmtime.TrapCode.STACK_OVERFLOW:
                return errors.StackOverflow(
                    f"call stack exceeded {limits.stack_bytes} bytes", **where)
            if self._memory_exhausted():
                return errors.MemoryLimitExceeded(
                    f"trapped ({detail}) with memory at the {limits.memory_bytes}-byte limit",
                    **where)
            return errors.Trap(f"guest trapped: {detail}", details=str(exc), **where)
        if isinstance(exc, wasmtime.ExitTrap):
            return self.exit_error(exc.code)
        if isinstance(exc, wasmtime.WasmtimeError):
            text = str(exc)
            if "memory" in text and ("limit" in text or "minimum" in text):
                return errors.MemoryLimitExceeded(
                    f"needs more than {limits.memory_bytes} bytes of memory: {_first_line(exc)}",
                    **where)
            return errors.Trap(f"guest failed: {_first_line(exc)}", details=text, **where)
        return errors.Trap(f"unexpected host failure: {type(exc).__name__}: {exc}", **where)

    def exit_error(self, code: int) -> errors.GuestError:
        tail = bytes(self.session.stderr[-STDERR_TAIL:]).decode("utf-8", "replace").strip()
        return errors.GuestError(f"guest exited with code {code}" + (f": {tail}" if tail else ""),
                                 details={"exit_code": code, "stderr_tail": tail}, **self.where())

    def _memory_exhausted(self) -> bool:
        if self._memory_ref is None:
            return False
        _, size = self.memory_view()
        return size + PAGE > self.manifest.limits.memory_bytes

    def close(self) -> None:
        SESSIONS.pop(self.address, None)
        self._memory_ref = None
        self._exports.clear()


class CoreInstance(GuestStore):
    """A core-v1 guest: `loom_alloc` + `loom_run` over linear memory. See docs/abi.md."""

    def __init__(self, engine: wasmtime.Engine, pre: wasmtime.InstancePre,
                 manifest: ActivityManifest, session: GuestSession, ticks: int) -> None:
        super().__init__(engine, manifest, session)
        self.healthy = False
        self.calls = 0
        try:
            self.arm(ticks)
            self.instantiate(pre)
            if self._memory_ref is None:
                raise errors.ModuleInvalid("core-v1 module must export memory", **self.where())
            self._alloc_ref = self.func_ref(b"loom_alloc")
            self._run_ref = self.func_ref(b"loom_run")
            self._args = (ffi.wasmtime_val_raw_t * 2)()
            init = self.func_ref(b"_initialize", required=False)
            if init is not None:
                self.raw_call(init, self._args, 0)
        except Exception as exc:
            error = self.classify(exc)
            self.close()
            raise error from None
        self._buf_ptr = 0
        self._buf_cap = 0
        self._ctx_arg = c_void_p(self.address)
        self._ticks = c_uint64(0)
        self._nargs = (c_size_t(0), c_size_t(1), c_size_t(2))
        self._max_output = manifest.limits.max_output_bytes
        self._map_memory()
        self.healthy = True

    def _map_memory(self) -> None:
        """Map linear memory as a memoryview; again whenever it grew (it may move then)."""
        base, self.memory_size = self.memory_view()
        self._memory = (memoryview((ctypes.c_ubyte * self.memory_size).from_address(base))
                        .cast("B") if self.memory_size else memoryview(b""))

    def _hot_call(self, func_ref: Any, nargs: int) -> None:
        err = _hot_call(self._ctx_arg, func_ref, self._args, self._nargs[nargs], self._trap_ref)
        if err:
            raise wasmtime.WasmtimeError._from_ptr(ctypes.cast(err, _ERROR_PTR))
        if self._trap:
            self._raise_trap()

    def call(self, data: bytes, ticks: int) -> tuple[bool, bytes]:
        """Run once. Returns (is_error, output bytes); raises a LoomError on any violation.

        Any exception leaves `healthy` False so the pool retires the instance.
        """
        self.healthy = False
        self.calls += 1
        args = self._args
        n = len(data)
        try:
            self._ticks.value = ticks
            _hot_deadline(self._ctx_arg, self._ticks)
            if self.fuel is not None:
                self.arm(ticks)
            if n > self._buf_cap:
                args[0].i32 = n
                self._hot_call(self._alloc_ref, 1)
                ptr = args[0].i32 & 0xFFFFFFFF
                if ptr == 0:
                    raise errors.MemoryLimitExceeded(
                        f"guest could not allocate {n} bytes for the input", **self.where())
                self._buf_ptr, self._buf_cap = ptr, n
                self._map_memory()
            ptr = self._buf_ptr
            if ptr + n > self.memory_size:
                raise errors.Trap("loom_alloc returned a buffer outside linear memory",
                                  **self.where())
            self._memory[ptr:ptr + n] = data
            args[0].i32 = ptr
            args[1].i32 = n
            self._hot_call(self._run_ref, 2)
            result = args[0].i64 & 0xFFFFFFFFFFFFFFFF
            is_error = bool(result & ERROR_BIT)
            out_ptr, out_len = result & 0xFFFFFFFF, (result >> 32) & 0x7FFFFFFF
            if out_len > self._max_output:
                raise errors.OutputTooLarge(
                    f"output of {out_len} bytes exceeds max_output_bytes="
                    f"{self._max_output}", **self.where())
            # memory moves only when it grows, and only inside guest code: same size, same place
            if _hot_size(self._ctx_arg, self._memory_ref) != self.memory_size:
                self._map_memory()
            if out_ptr + out_len > self.memory_size:
                raise errors.OutputInvalid(
                    f"output location {out_ptr}+{out_len} is outside linear memory "
                    f"({self.memory_size} bytes)", **self.where())
            out = self._memory[out_ptr:out_ptr + out_len].tobytes()
        except Exception as exc:
            raise self.classify(exc) from None
        self.healthy = self.session.violation is None
        return is_error, out

    def close(self) -> None:
        self._memory = memoryview(b"")
        super().close()


def run_command(engine: wasmtime.Engine, pre: wasmtime.InstancePre, manifest: ActivityManifest,
                session: GuestSession, data: bytes,
                ticks: int) -> tuple[bytes, int | None, int]:
    """Run a WASI command once: stdin = input, stdout = output.

    Returns (stdout, fuel used, peak linear memory in bytes)."""
    guest = GuestStore(engine, manifest, session, stdin=data)
    try:
        guest.arm(ticks)
        code = 0
        try:
            guest.instantiate(pre)
            guest.raw_call(guest.func_ref(b"_start"), (ffi.wasmtime_val_raw_t * 1)(), 0)
        except wasmtime.ExitTrap as exit_:
            code = exit_.code
        except Exception as exc:
            raise guest.classify(exc) from None
        if session.violation is not None:
            raise guest.classify(session.violation)
        if code != 0:
            raise guest.exit_error(code)
        # linear memory never shrinks: its size at exit is the peak
        return bytes(session.stdout), guest.fuel_used(), guest.memory_view()[1]
    finally:
        guest.close()


def _first_line(exc: BaseException) -> str:
    """The reason in a wasmtime error: the line after 'Caused by:' when there is one."""
    text = str(exc).strip()
    if "Caused by:" in text:
        cause = [ln.strip() for ln in text.split("Caused by:", 1)[1].splitlines() if ln.strip()]
        if cause:
            return cause[0].removeprefix("0: ")
    return text.splitlines()[0] if text else type(exc).__name__
