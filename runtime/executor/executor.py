"""The executor: resolve -> verify -> compile (cached) -> pooled sandboxed run -> validate."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

import wasmtime
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError, from_json, to_json

from runtime import errors
from runtime.backends.blob import BlobStore, Progress
from runtime.backends.factory import open_blob_store
from runtime.executor.abi import Abi, Call, Services
from runtime.executor.abi_command import CommandAbi
from runtime.executor.abi_component import ComponentAbi
from runtime.executor.abi_core import CoreAbi
from runtime.executor.engines import EngineConfig, Engines
from runtime.executor.linking import LinkerKey, Linkers
from runtime.executor.module_cache import ModuleCache, load_or_create_key
from runtime.executor.pool import InstancePool
from runtime.executor.registry import ActivityRegistry, UploadResult, parse_manifest, sha256_hex
from runtime.executor.session import GuestSession
from runtime.settings import LoomSettings, load_settings, secret_from_environment
from schemas.fast_check import Validator, compile_validator
from schemas.json_text import json_problem
from schemas.manifest import AbiKind, ActivityManifest, Limits

M = TypeVar("M", bound=BaseModel)
WASM_MAGIC = b"\0asm"
DEFAULT_SCHEMA = {"type": "object"}
"""The manifests' default input and output schema (prewarmed)."""
ENV_ALLOW_VARIABLE = "LOOM_GUEST_ENV_ALLOW"
"""Comma- or space-separated host variable names that manifests may grant as `env`."""
RESERVED_ENV_PREFIX = "LOOM_"
"""Loom's own settings and secrets (LOOM_SECRET_*, LOOM_COSMOS_KEY): never granted."""


def is_reserved_env(name: str) -> bool:
    return name.upper().startswith(RESERVED_ENV_PREFIX)


def check_env_grants(manifest: ActivityManifest) -> None:
    """Refuse a manifest granting a reserved (LOOM_*) variable; the error names the field."""
    bad = [(i, n) for i, n in enumerate(manifest.capabilities.env) if is_reserved_env(n)]
    if bad:
        raise errors.ManifestInvalid(
            "; ".join(f"capabilities.env.{i}: {n!r} is reserved (LOOM_* variables hold "
                      "Loom's settings and secrets; grant secrets with capabilities.secrets)"
                      for i, n in bad),
            details=[{"loc": ["capabilities", "env", i], "msg": f"{n} is reserved"}
                     for i, n in bad],
            activity=manifest.name, version=manifest.version)


def guest_environment(env: Mapping[str, str] | None,
                      environ: Mapping[str, str]) -> dict[str, str]:
    """The variables manifests may grant: an explicit `env` mapping (chosen by the embedding
    program), else the host variables named in LOOM_GUEST_ENV_ALLOW; never LOOM_*."""
    if env is None:
        names = environ.get(ENV_ALLOW_VARIABLE, "").replace(",", " ").split()
        env = {n: environ[n] for n in names if n in environ}
    return {k: v for k, v in env.items() if not is_reserved_env(k)}


@dataclass
class InvocationResult:
    output: Any
    activity: str
    version: str
    idempotency_key: str
    duration_ms: float
    fuel_used: int | None = None
    memory_bytes: int = 0
    reused_instance: bool = False
    logs: list[dict[str, Any]] = field(default_factory=list)
    logs_dropped: int = 0


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


@dataclass(frozen=True)
class _Plan:
    """Everything derived from one manifest that the hot path needs."""

    manifest: ActivityManifest
    engine: wasmtime.Engine
    fingerprint: str
    ticks: int
    input_check: Validator
    output_check: Validator
    env_denied: str | None
    """Why this worker refuses the manifest's env grants, or None."""
    pool_key: tuple[str, str, str]
    """(name, version, sha256): the pool key without the tenant."""


@contextmanager
def _naming(where: dict[str, Any]) -> Iterator[None]:
    """Fill in activity, version and key on errors raised by lower layers."""
    try:
        yield
    except errors.LoomError as exc:
        _name(exc, where)
        raise


def _name(exc: errors.LoomError, where: dict[str, Any]) -> None:
    exc.activity = exc.activity or where.get("activity")
    exc.version = exc.version or where.get("version")
    exc.idempotency_key = exc.idempotency_key or where.get("idempotency_key")


def _paths(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}"
                     for e in exc.errors())


