"""Everything one `loom serve` process holds: executor, journal (observed), the actor
runtime it runs (workflows and `--module` actors), keys, schedules, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from runtime.executor import Executor
from runtime.journal.store import JournalStore
from runtime.service import tenancy
from runtime.service.admission import Admission
from runtime.service.calls import Calls
from runtime.service.config import ServiceConfig
from runtime.service.keys import KeyRing
from runtime.service.metrics import DUE_SAMPLE, Metrics
from runtime.service.observe import ObservedJournal
from runtime.service.store import open_store
from runtime.settings import LoomSettings, load_settings

log = logging.getLogger("loom.service")


class Service:
    def __init__(self, settings: LoomSettings | None = None,
                 config: ServiceConfig | None = None, *, modules: Sequence[str] = (),
                 journal: JournalStore | None = None, executor: Executor | None = None) -> None:
        self.settings = settings or load_settings()
        self.config = config or ServiceConfig()
        self.modules = list(modules)
        self.metrics = Metrics()
        self._own_executor = executor is None
        self.executor = executor or Executor(self.settings)
        self.calls = Calls(self.executor, self.metrics)
        self.admission = Admission(self.settings.limits, self.config.quotas,
                                   self.settings.redis_url, self.metrics)
        self._inner_journal = journal
        self.journal: Any = None
        self.runtime: Any = None
        self.store = open_store(self.settings, self.config)
        self.keyring = KeyRing(self.store)
        self.scheduler: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self.metrics.gauges("loom_module_cache_memory_entries", "Compiled modules in memory",
                            [], lambda: [([], float(len(getattr(self.executor.modules,
                                                                "_lru", {}) or {})))])
        self.metrics.counters("loom_module_cache_lookups", "Compiled-module lookups: "
                              "memory_hit, disk_hit, or compile (a miss)", ["result"],
                              self._cache_lookups)
        self.metrics.gauges("loom_leases_held", "Actor leases this server holds", [],
                            lambda: [([], float(len(self.runtime.activations)))]
                            if self.runtime is not None else [])
        self.metrics.gauges("loom_breaker_open", "1 when an activity's breaker is open",
                            ["activity"], self.breaker_states)

    def _cache_lookups(self) -> list[tuple[list[str], float]]:
        stats = self.executor.modules.stats
        return [(["memory_hit"], float(stats.memory_hits)),
                (["disk_hit"], float(stats.disk_hits)), (["compile"], float(stats.compiles))]

    async def sample_inbox(self, timeout_s: float = 2.0) -> None:
        """Set the inbox-lag gauges from the journal's schedule (two indexed reads); called
        by `/metrics` before rendering. On a slow or failing journal the last values stay."""
        if self.journal is None:
            return
        inner = self.journal.inner
        now = time.time()
        try:
            due, earliest = await asyncio.wait_for(asyncio.gather(
                inner.due_actors(now, DUE_SAMPLE), inner.next_due(0.0)), timeout_s)
        except Exception as exc:  # a scrape never fails because the journal is away
            log.warning("inbox lag not sampled: %s", exc)
            return
        self.metrics.inbox_due.set(len(due))
        self.metrics.inbox_oldest.set(max(0.0, now - earliest) if earliest else 0.0)

    def breaker_states(self) -> list[tuple[list[str], float]]:
        if self.runtime is None:
            return []
        rows = []
        for name, breaker in getattr(self.runtime.breakers, "_breakers", {}).items():
            state = str(getattr(breaker, "current_state", "closed"))
            rows.append(([name.split(tenancy.ACTIVITY_SEP, 1)[-1]],
                         1.0 if state == "open" else 0.0))
        return rows

    async def start(self) -> None:
        from runtime.journal import open_journal

        inner = self._inner_journal or open_journal(self.settings)
        self.journal = ObservedJournal(inner, self.calls, self.metrics)
        if self.config.run_actors:
            self.runtime = await self._start_runtime()
        from runtime.service.cron import Scheduler

        self.scheduler = Scheduler(self)
        self._tasks.append(asyncio.create_task(self.scheduler.loop(), name="loom-cron"))

    async def _start_runtime(self) -> Any:
        from runtime.actors import ActorRuntime
        from runtime.actors.loading import actor_classes, load_module
        from wdl.engine import WorkflowActor

        rt = ActorRuntime(self.journal, self.executor, activities=self.calls,
                          tenant_of=tenancy.tenant_of_actor, poll_interval_s=0.02,
                          lease_ttl_s=self.settings.lease_ttl_s,
                          limiter=self.admission.limiter,
                          max_deliveries=self.settings.max_deliveries)
        self.calls.breakers = rt.breakers
        rt.register(WorkflowActor)
        for spec in self.modules:
            for cls in actor_classes(load_module(spec)):
                rt.register(cls)
        await rt.start()
        return rt

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.runtime is not None:
            await self.runtime.stop()
        if self.journal is not None and self._inner_journal is None:
            await self.journal.inner.close()
        if self._own_executor:
            self.executor.close()
        self.store.close()
