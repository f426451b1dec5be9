"""What a guest may import and must export, and the linkers that provide the imports."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import wasmtime
from wasmtime import FuncType

from runtime import errors
from runtime.executor import hostfuncs
from runtime.executor.hostfuncs import ALWAYS_DENIED, I32, I64, WASI
from schemas.manifest import AbiKind, ActivityManifest

LOOM_IMPORTS = {"host_call", "host_result"}


def check_module(module: wasmtime.Module, manifest: ActivityManifest) -> None:
    """Refuse a module whose imports or exports do not fit its ABI and capabilities."""
    where = {"activity": manifest.name, "version": manifest.version}
    for imp in module.imports:
        name = f"{imp.module}.{imp.name}"
        if imp.module == "loom" and imp.name in LOOM_IMPORTS:
            continue
        if imp.module != WASI or not isinstance(imp.type, FuncType):
            raise errors.CapabilityDenied(f"forbidden import {name}: only {WASI}.* and "
                                          "loom.host_call/host_result can be imported", **where)
        if imp.name in ALWAYS_DENIED:
            raise errors.CapabilityDenied(f"forbidden import {name}", **where)
    exports = {e.name: e.type for e in module.exports}
    if manifest.abi is AbiKind.CORE_V1:
        required = {"memory": "memory", "loom_alloc": "(i32) -> i32",
                    "loom_run": "(i32, i32) -> i64"}
        expected = {"loom_alloc": ([I32], [I32]), "loom_run": ([I32, I32], [I64])}
    else:
        required = {"_start": "() -> ()"}
        expected = {"_start": ([], [])}
    for export, shape in required.items():
        ty = exports.get(export)
        if ty is None:
            raise errors.ModuleInvalid(f"{manifest.abi.value} module must export {export} "
                                       f"{shape}", **where)
        if export in expected:
            params, results = expected[export]
            if not isinstance(ty, FuncType) or [str(p) for p in ty.params] != [
                    str(p) for p in params] or [str(r) for r in ty.results] != [
                    str(r) for r in results]:
                raise errors.ModuleInvalid(f"export {export} must have type {shape}", **where)
        elif not isinstance(ty, wasmtime.MemoryType):
            raise errors.ModuleInvalid(f"export {export} must be a memory", **where)
    init = exports.get("_initialize")  # optional; the instance calls it (unchecked) once
    if init is not None and not (isinstance(init, FuncType) and not init.params
                                 and not init.results):
        raise errors.ModuleInvalid("export _initialize must have type () -> ()", **where)


@dataclass(frozen=True)
class LinkerKey:
    engine_id: int
    fs: bool
    clock: bool


class Linkers:
    """One linker per (engine, filesystem granted, clock granted); shared across stores."""

    def __init__(self) -> None:
        self._linkers: dict[LinkerKey, wasmtime.Linker] = {}
        self._pre: dict[tuple[LinkerKey, int],
                        tuple[wasmtime.Module, wasmtime.InstancePre]] = {}
        self._lock = threading.Lock()

    def key(self, engine: wasmtime.Engine, manifest: ActivityManifest) -> LinkerKey:
        caps = manifest.capabilities
        return LinkerKey(id(engine), bool(caps.dirs), caps.clock)

    def get(self, engine: wasmtime.Engine, manifest: ActivityManifest) -> wasmtime.Linker:
        return self.for_key(engine, self.key(engine, manifest))

    def for_key(self, engine: wasmtime.Engine, key: LinkerKey) -> wasmtime.Linker:
        linker = self._linkers.get(key)
        if linker is None:
            with self._lock:
                linker = self._linkers.get(key)
                if linker is None:
                    linker = self._build(engine, key)
                    self._linkers[key] = linker
        return linker

    def instance_pre(self, engine: wasmtime.Engine, module: wasmtime.Module,
                     manifest: ActivityManifest) -> wasmtime.InstancePre:
        key = (self.key(engine, manifest), id(module))
        hit = self._pre.get(key)
        if hit is not None and hit[0] is module:  # the module reference keeps id() unique
            return hit[1]
        check_module(module, manifest)  # again: a cached module may predate a rule
        try:
            pre = self.get(engine, manifest).instantiate_pre(module)
        except wasmtime.WasmtimeError as exc:
            raise errors.ModuleInvalid(f"module cannot be linked: {exc}",
                                       activity=manifest.name,
                                       version=manifest.version) from None
        with self._lock:
            if len(self._pre) > 4096:
                self._pre.clear()
            self._pre[key] = (module, pre)
        return pre

    @staticmethod
    def _build(engine: wasmtime.Engine, key: LinkerKey) -> wasmtime.Linker:
        linker = wasmtime.Linker(engine)
        linker.define_wasi()
        linker.allow_shadowing = True
        hostfuncs.define(linker, fs=key.fs, clock=key.clock)
        return linker
