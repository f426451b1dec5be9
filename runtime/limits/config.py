"""Limit configuration: per activity, optionally per tenant, parsed from one JSON setting.

    LOOM_LIMITS='{"http_post": {"concurrency": 4, "rate_per_s": 50, "burst": 10,
                               "lease_s": 30,
                               "tenants": {"acme": {"concurrency": 2}, "*": {"rate_per_s": 5}}}}'

A call to `http_post` must pass the activity-wide limit (all tenants together) *and* its
tenant's limit: the tenant's own entry, else the `"*"` entry (applied to each tenant
separately), else none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    StringConstraints,
    ValidationError,
    model_validator,
)

from runtime import errors

SETTING = "LOOM_LIMITS"
"""The proposed environment variable holding the JSON config (not read by runtime/settings.py
yet; `parse_limits(os.environ.get(SETTING, ""))`)."""

ANY_TENANT = "*"



def _activity_name(name: str) -> str:
    if not name or len(name) > 200 or any(c in "{}" or c.isspace() for c in name):
        raise ValueError("an activity name must be 1-200 characters without braces or "
                         "whitespace (braces would break the Redis Cluster hash tag)")
    return name


ActivityName = Annotated[str, AfterValidator(_activity_name)]


class Limit(BaseModel):
    """One limit: at most `concurrency` calls in flight, at most `rate_per_s` starts per
    second with bursts of up to `burst` (default 1: evenly spaced)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    concurrency: int | None = Field(default=None, gt=0)
    rate_per_s: float | None = Field(default=None, gt=0, le=1_000_000)
    burst: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _burst_needs_rate(self) -> Self:
        if self.burst is not None and self.rate_per_s is None:
            raise ValueError("burst needs rate_per_s")
        if type(self) is Limit and self.concurrency is None and self.rate_per_s is None:
            raise ValueError("set concurrency, rate_per_s or both")
        return self

    @property
    def effective_burst(self) -> int:
        return self.burst if self.burst is not None else 1

    @property
    def interval_s(self) -> float:
        """Seconds between two starts at the sustained rate (0: no rate limit)."""
        return 1.0 / self.rate_per_s if self.rate_per_s else 0.0


class ActivityLimits(Limit):
    """The activity-wide limit, the lease of a concurrency slot, and per-tenant limits."""

    lease_s: float = Field(default=60.0, gt=0, le=86_400)
    """A holder that neither releases nor refreshes within this many seconds (a crashed
    worker) loses its slot."""
    tenants: dict[Annotated[str, StringConstraints(max_length=200)], Limit] = {}

    @model_validator(mode="after")
    def _something_to_limit(self) -> Self:
        if self.concurrency is None and self.rate_per_s is None and not self.tenants:
            raise ValueError("set concurrency, rate_per_s or tenants")
        return self

    def for_tenant(self, tenant: str) -> Limit | None:
        return self.tenants.get(tenant) or self.tenants.get(ANY_TENANT)


@dataclass(frozen=True)
class Scope:
    """One limit that a call must pass, and where its state lives.

    `key` is the part after the prefix: `{activity}` or `{activity}:t:<tenant>`; every
    scope of one activity shares the hash tag `{activity}`, so one Lua script can check
    them all on Redis Cluster."""

    key: str
    label: str
    limit: Limit | None  # None: tracked (for idempotent re-acquire) but not limited


class LimitsConfig(RootModel[dict[ActivityName, ActivityLimits]]):
    model_config = ConfigDict(strict=True, frozen=True)

    def get(self, activity: str) -> ActivityLimits | None:
        return self.root.get(activity)

    def scopes(self, activity: str, tenant: str) -> list[Scope] | None:
        """The activity scope first, then the tenant's if it has one; None: unlimited."""
        limits = self.root.get(activity)
        if limits is None:
            return None
        own = limits if (limits.concurrency or limits.rate_per_s) else None
        scopes = [Scope(f"{{{activity}}}", activity, own)]
        per_tenant = limits.for_tenant(tenant)
        if per_tenant is not None:
            scopes.append(Scope(f"{{{activity}}}:t:{tenant}", f"{activity} tenant {tenant!r}",
                                per_tenant))
        return scopes


def _describe(error: ValidationError, setting: str) -> str:
    lines = []
    for e in error.errors(include_url=False):
        where = ".".join(str(part) for part in e["loc"]) or "(top level)"
        got = f" (got {e['input']!r})" if e["type"] not in {"missing"} and not isinstance(
            e["input"], dict) else ""
        lines.append(f"{where}: {e['msg']}{got}")
    return f"{setting}: " + "; ".join(lines)


def parse_limits(text: str, *, setting: str = SETTING) -> LimitsConfig:
    """Parse the JSON setting; an empty string means no limits. Raises SettingsInvalid
    naming each bad field (`http_post.tenants.acme.concurrency: ...`)."""
    if not text.strip():
        return LimitsConfig({})
    try:
        return LimitsConfig.model_validate_json(text)
    except ValidationError as exc:
        raise errors.SettingsInvalid(_describe(exc, setting)) from None


def limits_from_dict(data: object, *, setting: str = SETTING) -> LimitsConfig:
    try:
        return LimitsConfig.model_validate(data)
    except ValidationError as exc:
        raise errors.SettingsInvalid(_describe(exc, setting)) from None
