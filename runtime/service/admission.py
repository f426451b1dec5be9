"""Per-tenant limits at the front door: the activity limits of `LOOM_LIMITS` for API invokes,
and request quotas per tenant (`LOOM_SERVICE_QUOTAS`).

Both use the limiter of `runtime/limits/` (in memory, or in Redis when `LOOM_REDIS_URL` is
set, so every server and worker shares them). The actor runtime the server runs gets the
same limiter: an actor's call waits durably for room (docs/limits.md); an API call is not
durable, so over a limit it is refused at once with 429 and `Retry-After`, never queued."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, RootModel, StringConstraints, ValidationError

from runtime import errors
from runtime.limits import Grant, Limiter, Wait, limiter_from_settings
from runtime.limits.config import ActivityLimits, Limit, LimitsConfig, limits_from_dict
from runtime.service.metrics import Metrics
from runtime.service.problems import Problem

QUOTA_SETTING = "LOOM_SERVICE_QUOTAS"
REQUESTS = "api-requests"
"""The limiter's name for the request quota (its own key prefix, so never an activity's)."""
CONCURRENCY_RETRY_CAP_S = 1.0
"""A concurrency slot's `retry_after` is its holder's lease expiry, an upper bound: holders
usually finish long before. An API client is told to come back within this."""


class Quota(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    per_minute: int = Field(gt=0, le=60_000_000)
    burst: int | None = Field(default=None, gt=0)
    """Requests accepted at once after an idle spell (default: ten seconds' worth)."""

    def limit(self) -> Limit:
        burst = self.burst if self.burst is not None else max(1, self.per_minute // 6)
        return Limit(rate_per_s=self.per_minute / 60, burst=burst)


class Quotas(RootModel[dict[Annotated[str, StringConstraints(min_length=1, max_length=200)],
                            Quota]]):
    model_config = ConfigDict(strict=True, frozen=True)


def parse_quotas(text: str) -> LimitsConfig | None:
    """`{"*": {"per_minute": 600}, "acme": {"per_minute": 6000, "burst": 500}}`: a tenant's
    own entry, else `"*"` (each tenant separately); empty: no quotas."""
    if not text.strip():
        return None
    try:
        quotas = Quotas.model_validate_json(text)
    except ValidationError as exc:
        where = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
                          for e in exc.errors(include_url=False))
        raise errors.SettingsInvalid(f"{QUOTA_SETTING}: {where}") from None
    tenants = {t: q.limit() for t, q in quotas.root.items()}
    # lease_s 1: a request holds no slot; its holder entry ages out without a release call.
    return limits_from_dict({REQUESTS: ActivityLimits(tenants=tenants, lease_s=1.0)})


async def _nothing() -> None:
    return None


class Admission:
    """What the API asks before a request (quota) and before an invoke (activity limits)."""

    def __init__(self, limits: str, quotas: str, url: str, metrics: Metrics) -> None:
        self.limiter: Limiter | None = (limiter_from_settings(limits, url or "memory://")
                                        if limits.strip() else None)
        self.quota_config = parse_quotas(quotas)
        self.quotas: Limiter | None = None
        if self.quota_config is not None:
            if url.startswith(("redis://", "rediss://")):
                from runtime.limits.redis_limiter import RedisLimiter

                self.quotas = RedisLimiter.from_url(self.quota_config, url, prefix="loom:quota")
            else:
                from runtime.limits import MemoryLimiter

                self.quotas = MemoryLimiter(self.quota_config)
        self.metrics = metrics

    def usage(self) -> dict[str, dict[str, Any]]:
        """Each limited activity's fleet-wide limits and, from Redis, the calls holding a
        slot now (`in_use`; None for the in-memory limiter)."""
        limiter = self.limiter
        if limiter is None:
            return {}
        usage = getattr(limiter, "usage", None)
        if callable(usage):
            return dict(usage())
        config: LimitsConfig = getattr(limiter, "config", LimitsConfig({}))
        return {name: {"concurrency": lim.concurrency, "rate_per_s": lim.rate_per_s,
                       "in_use": None} for name, lim in sorted(config.root.items())}

    async def request(self, tenant: str) -> None:
        """Take one of the tenant's requests, or raise 429 `quota_exceeded`."""
        if self.quotas is None:
            return
        verdict = await asyncio.to_thread(self.quotas.try_acquire, REQUESTS, tenant,
                                          uuid.uuid4().hex)
        if isinstance(verdict, Wait):
            self.metrics.throttled.labels("quota").inc()
            raise _refusal("quota_exceeded", "Quota exceeded",
                           "this tenant's request quota is used up", verdict, None)

    async def invoke(self, activity: str, tenant: str) -> Callable[[], Awaitable[None]]:
        """Take a slot and a rate token of `activity` for the tenant, or raise 429
        `rate_limited`; returns what frees the slot (call it when the call ends)."""
        limiter = self.limiter
        if limiter is None:
            return _nothing
        verdict = await asyncio.to_thread(limiter.try_acquire, activity, tenant,
                                          f"api:{uuid.uuid4().hex}")
        if isinstance(verdict, Wait):
            self.metrics.throttled.labels("activity").inc()
            raise _refusal("rate_limited", "Rate limited",
                           f"activity {activity}: over its limit", verdict, activity)
        grant: Grant = verdict

        async def release() -> None:
            await asyncio.to_thread(limiter.release, grant)

        return release if grant.limited else _nothing


def _refusal(code: str, title: str, detail: str, wait: Wait, activity: str | None) -> Problem:
    seconds = wait.retry_after_s
    if wait.limit.endswith("concurrency"):
        seconds = min(seconds, CONCURRENCY_RETRY_CAP_S)
    which = "concurrency" if wait.limit.endswith("concurrency") else "rate"
    scope = "tenant" if " tenant " in f" {wait.limit} " else "activity"
    extra: dict[str, Any] = {"activity": activity} if activity else {}
    return Problem(429, code, title,
                   f"{detail} ({scope} {which}); retry in {seconds:.3f} s",
                   headers_={"Retry-After": str(max(1, math.ceil(seconds)))},
                   retry_after_s=round(seconds, 3), limit=which, scope=scope, retryable=True,
                   **extra)
