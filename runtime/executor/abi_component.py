"""component-v1: a WebAssembly component of the `loom:activity` world
(activities/wit/loom.wit): `run(input: string) -> result<string, error>`, importing the
`host` interface and WASI preview 2. Python (componentize-py) and JavaScript
(componentize-js) activities are built to it by `loom activity build`.

Each instance is one store; the epoch deadline and fuel are set before instantiating
(instantiation runs guest code). Every call goes through wasmtime's C API
(`wasmtime_component_func_call` with the input lowered by hand, then `post_return`);
any failure retires the instance (a trapped component instance cannot be entered
again), a handled guest error does not.

WASI preview 2 is given with no preopened directory, no environment variable, no
argument, no stdin and stdout/stderr discarded; sockets trap; the wall clock and random
are deterministic without the `clock` grant (see `component_host`).
"""

from __future__ import annotations

import ctypes
import re
import threading
from collections.abc import Callable
from ctypes import byref
from typing import Any

import wasmtime
from wasmtime import _bindings
from wasmtime import _ffi as ffi
from wasmtime.component import Component, Linker

from runtime import errors
from runtime.executor import component_host as host
from runtime.executor.abi import Call, Outcome, Services
from runtime.executor.session import SESSIONS, GuestSession, context_address
from schemas.manifest import AbiKind, ActivityManifest

PAGE = 65536
MAX_INSTANCES, MAX_TABLES, MAX_MEMORIES = 64, 64, 1
"""Store limits: a component is several core instances (Python: ~10) sharing one memory
(componentize-py and componentize-js both build so). `limits.memory_bytes` caps each linear
memory, so one memory makes it the component's whole budget: with 16, a component could
hold 16 times it."""
COMPONENT_LAYER = b"\0asm\x0d\x00\x01\x00"
"""The preamble of a component binary (a core module's is \\0asm\\x01\\0\\0\\0)."""

ALLOWED_WASI = {
    "wasi:io/poll", "wasi:io/error", "wasi:io/streams",
    "wasi:clocks/monotonic-clock", "wasi:clocks/wall-clock",
    "wasi:random/random", "wasi:random/insecure", "wasi:random/insecure-seed",
    "wasi:cli/stdin", "wasi:cli/stdout", "wasi:cli/stderr", "wasi:cli/environment",
    "wasi:cli/exit", "wasi:cli/terminal-input", "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin", "wasi:cli/terminal-stdout", "wasi:cli/terminal-stderr",
    "wasi:filesystem/types", "wasi:filesystem/preopens",
    # present in every wasi-libc build; they are harmless because instance-network traps
    "wasi:sockets/network", "wasi:sockets/instance-network", "wasi:sockets/udp",
    "wasi:sockets/udp-create-socket", "wasi:sockets/tcp", "wasi:sockets/tcp-create-socket",
    "wasi:sockets/ip-name-lookup",
}
"""WASI 0.2 interfaces a component may import (all from wasmtime's add_wasip2, some
shadowed). Anything else, wasi:http included, is refused at upload."""
LOOM_INTERFACES = {"loom:activity/host", "loom:activity/types"}

_func_call = _bindings._wasmtime_component_func_call
_post_return = _bindings._wasmtime_component_func_post_return
_val_delete = _bindings._wasmtime_component_val_delete
K_RESULT = ffi.WASMTIME_COMPONENT_RESULT.value
_MIN_PAGES = re.compile(r"memory minimum size of (\d+) pages")


def is_component(wasm: bytes) -> bool:
    return wasm[:8] == COMPONENT_LAYER


def check_imports(imports: list[str], exports: list[str],
                  manifest: ActivityManifest) -> None:
    """Refuse imports outside the world (and WASI 0.2) and a missing `run` export."""
    where = {"activity": manifest.name, "version": manifest.version}
    bad = []
    for name in imports:
        base, version = host.split_name(name)
        if base in LOOM_INTERFACES and (version or "").startswith("1."):
            continue
        if base in ALLOWED_WASI and (version or "").startswith("0.2."):
            continue
        bad.append(name)
    if bad:
        http = [n for n in bad if n.startswith("wasi:http/")]
        hint = (" (a JavaScript activity built without `loom activity build` keeps "
                "componentize-js's fetch support: rebuild it with loom, and call "
                "loom.http instead)" if http else "")
        raise errors.CapabilityDenied(
            f"component imports {', '.join(bad)}, outside the loom:activity world: only "
            f"loom:activity/host@1.x and WASI 0.2 (no http) can be imported{hint}",
            details={"imports": bad}, **where)
    if "run" not in exports:
        raise errors.ModuleInvalid("component-v1 component must export "
                                   "run: func(input: string) -> result<string, error>",
                                   **where)


