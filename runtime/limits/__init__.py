"""Concurrency and rate limits per activity (and tenant): in one process or across the fleet.

    limiter = limiter_from_settings(os.environ.get("LOOM_LIMITS", ""), "redis://...")
    match limiter.try_acquire("http_post", tenant, idempotency_key):
        case Grant() as grant: ...call..., then limiter.release(grant)
        case Wait(retry_after_s=s): ...a durable timer of s seconds, then try again...

See docs/limits.md.
"""

from __future__ import annotations

from runtime import errors
from runtime.limits.base import Grant, Limiter, Wait
from runtime.limits.config import SETTING, ActivityLimits, Limit, LimitsConfig, parse_limits
from runtime.limits.memory import MemoryLimiter

__all__ = ["SETTING", "ActivityLimits", "Grant", "Limit", "Limiter", "LimitsConfig",
           "MemoryLimiter", "Wait", "limiter_from_settings", "parse_limits"]


def limiter_from_settings(limits: str, url: str = "memory://", *,
                          prefix: str = "loom:limit") -> Limiter:
    """`limits`: the LOOM_LIMITS JSON; `url`: `memory://` (one process) or
    `redis://host:port/db` (shared by every worker)."""
    config = parse_limits(limits)
    if url.startswith(("redis://", "rediss://")):
        from runtime.limits.redis_limiter import RedisLimiter

        return RedisLimiter.from_url(config, url, prefix=prefix)
    if url != "memory://":
        raise errors.SettingsInvalid(f"limits URL {url!r}: expected memory:// or "
                                     "redis://host:port/db")
    return MemoryLimiter(config)
