"""Retry policies as tenacity strategies, and per-activity circuit breakers (pybreaker)."""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
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
        self._strategies: tuple[Any, Any] | None = None  # built at the first failure

    @property
    def stop(self) -> Any:
        """tenacity's stop strategy for this policy."""
        return self._stop_and_wait()[0]

    @property
    def wait(self) -> Any:
        """tenacity's wait strategy for this policy."""
        return self._stop_and_wait()[1]

    def _stop_and_wait(self) -> tuple[Any, Any]:
        if self._strategies is None:
            policy = self.policy
            initial = policy.initial_interval_ms / 1000
            cap = policy.max_interval_ms / 1000
            backoff = (tenacity.wait_random_exponential if policy.jitter
                       else tenacity.wait_exponential)
            self._strategies = (tenacity.stop_after_attempt(policy.max_attempts),
                                backoff(multiplier=initial, max=cap,
                                        exp_base=policy.backoff_coefficient))
        return self._strategies

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


def redis_breaker_storage(url: str, *, prefix: str = "loom:breaker",
                          ) -> Callable[[str], pybreaker.CircuitBreakerStorage]:
    """Breaker state shared through Redis, so every worker sees one breaker per activity."""
    import redis

    client = redis.Redis.from_url(url)

    def storage(activity: str) -> pybreaker.CircuitBreakerStorage:
        return pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, client,
                                             namespace=f"{prefix}:{activity}")

    return storage


class RedisTrials:
    """The half-open trial claimed fleet-wide (`SET NX PX`): one worker of the fleet sends
    it, not one per worker. The claim lapses by itself after `ttl_s` (a worker killed
    mid-trial); a Redis error counts as taken (fail closed: the breaker stays shut)."""

    def __init__(self, url: str, ttl_s: float, *, prefix: str = "loom:breaker") -> None:
        import redis

        self.client = redis.Redis.from_url(url)
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.prefix = prefix
        self._mine: dict[str, str] = {}  # activity -> the token of the claim held here

    def claim(self, activity: str) -> bool:
        token = uuid.uuid4().hex
        try:
            taken = bool(self.client.set(f"{self.prefix}:{activity}:trial", token, nx=True,
                                         px=self.ttl_ms))
        except Exception:
            return False
        if taken:
            self._mine[activity] = token
        return taken

    def end(self, activity: str) -> None:
        token = self._mine.pop(activity, None)
        if token is None:
            return
        with contextlib.suppress(Exception):  # it lapses anyway; only ours is deleted
            self.client.eval(_END_TRIAL, 1, f"{self.prefix}:{activity}:trial", token)


_END_TRIAL = ("if redis.call('get', KEYS[1]) == ARGV[1] then "
              "return redis.call('del', KEYS[1]) end return 0")


def breakers_from_settings(url: str, *, fail_max: int, reset_timeout: float) -> Breakers:
    """`memory://` (one process) or `redis://host:port/db` (shared by all workers)."""
    if url.startswith(("redis://", "rediss://")):
        return Breakers(fail_max=fail_max, reset_timeout=reset_timeout,
                        storage=redis_breaker_storage(url),
                        trials=RedisTrials(url, ttl_s=max(reset_timeout, 30.0)))
    if url != "memory://":
        raise errors.SettingsInvalid(f"LOOM_BREAKER_URL={url!r}: expected memory:// or "
                                     "redis://host:port/db")
    return Breakers(fail_max=fail_max, reset_timeout=reset_timeout)


def _not_a_fault(exc: BaseException) -> bool:
    """Caller mistakes and business errors do not count against an activity's health."""
    return isinstance(exc, errors.LoomError) and not exc.retryable


class Breakers:
    """One pybreaker.CircuitBreaker per activity name; storage is pluggable.

    pybreaker holds its lock for the whole guarded call, which would serialise every
    activity of a process. So the call runs outside: an open breaker (or a half-open one
    whose single trial is in flight) fails fast first, then the finished outcome is passed
    through `breaker.call` so pybreaker's own state machine counts it.
    """

    def __init__(self, *, fail_max: int = 5, reset_timeout: float = 30.0,
                 storage: Callable[[str], pybreaker.CircuitBreakerStorage] | None = None,
                 trials: RedisTrials | None = None) -> None:
        self.fail_max = fail_max
        self.reset_timeout = reset_timeout
        self._storage = storage
        self.trials = trials
        self._breakers: dict[str, pybreaker.CircuitBreaker] = {}
        self._stores: dict[str, pybreaker.CircuitBreakerStorage] = {}
        self._trials: set[str] = set()
        self._lock = threading.Lock()

    def get(self, activity: str) -> pybreaker.CircuitBreaker:
        breaker = self._breakers.get(activity)
        if breaker is None:
            with self._lock:
                breaker = self._breakers.get(activity)
                if breaker is None:
                    storage = (self._storage(activity) if self._storage
                               else pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED))
                    breaker = pybreaker.CircuitBreaker(
                        fail_max=self.fail_max, reset_timeout=self.reset_timeout,
                        exclude=[_not_a_fault], name=activity, state_storage=storage)
                    self._stores[activity] = storage
                    self._breakers[activity] = breaker
        return breaker

    def _admit(self, activity: str, breaker: pybreaker.CircuitBreaker) -> bool:
        """Fail fast while open; let exactly one trial through once the timeout passed.

        Returns True when this call is the half-open trial.
        """
        state = breaker.current_state
        if state == pybreaker.STATE_CLOSED:
            return False
        opened_at = self._stores[activity].opened_at
        if state == pybreaker.STATE_OPEN and opened_at is not None and \
                datetime.now(UTC) < opened_at + timedelta(seconds=self.reset_timeout):
            raise errors.CircuitOpen(f"circuit breaker for {activity!r} is open",
                                     activity=activity, details={"state": state})
        with self._lock:
            if activity in self._trials or (self.trials is not None and
                                             not self.trials.claim(activity)):
                raise errors.CircuitOpen(f"circuit breaker for {activity!r} is half-open and "
                                         "its trial call is in flight", activity=activity,
                                         details={"state": "half-open"})
            self._trials.add(activity)
        return True

    def call(self, activity: str, fn: Callable[[], Any]) -> Any:
        """Run `fn` guarded by the activity's breaker; an open breaker raises CircuitOpen."""
        breaker = self.get(activity)
        trial = self._admit(activity, breaker)
        try:
            try:
                value, error = fn(), None
            except Exception as exc:
                value, error = None, exc

            def outcome() -> Any:
                if error is not None:
                    raise error
                return value

            try:
                return breaker.call(outcome)
            except pybreaker.CircuitBreakerError:
                if error is None:  # it ran and succeeded; another worker opened the breaker
                    return value   # meanwhile: its effect happened, so must its result
                cause = f" (tripped by: {error.message})" if isinstance(
                    error, errors.LoomError) else ""
                raise errors.CircuitOpen(
                    f"circuit breaker for {activity!r} is open{cause}", activity=activity,
                    details={"state": breaker.current_state}) from error
        finally:
            if trial:
                with self._lock:
                    self._trials.discard(activity)
                if self.trials is not None:
                    self.trials.end(activity)