def classify(exc: BaseException, manifest: ActivityManifest,
             session: GuestSession) -> errors.LoomError:
    """Map whatever stopped a component to one error of the taxonomy."""
    where: dict[str, Any] = {"activity": manifest.name, "version": manifest.version,
                             "idempotency_key": session.idempotency_key}
    if session.violation is not None:
        v = session.violation
        v.activity, v.version, v.idempotency_key = (where["activity"], where["version"],
                                                    where["idempotency_key"])
        return v
    if isinstance(exc, errors.LoomError):
        return exc
    limits = manifest.limits
    if isinstance(exc, wasmtime.ExitTrap):
        return errors.GuestError(f"guest exited with code {exc.code}",
                                 details={"exit_code": exc.code}, **where)
    text = str(exc)
    low = text.lower()
    first = _reason(text)
    if "wasm trap: interrupt" in low:
        return errors.Timeout(f"exceeded the {limits.timeout_ms} ms deadline", **where)
    if "all fuel consumed" in low or "out of fuel" in low:
        return errors.OutOfFuel(f"used all {limits.fuel} units of fuel", **where)
    if "call stack exhausted" in low or "stack overflow" in low:
        return errors.StackOverflow(f"call stack exceeded {limits.stack_bytes} bytes", **where)
    m = _MIN_PAGES.search(text)
    if m is not None:
        need = int(m[1]) * PAGE
        return errors.MemoryLimitExceeded(
            f"the component needs {int(m[1])} pages ({need:,} bytes) of memory to start; "
            f"limits.memory_bytes is {limits.memory_bytes:,}",
            details={"memory_bytes_needed": need}, **where)
    if "memory" in low and "limit" in low:
        return errors.MemoryLimitExceeded(
            f"needs more than limits.memory_bytes={limits.memory_bytes:,}: {first}", **where)
    if "[constructor]fields" in text or "wasi:http" in text:
        # componentize-js keeps a `fetch` whose wasi:http calls are stubs that trap
        return errors.CapabilityDenied("fetch() is not available to activities: use "
                                       "loom.http with the 'http' capability",
                                       details=text[-4000:], **where)
    return errors.Trap(f"guest trapped: {first}", details=text[-4000:], **where)


def _reason(text: str) -> str:
    """The reason in a wasmtime error: the line after 'Caused by:' when there is one."""
    text = text.strip()
    if "Caused by:" in text:
        cause = [ln.strip() for ln in text.split("Caused by:", 1)[1].splitlines() if ln.strip()]
        if cause:
            return cause[-1].split(": ", 1)[-1] if cause[-1][:1].isdigit() else cause[-1]
    return text.splitlines()[0] if text else "unknown failure"


def _string(vec: Any, cap: int | None = None) -> bytes:
    """The bytes of a guest string, at most `cap` of them (the rest is never copied)."""
    size = vec.size if cap is None else min(vec.size, cap)
    return ctypes.string_at(vec.data, size) if size else b""


