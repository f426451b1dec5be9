"""The interface every guest ABI implements, and what the executor hands it.

The executor does everything that does not depend on how a guest is called: resolve the
manifest, encode and validate the input, choose the deadline, decode and validate the
output, name errors. An ABI does the rest, in three steps:

- `prepare(wasm, manifest)`: compile (priming the caches) and refuse, at upload, what
  cannot work with this ABI: wrong exports, imports outside what it provides, a memory
  limit below what the guest needs to start.
- `run(call)`: run one call and return its output bytes (or raise a `LoomError`); it
  decides whether to reuse a pooled instance and retires any instance that failed.
- `resources()`: what it holds, for benchmarks and `loom` status output.

Adding a fourth ABI is one new module with one class, registered in `ABIS` below.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import wasmtime

from runtime import errors
from runtime.executor.engines import Engines
from runtime.executor.linking import Linkers
from runtime.executor.module_cache import ModuleCache
from runtime.executor.pool import InstancePool, PoolKey
from runtime.executor.session import GuestSession
from schemas.manifest import AbiKind, ActivityManifest


@dataclass(frozen=True)
class Services:
    """The executor's shared parts an ABI may use."""

    engines: Engines
    modules: ModuleCache
    linkers: Linkers
    pool: InstancePool
    fetch_wasm: Callable[[ActivityManifest], bytes]
    """The manifest's wasm from the registry, verified against its sha256."""
    new_session: Callable[[ActivityManifest], GuestSession]


@dataclass(slots=True)
class Call:
    """One invocation, as the executor prepared it."""

    manifest: ActivityManifest
    engine: wasmtime.Engine
    fingerprint: str
    data: bytes
    """The input as JSON bytes, already validated and within max_input_bytes."""
    ticks: int
    """Epoch ticks for this call's deadline (the manifest's, or a shorter per-call one)."""
    plan_ticks: int
    """Epoch ticks of the manifest's own deadline (for instantiation)."""
    deadline: float
    """time.monotonic() by which host calls must give up."""
    idempotency_key: str
    tenant: str
    decode: Callable[[bytes], Any]
    """Parse and validate output bytes (raises OutputInvalid); called by `run`."""
    pool_key: PoolKey
    """(name, version, sha256, tenant) of the manifest: its pool of warm instances."""

    @property
    def where(self) -> dict[str, Any]:
        return {"activity": self.manifest.name, "version": self.manifest.version,
                "idempotency_key": self.idempotency_key}


@dataclass(slots=True)
class Outcome:
    output: Any
    logs: list[dict[str, Any]]  # the call's own: taken before its instance goes back to the pool
    logs_dropped: int
    fuel_used: int | None = None
    memory_bytes: int = 0
    reused_instance: bool = False


class Abi(Protocol):
    kind: AbiKind

    def prepare(self, wasm: bytes, manifest: ActivityManifest, engine: wasmtime.Engine,
                fingerprint: str, *, progress: Callable[[str], None] | None = None) -> None:
        """Compile `wasm` (priming the caches) and refuse what cannot run under this ABI."""

    def run(self, call: Call) -> Outcome:
        """Run one call; raise a LoomError of the taxonomy on any failure."""

    def resources(self) -> dict[str, Any]:
        """Counters and sizes of what this ABI holds (for benchmarks and status)."""


def guest_error(raw: bytes, where: dict[str, Any]) -> errors.GuestError:
    """The error a guest returned as JSON {"code", "message", "retryable"} (core-v1)."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return errors.GuestError(f"guest reported an error: {raw[:500]!r}", **where)
    return errors.GuestError(str(body.get("message", "guest reported an error")),
                             retryable=bool(body.get("retryable", False)),
                             details={"code": body.get("code")}, **where)
