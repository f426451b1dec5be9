"""core-v1: a core module exporting `memory`, `loom_alloc` and `loom_run` (see
activities/README.md). Instances are pooled per (activity version, tenant) when the
manifest sets `reuse_instances`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import wasmtime

from runtime import errors
from runtime.executor.abi import Call, Outcome, Services, guest_error
from runtime.executor.instances import CoreInstance
from runtime.executor.linking import check_module
from schemas.manifest import AbiKind, ActivityManifest


def compiled_module(services: Services, engine: wasmtime.Engine, fingerprint: str,
                    manifest: ActivityManifest, load: Callable[[], bytes]) -> wasmtime.Module:
    module: wasmtime.Module = services.modules.get(engine, fingerprint, manifest.sha256, load)
    return module


def instance_pre(services: Services, call: Call) -> wasmtime.InstancePre:
    m = call.manifest
    module = compiled_module(services, call.engine, call.fingerprint, m,
                             lambda: services.fetch_wasm(m))
    return services.linkers.instance_pre(call.engine, module, m)


class CoreAbi:
    kind = AbiKind.CORE_V1

    def __init__(self, services: Services) -> None:
        self.s = services

    def prepare(self, wasm: bytes, manifest: ActivityManifest, engine: wasmtime.Engine,
                fingerprint: str, *, progress: Callable[[str], None] | None = None) -> None:
        module = compiled_module(self.s, engine, fingerprint, manifest, lambda: wasm)
        check_module(module, manifest)

    def run(self, call: Call) -> Outcome:
        manifest, pool = call.manifest, self.s.pool
        key = call.pool_key
        reused = False
        found = pool.acquire(key)
        if isinstance(found, CoreInstance):
            reused = True
            instance = found
            instance.session.begin(call.idempotency_key, call.deadline)
        else:
            session = self.s.new_session(manifest)
            session.begin(call.idempotency_key, call.deadline)
            instance = CoreInstance(call.engine, instance_pre(self.s, call), manifest, session,
                                    call.plan_ticks)
            pool.created()
        try:
            is_error, out = instance.call(call.data, call.ticks)
            fuel, memory = instance.fuel_used(), instance.memory_size
            if is_error:
                raise guest_error(out, call.where)
            output = call.decode(out)
            session = instance.session  # read before another call can take the instance
            done = Outcome(output, session.logs, session.logs_dropped, fuel, memory, reused)
        except errors.OutputInvalid:
            instance.healthy = False  # a guest that broke its contract is not reused
            raise
        finally:
            pool.release(key, instance, reusable=manifest.reuse_instances)
        return done

    def resources(self) -> dict[str, Any]:
        return {}
