"""The limiter contract shared by the in-memory and the Redis limiters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class Grant:
    """Permission to make one call. `token` is the caller's idempotency key: acquiring again
    with the token of a live grant returns that grant (no second slot, no second rate token).
    `nonce` tells this grant from a later one with the same token, so a stale grant (its
    lease expired and the token was granted again) cannot release or refresh the new one."""

    activity: str
    tenant: str
    token: str
    nonce: str  # "" for a call that no limit applies to

    @property
    def limited(self) -> bool:
        return bool(self.nonce)


@dataclass(frozen=True)
class Wait:
    """Over the limit: try again in `retry_after_s` seconds (turn it into a durable timer).

    The estimate is the time until the blocking limit could admit this call if nobody else
    takes the room first: the next rate token, or the earliest lease expiry of a
    concurrency slot (an upper bound when holders release early; see docs/limits.md)."""

    retry_after_s: float
    limit: str  # which limit said no, e.g. "http_post concurrency"


@runtime_checkable
class Limiter(Protocol):
    def try_acquire(self, activity: str, tenant: str, token: str) -> Grant | Wait:
        """Take a slot and a rate token for one call, or say how long to wait. Never blocks
        waiting for room; unconfigured activities always get a grant."""
        ...

    def release(self, grant: Grant) -> bool:
        """Free the grant's concurrency slot. Idempotent; True only if it was still held.
        Rate tokens are not given back (they count starts)."""
        ...

    def lease_s(self, activity: str) -> float:
        """How long a grant of `activity` holds its slot unless refreshed (0: no limit)."""
        ...

    def refresh(self, grant: Grant) -> bool:
        """Extend the grant's lease by the activity's `lease_s` (for calls that run long).
        False if the lease already expired: the slot may be someone else's now."""
        ...


def unlimited(activity: str, tenant: str, token: str) -> Grant:
    return Grant(activity, tenant, token, "")
