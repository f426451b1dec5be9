"""A JournalStore decorator: everything passes through to the real journal; on the way it
traces actor turns and the messages they send, measures commits, and (in `loom serve`) puts
each activity step's resources into the commit that records it.

Tracing across processes rides on the messages. The wrapper learns which message an actor
is handling from what the runtime reads (the call `inbox` hands a new run, the starting
message `read_tail` hands a resumed one) and its `traceparent`. Each commit is an "actor
turn" span continuing that trace, and every message the commit sends (asks, sends, spawns,
replies, timers) is stamped with the turn's context before it is journaled, so whichever
process takes the message (a re-dispatch after a crash too) continues the same trace.

The runtime is not changed for this: `loom serve` hands this wrapper to `ActorRuntime`, and
`loom worker` does too when tracing is on (`observed_worker`), with `TracedExecutor` for
activity spans."""

from __future__ import annotations

import logging
import time
from typing import Any

from opentelemetry import trace

from runtime import errors
from runtime.journal.store import Commit, Envelope, JournalStore
from runtime.service import tracing
from runtime.service.calls import Calls
from runtime.service.metrics import Metrics

log = logging.getLogger("loom.turns")
_ACTIVITY_OPS = ("activity.done", "activity.failed", "activity.retry",
                 "compensation.done", "compensation.failed", "compensation.retry")


class ObservedJournal:
    def __init__(self, inner: JournalStore, calls: Calls | None = None,
                 metrics: Metrics | None = None) -> None:
        self.inner = inner
        self.calls = calls
        self.metrics = metrics
        self.url = inner.url
        self.traceparents: dict[str, str] = calls.traceparents if calls is not None else {}
        """actor -> traceparent of the message its current run handles."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    # -- which message each actor handles --------------------------------------------------
    def _handling(self, actor: str, message: Envelope) -> None:
        tp = message.get("traceparent")
        if tp:
            self.traceparents[actor] = str(tp)
        else:
            self.traceparents.pop(actor, None)

    async def inbox(self, actor: str, now: float, *, calls: int | None = None) -> list[Envelope]:
        entries = await self.inner.inbox(actor, now, calls=calls)
        if calls:  # asked for a call only when idle: the first call starts the next run
            first = next((e for e in entries if e.get("kind", "call") == "call"), None)
            if first is not None:
                self._handling(actor, first)
        return entries

    async def read_tail(self, actor: str) -> list[Commit]:
        tail = await self.inner.read_tail(actor)
        if tail and tail[-1].get("run") and "kind" not in tail[-1]:  # a run to resume
            msg = tail[-1]["run"].get("msg")
            for c in tail:
                message = c.get("message")
                if isinstance(message, dict) and message.get("id") == msg:
                    self._handling(actor, message)
        return tail

    # -- commits ---------------------------------------------------------------------------
    async def append(self, commit: Commit) -> None:
        commit = self._with_resources(commit)
        actor = str(commit.get("actor"))
        message = commit.get("message")
        if isinstance(message, dict):
            self._handling(actor, message)
        with tracing.tracer().start_as_current_span(
                f"actor turn {actor.partition('/')[0]}",
                context=tracing.extract(self.traceparents.get(actor)),
                attributes={"loom.actor": actor, "loom.seq": int(commit.get("seq", -1)),
                            "loom.kind": str(commit.get("kind", "step"))}) as span:
            _stamp(commit.get("outbox"))
            started = time.perf_counter()
            try:
                await self.inner.append(commit)
            except Exception as exc:
                if self.metrics is not None:
                    self.metrics.commits.labels(
                        "conflict" if "Conflict" in type(exc).__name__ else "error").inc()
                span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
                raise
            if self.metrics is not None:
                self.metrics.journal_latency.observe(time.perf_counter() - started)
                self.metrics.commits.labels("ok").inc()
            log.debug("%s: committed seq %s (%s)", actor, commit.get("seq"),
                      commit.get("kind", "step"))

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

    # -- messages --------------------------------------------------------------------------
    async def enqueue(self, envelope: Envelope) -> bool:
        """A span per message, a child of the trace the message carries: the caller's
        current one (an API request) unless a turn stamped it already."""
        if "traceparent" not in envelope:
            tp = tracing.inject()
            if tp:
                envelope = {**envelope, "traceparent": tp}
        with tracing.tracer().start_as_current_span(
                f"enqueue {envelope.get('handler') or envelope.get('name') or envelope['kind']}",
                context=tracing.extract(envelope.get("traceparent")),
                kind=trace.SpanKind.PRODUCER,
                attributes={"loom.actor": str(envelope["target"]),
                            "loom.msg_id": str(envelope["id"])}):
            return await self.inner.enqueue(envelope)


def _stamp(outbox: Any) -> None:
    """Give the messages of a commit the current (turn's) context, in place: the same list
    is what the runtime dispatches after the commit lands. Envelopes are replaced, not
    changed, since a recorded event may hold the same dict."""
    if not outbox:
        return
    tp = tracing.inject()
    if tp is None:
        return
    for i, env in enumerate(outbox):
        if isinstance(env, dict) and "traceparent" not in env:
            outbox[i] = {**env, "traceparent": tp}


class TracedExecutor:
    """An executor whose activity calls are spans, children of the trace of the message the
    calling actor handles (found by the idempotency key `actor:message:step`); what
    `loom worker` hands its runtime when tracing is on. Guests' HTTP requests nest inside."""

    def __init__(self, inner: Any, traceparents: dict[str, str]) -> None:
        self.inner = inner
        self.traceparents = traceparents

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def execute(self, name: str, input: Any, *, version: str | None = None,
                idempotency_key: str | None = None, tenant: str = "",
                timeout_ms: int | None = None, **kw: Any) -> Any:
        """The runtime's call (`Executor.execute`), as a span."""
        actor = (idempotency_key or "").split(":", 1)[0]
        with tracing.tracer().start_as_current_span(
                f"activity {name}", context=tracing.extract(self.traceparents.get(actor)),
                attributes={"loom.activity": name, "loom.actor": actor, "loom.tenant": tenant,
                            "loom.idempotency_key": idempotency_key or ""}) as span:
            try:
                result = self.inner.execute(name, input, version=version,
                                            idempotency_key=idempotency_key, tenant=tenant,
                                            timeout_ms=timeout_ms, **kw)
            except errors.LoomError as exc:
                span.set_attribute("loom.error_code", exc.code.value)
                raise
            span.set_attributes({"loom.version": result.version,
                                 "loom.duration_ms": round(result.duration_ms, 3),
                                 "loom.memory_bytes": result.memory_bytes,
                                 "loom.warm": result.reused_instance})
            return result


def observed_worker(journal: JournalStore, executor: Any) -> tuple[Any, Any]:
    """(journal, executor) of a `loom worker` with tracing on: turns, messages and activity
    calls traced as in `loom serve`."""
    observed = ObservedJournal(journal)
    return observed, TracedExecutor(executor, observed.traceparents)
