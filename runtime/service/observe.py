"""A JournalStore decorator: everything passes through to the real journal; on the way it
puts each activity step's resources into the commit that records it, stamps enqueued
messages with the sender's traceparent, and measures commits (metrics, spans).

The runtime is not changed for this: the service hands this wrapper to `ActorRuntime`."""

from __future__ import annotations

import time
from typing import Any

from opentelemetry import trace

from runtime.journal.store import Commit, Envelope, JournalStore
from runtime.service import tracing
from runtime.service.calls import Calls
from runtime.service.metrics import Metrics

_ACTIVITY_OPS = ("activity.done", "activity.failed", "activity.retry",
                 "compensation.done", "compensation.failed", "compensation.retry")


class ObservedJournal:
    def __init__(self, inner: JournalStore, calls: Calls | None, metrics: Metrics) -> None:
        self.inner = inner
        self.calls = calls
        self.metrics = metrics
        self.url = inner.url

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def append(self, commit: Commit) -> None:
        commit = self._with_resources(commit)
        actor = str(commit.get("actor"))
        message = commit.get("message")
        if self.calls is not None and isinstance(message, dict):
            if message.get("traceparent"):
                self.calls.traceparents[actor] = str(message["traceparent"])
            else:
                self.calls.traceparents.pop(actor, None)
        parent = tracing.extract(self.calls.traceparents.get(actor)) if self.calls else None
        with tracing.tracer().start_as_current_span(
                f"actor turn {actor.partition('/')[0]}", context=parent,
                attributes={"loom.actor": actor, "loom.seq": int(commit.get("seq", -1)),
                            "loom.kind": str(commit.get("kind", "step"))}) as span:
            started = time.perf_counter()
            try:
                await self.inner.append(commit)
            except Exception as exc:
                self.metrics.commits.labels("conflict" if "Conflict" in type(exc).__name__
                                            else "error").inc()
                span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
                raise
            self.metrics.journal_latency.observe(time.perf_counter() - started)
            self.metrics.commits.labels("ok").inc()

    def _with_resources(self, commit: Commit) -> Commit:
        events = commit.get("events")
        if self.calls is None or not events:
            return commit
        actor = str(commit.get("actor"))
        changed = False
        out = []
        for e in events:
            if e.get("op") in _ACTIVITY_OPS and "resources" not in e:
                used = self._find(actor, e)
                if used is not None:
                    e = {**e, "resources": used}
                    changed = True
            out.append(e)
        return {**commit, "events": out} if changed else commit

    def _find(self, actor: str, event: dict[str, Any]) -> list[dict[str, Any]] | None:
        assert self.calls is not None
        comp = "comp:" if str(event["op"]).startswith("compensation") else ""
        suffix = f":{comp}{event['step']}"
        prefix = f"{actor}:"
        for key in list(self.calls.pending):
            if key.startswith(prefix) and key.endswith(suffix) and \
                    ":" not in key[len(prefix):-len(suffix)]:
                return self.calls.take(key)
        return None

    async def enqueue(self, envelope: Envelope) -> bool:
        if "traceparent" not in envelope:
            tp = tracing.inject()
            if tp is None and self.calls is not None:  # sent by an actor: its run's trace
                sender = envelope.get("sender") or envelope.get("reply_to") or ""
                tp = self.calls.traceparents.get(str(sender).split("#")[0])
            if tp:
                envelope = {**envelope, "traceparent": tp}
        with tracing.tracer().start_as_current_span(
                f"enqueue {envelope.get('handler') or envelope.get('name') or envelope['kind']}",
                attributes={"loom.actor": str(envelope["target"]),
                            "loom.msg_id": str(envelope["id"])}):
            return await self.inner.enqueue(envelope)
