"""Prometheus metrics (`GET /metrics`), one registry per server so tests can run several.

What is measured where: invocations, latency, fuel, peak memory and instance warmth by the
activity runner and the API's invoke; commits and journal latency by the observed journal;
inbox lag, leases held and breaker states are read when scraped (collectors below)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

DUE_SAMPLE = 500
"""`due_actors` limit per kind (messages, timers) when the inbox lag is sampled."""
_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.invocations = Counter("loom_activity_invocations", "Activity invocations",
                                   ["activity", "version", "outcome", "code"], registry=r)
        self.latency = Histogram("loom_activity_duration_seconds", "Activity call duration",
                                 ["activity"], buckets=_LATENCY, registry=r)
        self.fuel = Histogram("loom_activity_fuel_used", "Fuel used per call", ["activity"],
                              buckets=(1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9), registry=r)
        self.memory = Histogram("loom_activity_memory_bytes", "Guest memory per call",
                                ["activity"], buckets=tuple(2.0 ** n for n in range(16, 33, 2)),
                                registry=r)
        self.warm = Counter("loom_instance_pool_calls", "Calls by instance warmth",
                            ["warm"], registry=r)
        self.commits = Counter("loom_journal_commits", "Commits written", ["outcome"],
                               registry=r)
        self.journal_latency = Histogram("loom_journal_append_seconds", "Commit write latency",
                                         buckets=_LATENCY, registry=r)
        self.requests = Histogram("loom_http_request_duration_seconds", "API requests",
                                  ["route", "method", "status"], buckets=_LATENCY, registry=r)
        self.triggers = Counter("loom_trigger_messages", "Trigger requests",
                                ["kind", "created"], registry=r)
        self.cron_ticks = Counter("loom_schedule_ticks_fired", "Cron ticks enqueued", [],
                                  registry=r)
        self.throttled = Counter("loom_api_throttled", "API requests refused with 429",
                                 ["kind"], registry=r)
        self.inbox_due = Gauge("loom_inbox_due_actors", "Actors with a message or timer due "
                               "now, from the journal's schedule at scrape time (saturates "
                               f"at {2 * DUE_SAMPLE})", registry=r)
        self.inbox_oldest = Gauge("loom_inbox_oldest_due_timer_age_seconds", "How late the "
                                  "most overdue timer in the journal's schedule is (0: none "
                                  "overdue)", registry=r)
        self.module_cache = Gauge("loom_module_cache_entries", "Compiled modules in memory",
                                  registry=r)

    def observe_call(self, activity: str, version: str, seconds: float, *, code: str = "",
                     fuel: int | None = None, memory: int = 0, warm: bool | None = None) -> None:
        self.invocations.labels(activity, version, "ok" if not code else "error", code).inc()
        self.latency.labels(activity).observe(seconds)
        if fuel is not None:
            self.fuel.labels(activity).observe(fuel)
        if memory:
            self.memory.labels(activity).observe(memory)
        if warm is not None:
            self.warm.labels("true" if warm else "false").inc()

    def gauges(self, name: str, text: str, labels: list[str],
               read: Callable[[], list[tuple[list[str], float]]]) -> None:
        """A gauge family read when scraped."""
        self.registry.register(_Read(name, text, labels, read))

    def counters(self, name: str, text: str, labels: list[str],
                 read: Callable[[], list[tuple[list[str], float]]]) -> None:
        """A counter family kept elsewhere (e.g. the module cache's own stats), read when
        scraped; `name` without `_total`."""
        self.registry.register(_Read(name, text, labels, read, CounterMetricFamily))


class _Read(Collector):
    def __init__(self, name: str, text: str, labels: list[str],
                 read: Callable[[], list[tuple[list[str], float]]],
                 family: type[GaugeMetricFamily | CounterMetricFamily] = GaugeMetricFamily
                 ) -> None:
        self.name, self.text, self.labels, self.read = name, text, labels, read
        self.family = family

    def collect(self) -> Iterator[Any]:
        family = self.family(self.name, self.text, labels=self.labels)
        try:
            rows = self.read()
        except Exception:  # a scrape never fails because one source is away
            rows = []
        for labels, value in rows:
            family.add_metric(labels, value)
        yield family

    def describe(self) -> Iterator[Any]:
        return iter(())