class ComponentInstance:
    """One instantiated component in its own store, bound to a session."""

    def __init__(self, engine: wasmtime.Engine, linker: Linker, component: Component,
                 manifest: ActivityManifest, session: GuestSession, ticks: int) -> None:
        self.manifest = manifest
        self.session = session
        self.fuel = manifest.limits.fuel
        self.healthy = False
        self.calls = 0
        self.store = wasmtime.Store(engine)
        self.store.set_limits(memory_size=manifest.limits.memory_bytes,
                              table_elements=1_000_000, instances=MAX_INSTANCES,
                              tables=MAX_TABLES, memories=MAX_MEMORIES)
        self.store.set_wasi(wasmtime.WasiConfig())  # nothing granted: see the module doc
        self.ctx = self.store._context()
        self.address = context_address(self.ctx)
        SESSIONS[self.address] = session
        self._param = (ffi.wasmtime_component_val_t * 1)()
        try:
            self.arm(ticks)  # instantiation runs guest code: the deadline is already set
            instance = linker.instantiate(self.store, component)
            func = instance.get_func(self.store, "run")
            if func is None:
                raise errors.ModuleInvalid("component-v1 component must export run",
                                           **self.where())
            self._func = func._func
        except Exception as exc:
            error = classify(exc, manifest, session)
            self.close()
            raise error from None
        self.healthy = True

    def where(self) -> dict[str, Any]:
        return {"activity": self.manifest.name, "version": self.manifest.version,
                "idempotency_key": self.session.idempotency_key}

    def arm(self, ticks: int) -> None:
        self.store.set_epoch_deadline(ticks)
        if self.fuel is not None:
            self.store.set_fuel(self.fuel)

    def fuel_used(self) -> int | None:
        if self.fuel is None:
            return None
        try:
            return self.fuel - int(self.store.get_fuel())
        except wasmtime.WasmtimeError:
            return None

    def call(self, data: bytes, ticks: int) -> tuple[bool, Any]:
        """Run once: (False, output bytes) or (True, the guest's error record as a dict).

        Raises a LoomError on any violation; then `healthy` stays False."""
        self.healthy = False
        self.calls += 1
        try:
            self.arm(ticks)
            param = self._param
            param[0].kind = host.K_STRING
            param[0].of.string = ffi.bytes_to_capi(data)
            result = ffi.wasmtime_component_val_t()
            err = _func_call(byref(self._func), self.ctx, param, 1, byref(result), 1)
            _val_delete(byref(param[0]))
            if err:
                raise wasmtime.WasmtimeError._from_ptr(err)
            try:
                answer = self._lift(result)
            finally:
                _val_delete(byref(result))
            err = _post_return(byref(self._func), self.ctx)
            if err:
                raise wasmtime.WasmtimeError._from_ptr(err)
        except Exception as exc:
            raise classify(exc, self.manifest, self.session) from None
        self.healthy = self.session.violation is None
        return answer

    def _lift(self, result: Any) -> tuple[bool, Any]:
        if result.kind != K_RESULT:
            raise errors.ModuleInvalid("run must return result<string, error>", **self.where())
        inner = result.of.result.val
        if result.of.result.is_ok:
            if not inner or inner.contents.kind != host.K_STRING:
                raise errors.ModuleInvalid("run must return result<string, error>",
                                           **self.where())
            vec = inner.contents.of.string
            cap = self.manifest.limits.max_output_bytes
            if vec.size > cap:
                raise errors.OutputTooLarge(f"output of {vec.size} bytes exceeds "
                                            f"max_output_bytes={cap}", **self.where())
            return False, _string(vec)
        # the error record counts against max_output_bytes too: each of its strings is cut
        # there (a guest's 64 MiB message went into errors, logs and API answers)
        cap = self.manifest.limits.max_output_bytes
        fields: dict[str, Any] = {}
        if inner and inner.contents.kind == host.K_RECORD:
            rec = inner.contents.of.record
            for i in range(min(rec.size, 16)):
                entry = rec.data[i]
                name = _string(entry.name, 64).decode("utf-8", "replace")
                v = entry.val
                if v.kind == host.K_STRING:
                    fields[name] = _string(v.of.string, cap).decode("utf-8", "replace")
                elif v.kind == host.K_BOOL:
                    fields[name] = bool(v.of.boolean)
                elif v.kind == host.K_OPTION and v.of.option and \
                        v.of.option.contents.kind == host.K_STRING:
                    fields[name] = _string(v.of.option.contents.of.string, cap).decode(
                        "utf-8", "replace")
        return True, fields

    def close(self) -> None:
        SESSIONS.pop(self.address, None)


def guest_failure(record: dict[str, Any], where: dict[str, Any]) -> errors.LoomError:
    """The error record a component returned, as an error of the taxonomy."""
    import json

    code = str(record.get("code") or "guest_error")
    message = str(record.get("message") or "guest reported an error")
    try:
        extra = json.loads(record["details"]) if record.get("details") else None
    except ValueError:
        extra = record.get("details")
    if code == "memory_limit":
        return errors.MemoryLimitExceeded(f"guest ran out of memory: {message}",
                                          details=extra, **where)
    if code == "stack_overflow":
        return errors.StackOverflow(f"guest recursed too deep: {message}", details=extra,
                                    **where)
    details: dict[str, Any] = {"code": code}
    if isinstance(extra, dict):
        details.update(extra)
    elif extra is not None:
        details["details"] = extra
    kind = details.get("type")
    text = f"{kind}: {message}" if kind and code == "guest_error" else message
    return errors.GuestError(text, retryable=bool(record.get("retryable")), details=details,
                             **where)