class Executor:
    """Runs activities from a registry. Thread-safe; use one per process.

    `invoke_sync` runs the guest in the calling thread; `invoke` runs it in a
    bounded thread pool so the event loop never blocks on a guest.
    """

    def __init__(self, settings: LoomSettings | None = None, *, blob: BlobStore | None = None,
                 secrets: Mapping[str, str] | Callable[[str], str | None] | None = None,
                 env: Mapping[str, str] | None = None, prewarm: bool = True) -> None:
        self.settings = settings or load_settings()
        s = self.settings
        self.registry = ActivityRegistry(blob or open_blob_store(s), latest_ttl_s=s.latest_ttl_s)
        self.engines = Engines(s.epoch_tick_ms)
        cache_dir = s.resolved_cache_dir
        self.modules = ModuleCache(cache_dir, load_or_create_key(s.home / "cache.key"),
                                   s.memory_cache_size)
        self.linkers = Linkers()
        self.pool = InstancePool(s.pool_size)
        services = Services(self.engines, self.modules, self.linkers, self.pool,
                            self.registry.fetch_wasm, self._session)
        self.abis: dict[AbiKind, Abi] = {
            abi.kind: abi for abi in (CoreAbi(services), CommandAbi(services),
                                      ComponentAbi(services))}
        """One implementation per ABI (runtime/executor/abi.py says what they do)."""
        self._threads = ThreadPoolExecutor(s.max_threads, thread_name_prefix="loom-guest")
        self._env = guest_environment(env, os.environ)
        if secrets is None:
            self._secret: Callable[[str], str | None] = (
                lambda name: secret_from_environment(name, s.secrets_dir))
        elif callable(secrets):
            self._secret = secrets
        else:
            self._secret = dict(secrets).get
        self._plans: dict[tuple[str, str], _Plan] = {}
        self._plan_of: dict[int, tuple[ActivityManifest, _Plan]] = {}
        self._adhoc = itertools.count(1)
        self._adhoc_prefix = uuid.uuid4().hex[:12]
        if prewarm:
            self._warm()

    # -- lifecycle -------------------------------------------------------------------------
    def _warm(self) -> None:
        """Build at construction (~2 ms) what a first call needs whatever the activity, so
        the first call does not pay it: the engine and linker of the default limits and
        capabilities, the validators of the default schema, a few lazy imports. A worker
        constructs its executor at start-up, before its first request. (A background
        thread was tried: with the GIL it made construction + first call slower.)
        Only an optimisation: errors are ignored, the call path builds the same on demand."""
        try:
            config = EngineConfig(fuel=False, max_stack=Limits().stack_bytes)
            engine = self.engines.get(config)
            _ = config.fingerprint
            self.linkers.for_key(engine, LinkerKey(id(engine), fs=False, clock=False))
            compile_validator(DEFAULT_SCHEMA)
            compile_validator(DEFAULT_SCHEMA, parsed_json=True)
            b"{}".decode("utf-8-sig")  # the manifest reader's codec (imported on first use)
            wasmtime.WasiConfig()
        except Exception:  # pragma: no cover - never seen; the call path redoes it all
            logging.getLogger("loom.executor").debug("prewarm failed", exc_info=True)

    def close(self) -> None:
        self._threads.shutdown(wait=True)
        self.pool.clear()
        self.engines.close()

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- upload ----------------------------------------------------------------------------
    def upload(self, wasm: bytes, manifest: Mapping[str, Any] | ActivityManifest | str | bytes,
               *, progress: Progress | None = None,
               on_stage: Callable[[str], None] | None = None) -> UploadResult:
        """Validate the manifest and the module, then store both. Nothing is stored on error.

        `on_stage` hears what a slow step is doing (compiling a component takes seconds)."""
        digest = sha256_hex(wasm)
        if isinstance(manifest, str | bytes):
            manifest = parse_manifest(manifest)
        if isinstance(manifest, Mapping) and "sha256" not in manifest:
            manifest = {**manifest, "sha256": digest}
        parsed = parse_manifest(manifest)
        if parsed.sha256 != digest:
            raise errors.IntegrityError(
                f"wasm sha256 is {digest}, the manifest says {parsed.sha256}",
                activity=parsed.name, version=parsed.version)
        self.verify_module(wasm, parsed, on_stage=on_stage)
        if on_stage is not None:
            on_stage(f"storing {parsed.ref} ({len(wasm):,} bytes)")
        return self.registry.store(wasm, parsed, progress=progress)

    def verify_module(self, wasm: bytes, manifest: ActivityManifest, *,
                      on_stage: Callable[[str], None] | None = None) -> None:
        """Compile `wasm` (priming the caches) and check it against its manifest's ABI."""
        where = {"activity": manifest.name, "version": manifest.version}
        if not wasm.startswith(WASM_MAGIC):
            raise errors.ModuleInvalid("not a WebAssembly binary (missing \\0asm header)",
                                       **where)
        check_env_grants(manifest)
        config = self._engine_config(manifest)
        engine = self.engines.get(config)
        self.engines.begin()  # a component's probe instance runs guest code
        try:
            with _naming(where):
                self.abis[manifest.abi].prepare(wasm, manifest, engine, config.fingerprint,
                                                progress=on_stage)
        finally:
            self.engines.end()

    # -- invoke ----------------------------------------------------------------------------
    @overload
    def invoke_sync(self, name: str, input: Any, *, output_model: type[M],
                    version: str | None = ..., idempotency_key: str | None = ...,
                    tenant: str = ..., validate: bool = ...,
                    timeout_ms: int | None = ...) -> M: ...

    @overload
    def invoke_sync(self, name: str, input: Any, *, output_model: None = ...,
                    version: str | None = ..., idempotency_key: str | None = ...,
                    tenant: str = ..., validate: bool = ...,
                    timeout_ms: int | None = ...) -> Any: ...

    def invoke_sync(self, name: str, input: Any, *, output_model: type[M] | None = None,
                    version: str | None = None, idempotency_key: str | None = None,
                    tenant: str = "", validate: bool = True,
                    timeout_ms: int | None = None) -> Any:
        """Run `name` (latest, or `version`) on `input` (dict or model); return its output."""
        result = self.execute(name, input, version=version, idempotency_key=idempotency_key,
                              tenant=tenant, validate=validate, timeout_ms=timeout_ms)
        if output_model is None:
            return result.output
        try:
            return output_model.model_validate(result.output)
        except ValidationError as exc:
            raise errors.OutputInvalid(
                f"output does not fit {output_model.__name__}: {_paths(exc)}",
                activity=result.activity, version=result.version,
                idempotency_key=result.idempotency_key) from None

    async def invoke(self, name: str, input: Any, *, output_model: type[M] | None = None,
                     version: str | None = None, idempotency_key: str | None = None,
                     tenant: str = "", validate: bool = True,
                     timeout_ms: int | None = None) -> Any:
        """Async twin of `invoke_sync`; the guest runs on the executor's thread pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, lambda: self.invoke_sync(
            name, input, output_model=output_model, version=version,
            idempotency_key=idempotency_key, tenant=tenant, validate=validate,
            timeout_ms=timeout_ms))

    def execute(self, name: str, input: Any, *, version: str | None = None,
                idempotency_key: str | None = None, tenant: str = "",
                validate: bool = True, timeout_ms: int | None = None) -> InvocationResult:
        """Run once and return the output with what the run used (time, fuel, memory, logs).

        `timeout_ms` can shorten (never extend) the manifest's deadline for this call.
        """
        try:
            return self._execute(name, input, version=version, idempotency_key=idempotency_key,
                                 tenant=tenant, validate=validate, timeout_ms=timeout_ms)
        except errors.Timeout as exc:  # name the deadline in force, not the manifest's
            limit = self.registry.get(exc.activity or name, exc.version).limits.timeout_ms
            if timeout_ms is not None and 0 < timeout_ms < limit:
                why = f"(this call's timeout_ms; the manifest allows {limit} ms)"
                text = exc.message.replace(f"{limit} ms deadline", f"{timeout_ms} ms deadline "
                                           f"{why}")
                exc.message = text if text != exc.message else exc.message.replace(
                    f"{limit} ms", f"{timeout_ms} ms {why}")
                exc.args = (exc.message,)
            raise

    def _execute(self, name: str, input: Any, *, version: str | None, idempotency_key: str | None,
                 tenant: str, validate: bool, timeout_ms: int | None) -> InvocationResult:
        started = time.perf_counter()
        plan = self._plan(self.registry.get(name, version))
        manifest = plan.manifest
        key = idempotency_key or f"adhoc:{self._adhoc_prefix}:{next(self._adhoc)}"
        where = {"activity": manifest.name, "version": manifest.version, "idempotency_key": key}
        if type(input) is not dict and isinstance(input, BaseModel):
            input = input.model_dump(mode="json")
        try:
            data = to_json(input)
            if data.find(b"NaN") >= 0 or data.find(b"Infinity") >= 0:  # rare: ask the strict
                # encoder (which refuses NaN and Infinity; `find` is faster than `in` here)
                data = _ENCODER.encode(input).encode()
        except (TypeError, ValueError, PydanticSerializationError) as exc:
            raise errors.InputInvalid(f"input is not JSON-serializable: {exc}", **where) from None
        if plan.env_denied is not None:
            raise errors.CapabilityDenied(plan.env_denied, **where)
        if len(data) > manifest.limits.max_input_bytes:
            raise errors.InputTooLarge(f"input of {len(data)} bytes exceeds max_input_bytes="
                                       f"{manifest.limits.max_input_bytes}", **where)
        if validate:
            try:
                plan.input_check.validate(input)
            except ValidationError as exc:
                raise errors.InputInvalid(f"input is not JSON matching the schema: {_paths(exc)}",
                                          details=exc.errors(include_url=False),
                                          **where) from None
        ticks, budget_ms = plan.ticks, manifest.limits.timeout_ms
        if timeout_ms is not None and 0 < timeout_ms < budget_ms:
            ticks, budget_ms = self.engines.ticks_for(timeout_ms), timeout_ms
        call = Call(manifest, plan.engine, plan.fingerprint, data, ticks, plan.ticks,
                    time.monotonic() + budget_ms / 1000, key, tenant,
                    lambda out: self._decode(out, plan, validate, where),
                    (*plan.pool_key, tenant))
        self.engines.begin()
        try:
            outcome = self.abis[manifest.abi].run(call)
        except errors.LoomError as exc:
            _name(exc, where)
            raise
        finally:
            self.engines.end()
        return InvocationResult(  # positional: keywords cost a third of a microsecond
            outcome.output, manifest.name, manifest.version, key,
            (time.perf_counter() - started) * 1000, outcome.fuel_used, outcome.memory_bytes,
            outcome.reused_instance, outcome.logs, outcome.logs_dropped)

    # -- helpers ---------------------------------------------------------------------------
    @staticmethod
    def _decode(out: bytes, plan: _Plan, validate: bool, where: dict[str, Any]) -> Any:
        try:
            output = from_json(out, allow_inf_nan=False)
        except ValueError:  # say why in plain words, not the parser's ("expected ident")
            raise errors.OutputInvalid(f"output {json_problem(out)}", **where) from None
        if validate:
            try:
                plan.output_check.validate(output)
            except ValidationError as exc:
                raise errors.OutputInvalid(f"output does not match the schema: {_paths(exc)}",
                                           details=exc.errors(include_url=False),
                                           **where) from None
        return output

    @staticmethod
    def _engine_config(manifest: ActivityManifest) -> EngineConfig:
        return EngineConfig(fuel=manifest.limits.fuel is not None,
                            max_stack=manifest.limits.stack_bytes)

    def _env_denied(self, m: ActivityManifest) -> str | None:
        refused = [n for n in m.capabilities.env if is_reserved_env(n) or n not in self._env]
        if not refused:
            return None
        return (f"capabilities.env grants {', '.join(map(repr, refused))}, which this worker "
                f"does not allow: only variables listed in {ENV_ALLOW_VARIABLE} (or the "
                "executor's explicit env) and never LOOM_* can be granted")

    def _session(self, manifest: ActivityManifest) -> GuestSession:
        return GuestSession(manifest, env=self._env, secret=self._secret,
                            command=manifest.abi is AbiKind.WASI_COMMAND)

    def _plan(self, m: ActivityManifest) -> _Plan:
        hit = self._plan_of.get(id(m))  # the registry hands out one object per version
        if hit is not None and hit[0] is m:
            return hit[1]
        plan = self._plans.get((m.ref, m.sha256))
        if plan is None:
            config = self._engine_config(m)
            plan = _Plan(m, self.engines.get(config), config.fingerprint,
                         self.engines.ticks_for(m.limits.timeout_ms),
                         compile_validator(m.input_schema),
                         compile_validator(m.output_schema, parsed_json=True),
                         self._env_denied(m), (m.name, m.version, m.sha256))
            self._plans[(m.ref, m.sha256)] = plan
        if len(self._plan_of) >= 4096:
            self._plan_of.clear()
        self._plan_of[id(m)] = (m, plan)  # holding `m` keeps its id from being reused
        return plan
