"""`loom worker`: run the actors of a module until SIGTERM/SIGINT, then stop gracefully."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import os
import signal
import socket
from typing import Any

import redis

from runtime.actors.loading import actor_classes, load_module
from runtime.actors.resilience import breakers_from_settings
from runtime.actors.runtime import ActorRuntime
from runtime.cluster.ownership import PartitionOwnership
from runtime.executor import Executor
from runtime.journal.factory import open_journal
from runtime.limits import limiter_from_settings
from runtime.settings import LoomSettings

log = logging.getLogger("loom.worker")


def _observability() -> bool:
    """As `loom serve` does: JSON logs when LOOM_JSON_LOGS=1, OpenTelemetry (OTLP/HTTP) when
    the standard OTEL_* variables ask for it. True when tracing is on."""
    if os.environ.get("LOOM_JSON_LOGS", "") not in ("", "0"):
        from runtime.service.logs import use_json_logs
        use_json_logs()
    if not any(os.environ.get(v) for v in ("OTEL_EXPORTER_OTLP_ENDPOINT",
                                           "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        return False  # OpenTelemetry is not even imported
    from runtime.service import tracing
    return tracing.install_from_environment("loom-worker") is not None


def code_version(module: Any) -> str:
    """A short hash of the actor module's source: what `loom cluster status` reports."""
    try:
        source = inspect.getsource(module).encode()
    except (OSError, TypeError):
        source = repr(module).encode()
    return hashlib.blake2b(source, digest_size=6).hexdigest()


def versions_of(settings: LoomSettings, module: Any) -> tuple[str, tuple[str, ...]]:
    """(the version this worker runs, the older ones whose runs it may resume)."""
    mine = settings.code_version or code_version(module)
    older = tuple(v for v in (x.strip() for x in settings.compatible_versions.split(","))
                  if v and v != mine)
    return mine, older


def _join_fleet(settings: LoomSettings, module: Any) -> PartitionOwnership:
    from runtime.cluster import (
        ClusterConfig,
        ClusterNode,
        ClusterNotInitialized,
        WorkerInfo,
        connect,
    )

    ttl_ms = int(settings.lease_ttl_s * 1000)
    client = connect(settings.redis_url, ttl_ms)
    version, older = versions_of(settings, module)
    info = WorkerInfo(id=f"{socket.gethostname()}-{os.getpid()}", version=version,
                      compatible=older)
    try:
        try:  # join with the stored partition count, or create the fleet with 64
            node = ClusterNode(client, info, ClusterConfig(partitions=settings.partitions,
                                                           lease_ttl_ms=ttl_ms))
        except ClusterNotInitialized:
            node = ClusterNode(client, info, ClusterConfig(partitions=64, lease_ttl_ms=ttl_ms))
    except redis.RedisError as exc:
        raise SystemExit(f"cannot join the fleet at LOOM_REDIS_URL: {exc}") from None
    return PartitionOwnership(node)


async def run_worker(module_spec: str, settings: LoomSettings, *,
                     poll_interval_s: float = 0.05, drain_timeout_s: float = 30.0) -> None:
    """Run until SIGTERM/SIGINT, then drain: no new work, runs in flight finish within
    `drain_timeout_s`, leases are released. A second signal stops at once."""
    module = load_module(module_spec)
    classes = actor_classes(module)
    if not classes:
        raise SystemExit(f"no Actor subclasses in {module_spec}")
    traced = _observability()
    journal: Any = open_journal(settings)
    stop, now = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        (now if stop.is_set() else stop).set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    with Executor(settings) as executor:
        runs_on: Any = executor
        if traced:
            from runtime.service.observe import observed_worker
            journal, runs_on = observed_worker(journal, executor)
        breakers = breakers_from_settings(settings.breaker_url,
                                          fail_max=settings.breaker_fail_max,
                                          reset_timeout=settings.breaker_reset_s)
        fleet = _join_fleet(settings, module) if settings.redis_url else None
        limiter = (limiter_from_settings(settings.limits, settings.redis_url or "memory://")
                   if settings.limits else None)
        version, older = versions_of(settings, module)
        runtime = ActorRuntime(journal, runs_on, poll_interval_s=poll_interval_s,
                               breakers=breakers, lease_ttl_s=settings.lease_ttl_s,
                               ownership=fleet, limiter=limiter,
                               max_deliveries=settings.max_deliveries,
                               code_version=version, compatible=older)
        for cls in classes:
            runtime.register(cls)
        if settings.redis_url:
            from runtime.cluster.replies import Replies
            runtime.replies = Replies(settings.redis_url, runtime.owner)
        if fleet is not None:
            from runtime.cluster.delivery import StreamDelivery
            node = fleet.node
            runtime.delivery = StreamDelivery(settings.redis_url, node.partitions, node.worker.id,
                                              keys=node.keys)
            fleet.attach(runtime, loop)
            node.start()
        await runtime.start()
        if fleet is not None:
            runtime.delivery.start(lambda: fleet.node.owned().keys(), runtime.notify)
        log.info("worker running %s on %s", ", ".join(c.type_name for c in classes),
                 journal.url)
        print(f"loom worker: {', '.join(c.type_name for c in classes)} on {journal.url} "
              f"(code version {version})", flush=True)
        await stop.wait()
        print(f"loom worker: draining (up to {drain_timeout_s:g} s; signal again to stop now)",
              flush=True)
        finished = await runtime.drain(drain_timeout_s, abort=now)
        if fleet is not None:  # hand the partitions over at once, leave the membership
            await runtime.delivery.stop()
            print("loom worker: stream delivery: " + ", ".join(
                f"{k} {v}" for k, v in runtime.delivery.stats.items()), flush=True)
            await asyncio.to_thread(fleet.node.stop, release=True)
        print("loom worker: drained and stopped" if finished else
              "loom worker: stopped with runs cut off; they resume elsewhere by replay",
              flush=True)
    await journal.close()