class ComponentAbi:
    kind = AbiKind.COMPONENT_V1

    def __init__(self, services: Services) -> None:
        self.s = services
        self._linkers: dict[tuple[int, bool, tuple[str, ...]], Linker] = {}
        self._imports: dict[tuple[int, str], tuple[list[str], list[str]]] = {}
        self._lock = threading.Lock()
        self.instantiations = 0

    # -- prepare ------------------------------------------------------------------------------
    def component(self, engine: wasmtime.Engine, fingerprint: str, manifest: ActivityManifest,
                  load: Callable[[], bytes],
                  progress: Callable[[str], None] | None = None) -> Component:
        def compiling() -> None:
            if progress is not None:
                progress(f"compiling {manifest.ref} (a component: 5-15 s, once; the result "
                         "is cached)")

        compiled: Component = self.s.modules.get(engine, fingerprint, manifest.sha256, load,
                                                 kind="component", on_compile=compiling)
        return compiled

    def prepare(self, wasm: bytes, manifest: ActivityManifest, engine: wasmtime.Engine,
                fingerprint: str, *, progress: Callable[[str], None] | None = None) -> None:
        where = {"activity": manifest.name, "version": manifest.version}
        if not is_component(wasm):
            raise errors.ModuleInvalid("abi component-v1 needs a WebAssembly component; this "
                                       "is a core module (use core-v1 or wasi-command)",
                                       **where)
        component = self.component(engine, fingerprint, manifest, lambda: wasm, progress)
        imports, exports = self._shape(engine, component, manifest.sha256)
        check_imports(imports, exports, manifest)
        if progress is not None:
            progress(f"checking that {manifest.ref} starts within its limits")
        session = self.s.new_session(manifest)
        try:
            probe = ComponentInstance(engine, self._linker(engine, imports, manifest), component,
                                      manifest, session,
                                      self.s.engines.ticks_for(manifest.limits.timeout_ms))
        except errors.MemoryLimitExceeded as exc:
            if "memory count" in exc.message:  # not a size: a second linear memory
                message = (f"this component defines more than {MAX_MEMORIES} linear memory; "
                           "limits.memory_bytes is a component's whole budget, so only one "
                           "is allowed (componentize-py and componentize-js build one)")
                raise errors.ManifestInvalid(message, details=[{"loc": [], "msg": message}],
                                             **where) from None
            need = exc.details.get("memory_bytes_needed") if isinstance(exc.details,
                                                                        dict) else None
            why = (f"it needs {need // PAGE} pages ({need:,} bytes) to start; set "
                   f"limits.memory_bytes to at least {need}") if need else exc.message
            message = (f"limits.memory_bytes={manifest.limits.memory_bytes:,} is too small for "
                       f"this component: {why}")
            raise errors.ManifestInvalid(message, details=[{
                "loc": ["limits", "memory_bytes"], "msg": message}], **where) from None
        probe.close()

    def _shape(self, engine: wasmtime.Engine, component: Component,
               sha256: str) -> tuple[list[str], list[str]]:
        key = (id(engine), sha256)
        shape = self._imports.get(key)
        if shape is None:
            ty = component.type
            shape = (list(ty.imports(engine)), list(ty.exports(engine)))
            self._imports[key] = shape
        return shape

    def _linker(self, engine: wasmtime.Engine, imports: list[str],
                manifest: ActivityManifest) -> Linker:
        key = (id(engine), manifest.capabilities.clock, tuple(imports))
        linker = self._linkers.get(key)
        if linker is None:
            with self._lock:
                linker = self._linkers.get(key)
                if linker is None:
                    linker = host.build_linker(engine, imports,
                                               clock=manifest.capabilities.clock)
                    self._linkers[key] = linker
        return linker

    # -- run ----------------------------------------------------------------------------------
    def run(self, call: Call) -> Outcome:
        manifest, pool, key = call.manifest, self.s.pool, call.pool_key
        found = pool.acquire(key)
        reused = isinstance(found, ComponentInstance)
        if isinstance(found, ComponentInstance):
            instance = found
            instance.session.begin(call.idempotency_key, call.deadline)
        else:
            component = self.component(call.engine, call.fingerprint, manifest,
                                       lambda: self.s.fetch_wasm(manifest))
            imports, _ = self._shape(call.engine, component, manifest.sha256)
            session = self.s.new_session(manifest)
            session.begin(call.idempotency_key, call.deadline)
            instance = ComponentInstance(call.engine,
                                         self._linker(call.engine, imports, manifest),
                                         component, manifest, session, call.plan_ticks)
            pool.created()
            self.instantiations += 1
        try:
            is_error, out = instance.call(call.data, call.ticks)
            fuel = instance.fuel_used()
            if is_error:
                failure = guest_failure(out, call.where)
                if not isinstance(failure, errors.GuestError):
                    instance.healthy = False  # out of memory or stack: start afresh
                raise failure
            output = call.decode(out)
            session = instance.session  # read before another call can take the instance
            done = Outcome(output, session.logs, session.logs_dropped, fuel, 0, reused)
        except errors.OutputInvalid:
            instance.healthy = False
            raise
        finally:
            pool.release(key, instance, reusable=manifest.reuse_instances)
        return done

    def resources(self) -> dict[str, Any]:
        return {"linkers": len(self._linkers), "instantiations": self.instantiations}
