"""A receiver of side effects that deduplicates by idempotency key, as a real one must, and
stub activities that perform their effect there."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from runtime import errors
from schemas.manifest import RetryPolicy

Handler = Callable[[Any, str], Any]


@dataclass
class Effect:
    activity: str
    key: str
    input: Any


@dataclass
class Receiver:
    """Applies each idempotency key once. A key that comes back with a different input is a
    bug of the caller (one key must stand for one effect): it is recorded as a conflict."""

    applied: dict[str, Effect] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    duplicates: int = 0
    conflicts: list[tuple[str, Any, Any]] = field(default_factory=list)

    def apply(self, activity: str, key: str, input: Any) -> bool:
        """True if this call performed the effect, False if it was a duplicate."""
        seen = self.applied.get(key)
        if seen is not None:
            self.duplicates += 1
            if (seen.activity, _canon(seen.input)) != (activity, _canon(input)):
                self.conflicts.append((key, (seen.activity, seen.input), (activity, input)))
            return False
        self.applied[key] = Effect(activity, key, input)
        self.order.append(key)
        return True

    def of(self, activity: str) -> list[Effect]:
        return [e for e in self.applied.values() if e.activity == activity]


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


class Flaky(errors.ActivityError):
    """A retryable failure injected before an activity ran."""

    code = errors.ErrorCode.HOST_CALL_FAILED
    retryable = True


class StubActivities:
    """Activities as Python functions `fn(input, idempotency_key) -> output`, each call's
    effect recorded at a `Receiver`. Usable as `ActorRuntime(activities=...)`.

    `flaky` is the chance that a call fails (retryably) before its effect; `latency` the
    largest (virtual) time a call takes.
    """

    def __init__(self, receiver: Receiver | None = None, *, rng: random.Random | None = None,
                 flaky: float = 0.0, latency: float = 0.0,
                 retry: RetryPolicy | None = None) -> None:
        self.receiver = receiver or Receiver()
        self.rng = rng or random.Random(0)
        self.flaky = flaky
        self.latency = latency
        self.retry = retry or RetryPolicy(max_attempts=4, initial_interval_ms=100,
                                          backoff_coefficient=2.0, jitter=False)
        self.handlers: dict[str, Handler] = {}
        self.before: Callable[[], Any] | None = None  # e.g. a crash or a pause point
        self.after: Callable[[], Any] | None = None
        self.calls: list[tuple[str, str, str]] = []  # (activity, key, tenant), every attempt
        self.contained: set[str] = set()  # activities with no effect outside (no receiver)
        # their calls, by key: one computed again (after a crash) with another input is a
        # conflict, as at a receiver
        self.computations = Receiver()

    def add(self, name: str, fn: Handler | None = None, *, contained: bool = False) -> None:
        """Register an activity; by default it returns `{"id": "<name>:<key>"}`. A contained
        one reaches nothing outside (the runtime may run it before earlier outcomes are
        committed, and a crash may run it again): it applies nothing at the receiver."""
        self.handlers[name] = fn or _default(name)
        if contained:
            self.contained.add(name)

    def contained_version(self, name: str, version: str | None) -> str | None:
        """As `ActorRuntime.contained_version`: the version to run if `name` is contained."""
        return (version or "stub") if name in self.contained else None

    async def run(self, name: str, input: Any, *, version: str | None, idempotency_key: str,
                  timeout_ms: int | None, tenant: str) -> Any:
        fn = self.handlers.get(name)
        self.calls.append((name, idempotency_key, tenant))
        if fn is None:
            raise errors.NotFound(f"activity {name!r} is not registered", activity=name)
        if self.before is not None:
            await _maybe_await(self.before())
        if self.latency:
            await asyncio.sleep(self.rng.random() * self.latency)
        if self.flaky and self.rng.random() < self.flaky:
            raise Flaky(f"{name}: injected transient failure", activity=name,
                        idempotency_key=idempotency_key)
        output = fn(input, idempotency_key)
        at = self.computations if name in self.contained else self.receiver
        at.apply(name, idempotency_key, input)
        if self.after is not None:
            await _maybe_await(self.after())
        return output

    async def retry_policy(self, name: str, version: str | None,
                           tenant: str = "") -> RetryPolicy:
        return self.retry


def _default(name: str) -> Handler:
    def output(_input: Any, key: str) -> Any:
        return {"id": f"{name}:{key}"}

    return output


async def _maybe_await(value: Any) -> None:
    if asyncio.iscoroutine(value):
        await value
