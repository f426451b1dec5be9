"""Activity calls made for tenants: name resolution under the tenant's prefix, metrics,
spans, and what each call used (duration, fuel, peak memory, warm instance), kept until the
journal write of its step picks it up (see `observe.py`) and in a short per-activity history
the Studio shows."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from typing import Any

from opentelemetry import trace

from runtime import errors
from runtime.executor import Executor, InvocationResult
from runtime.service import tenancy, tracing
from runtime.service.metrics import Metrics
from schemas.manifest import RetryPolicy

RECENT = 50
"""Calls remembered per activity for the Studio."""


class Calls:
    """The `ActivityRunner` of a service's actor runtime, and the API's invoke."""

    def __init__(self, executor: Executor, metrics: Metrics) -> None:
        self.executor = executor
        self.metrics = metrics
        self.breakers: Any = None  # the runtime's Breakers, set when the runtime is made
        self.recent: dict[str, deque[dict[str, Any]]] = {}
        self.pending: dict[str, list[dict[str, Any]]] = {}
        """idempotency key -> resources of each attempt, until its step is journaled."""
        self.traceparents: dict[str, str] = {}
        """actor -> traceparent of the message its current run started with."""
        self._lock = threading.Lock()

    def resolve(self, tenant: str, name: str) -> str:
        """The registry name a tenant's `name` means: its own, else a shared one. A name
        holding the tenant separator is never shared: `acme--echo` is acme's own `echo`,
        which another tenant's workflow must not reach by spelling it out."""
        if tenant:
            own = tenancy.activity(tenant, name)
            if tenancy.ACTIVITY_SEP in name:
                return own  # (absent: NotFound, as for any name the tenant lacks)
            try:
                self.executor.registry.get(own)
                return own
            except errors.NotFound:
                pass
        return name

    def execute(self, internal: str, input: Any, *, version: str | None, tenant: str,
                idempotency_key: str | None, timeout_ms: int | None,
                parent: Any = None) -> InvocationResult:
        """One call in this thread, measured and traced."""
        shown = internal.split(tenancy.ACTIVITY_SEP, 1)[-1]
        with tracing.tracer().start_as_current_span(
                f"activity {shown}", context=parent, kind=trace.SpanKind.INTERNAL,
                attributes={"loom.activity": shown, "loom.tenant": tenant,
                            "loom.idempotency_key": idempotency_key or ""}) as span:
            started = time.perf_counter()
            try:
                result = self.executor.execute(internal, input, version=version, tenant=tenant,
                                               idempotency_key=idempotency_key,
                                               timeout_ms=timeout_ms)
            except errors.LoomError as exc:
                seconds = time.perf_counter() - started
                self.metrics.observe_call(shown, exc.version or version or "", seconds,
                                          code=exc.code.value)
                self._remember(internal, {"at": time.time(), "ok": False,
                                          "duration_ms": round(seconds * 1000, 3),
                                          "code": exc.code.value, "key": idempotency_key})
                span.set_status(trace.Status(trace.StatusCode.ERROR, exc.code.value))
                span.set_attribute("loom.error_code", exc.code.value)
                raise
            used = resources(result)
            span.set_attributes({"loom.version": result.version,
                                 "loom.duration_ms": used["duration_ms"],
                                 "loom.memory_bytes": used["memory_bytes"],
                                 "loom.warm": used["warm"]})
            self.metrics.observe_call(shown, result.version, result.duration_ms / 1000,
                                      fuel=result.fuel_used, memory=result.memory_bytes,
                                      warm=result.reused_instance)
            self._remember(internal, {"at": time.time(), "ok": True, "version": result.version,
                                      "key": result.idempotency_key, **used})
            return result

    def _remember(self, internal: str, entry: dict[str, Any]) -> None:
        with self._lock:
            self.recent.setdefault(internal, deque(maxlen=RECENT)).appendleft(entry)
            key = entry.get("key")
            if key and not str(key).startswith("adhoc:"):
                self.pending.setdefault(str(key), []).append(
                    {k: v for k, v in entry.items() if k not in ("key", "at")})
                if len(self.pending) > 10_000:  # never journaled (a crash): forget the oldest
                    self.pending.pop(next(iter(self.pending)))

    def take(self, key: str) -> list[dict[str, Any]] | None:
        with self._lock:
            return self.pending.pop(key, None)

    # -- ActivityRunner ---------------------------------------------------------------------
    async def run(self, name: str, input: Any, *, version: str | None, idempotency_key: str,
                  timeout_ms: int | None, tenant: str = "") -> Any:
        internal = self.resolve(tenant, name)
        actor = idempotency_key.split(":", 1)[0]
        parent = tracing.extract(self.traceparents.get(actor))

        def call() -> Any:
            return self.execute(internal, input, version=version, tenant=tenant,
                                idempotency_key=idempotency_key, timeout_ms=timeout_ms,
                                parent=parent).output

        guarded = (lambda: self.breakers.call(name, call)) if self.breakers else call
        return await asyncio.to_thread(guarded)

    async def retry_policy(self, name: str, version: str | None,
                           tenant: str = "") -> RetryPolicy:
        """The policy of the activity the call will run: the tenant's own, else a shared one
        (as `run` resolves it)."""
        try:
            return self.executor.registry.get(self.resolve(tenant, name), version).retry
        except errors.NotFound:
            return RetryPolicy(max_attempts=1)


def resources(result: InvocationResult) -> dict[str, Any]:
    return {"duration_ms": round(result.duration_ms, 3), "fuel": result.fuel_used,
            "memory_bytes": result.memory_bytes, "warm": result.reused_instance}
