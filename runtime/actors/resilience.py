"""Retry policies as tenacity strategies, and per-activity circuit breakers (pybreaker)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pybreaker
import tenacity

from runtime import errors
from schemas.manifest import RetryPolicy


class RetryPlan:
    """Decides, attempt by attempt, whether to retry and how long to wait.

    The strategies are tenacity's own (`stop_after_attempt`, `wait_exponential`,
    `wait_random_exponential` for full jitter); the loop that uses them lives in the actor
    context so every attempt is journaled and long waits become durable timers.
    """

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.stop = tenacity.stop_after_attempt(policy.max_attempts)
        initial = policy.initial_interval_ms / 1000
        cap = policy.max_interval_ms / 1000
        if policy.jitter:
            self.wait: Any = tenacity.wait_random_exponential(
                multiplier=initial, max=cap, exp_base=policy.backoff_coefficient)
        else:
            self.wait = tenacity.wait_exponential(
                multiplier=initial, max=cap, exp_base=policy.backoff_coefficient)

    def _state(self, attempt: int) -> tenacity.RetryCallState:
        state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = attempt
        return state

    def should_retry(self, error: errors.LoomError, attempt: int) -> bool:
        if not error.retryable or error.code in self.policy.non_retryable:
            return False
        return not self.stop(self._state(attempt))

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        return float(self.wait(self._state(attempt)))


def _not_a_fault(exc: BaseException) -> bool:
    """Caller mistakes and business errors do not count against an activity's health."""
    return isinstance(exc, errors.LoomError) and not exc.retryable


class Breakers:
    """One pybreaker.CircuitBreaker per activity name; storage is pluggable."""

    def __init__(self, *, fail_max: int = 5, reset_timeout: float = 30.0,
                 storage: Callable[[str], pybreaker.CircuitBreakerStorage] | None = None) -> None:
        self.fail_max = fail_max
        self.reset_timeout = reset_timeout
        self._storage = storage
        self._breakers: dict[str, pybreaker.CircuitBreaker] = {}
        self._lock = threading.Lock()

    def get(self, activity: str) -> pybreaker.CircuitBreaker:
        breaker = self._breakers.get(activity)
        if breaker is None:
            with self._lock:
                breaker = self._breakers.get(activity)
                if breaker is None:
                    storage = self._storage(activity) if self._storage else None
                    breaker = pybreaker.CircuitBreaker(
                        fail_max=self.fail_max, reset_timeout=self.reset_timeout,
                        exclude=[_not_a_fault], name=activity, state_storage=storage)
                    self._breakers[activity] = breaker
        return breaker

    def call(self, activity: str, fn: Callable[[], Any]) -> Any:
        """Run `fn` through the activity's breaker; an open breaker raises CircuitOpen."""
        breaker = self.get(activity)
        try:
            return breaker.call(fn)
        except pybreaker.CircuitBreakerError as exc:
            origin = exc.__cause__ or exc.__context__  # pybreaker raises inside its except
            cause = origin if isinstance(origin, errors.LoomError) else None
            raise errors.CircuitOpen(
                f"circuit breaker for {activity!r} is open"
                + (f" (tripped by: {cause.message})" if cause else ""), activity=activity,
                details={"state": breaker.current_state}) from None
