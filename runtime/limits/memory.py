"""Limits within one process: the same algorithm as the Redis scripts, under a lock."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

from runtime.limits.base import Grant, Wait, unlimited
from runtime.limits.config import LimitsConfig, Scope


class MemoryLimiter:
    """Concurrency slots as leases (token -> expiry) and rate as GCRA, per scope key."""

    def __init__(self, config: LimitsConfig, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self._lock = threading.Lock()
        self._holders: dict[str, dict[str, float]] = {}  # scope key -> token -> lease expiry
        self._tat: dict[str, float] = {}  # scope key -> GCRA theoretical arrival time
        self._grants: dict[str, dict[str, str]] = {}  # activity scope key -> token -> nonce

    def _purge(self, scope: Scope, now: float) -> dict[str, float]:
        holders = self._holders.setdefault(scope.key, {})
        for token in [t for t, expiry in holders.items() if expiry <= now]:
            del holders[token]
        return holders

    def try_acquire(self, activity: str, tenant: str, token: str) -> Grant | Wait:
        scopes = self.config.scopes(activity, tenant)
        if scopes is None:
            return unlimited(activity, tenant, token)
        lease = self.lease_s(activity)
        with self._lock:
            now = self.clock()
            holders = [self._purge(s, now) for s in scopes]
            grants = self._grants.setdefault(scopes[0].key, {})
            for t in [t for t in grants if t not in holders[0]]:
                del grants[t]
            if token in grants:  # the same call again (a re-run): same grant, renewed lease
                for h in holders:
                    if token in h:
                        h[token] = now + lease
                return Grant(activity, tenant, token, grants[token])
            wait, blocked, new_tats = 0.0, "", []
            for scope, h in zip(scopes, holders, strict=True):
                limit = scope.limit
                if limit is None:
                    new_tats.append(0.0)
                    continue
                if limit.concurrency is not None and len(h) >= limit.concurrency:
                    expiries = sorted(h.values())
                    w = expiries[len(h) - limit.concurrency] - now
                    if not blocked or w > wait:
                        wait, blocked = w, f"{scope.label} concurrency"
                if limit.rate_per_s is not None:
                    interval = limit.interval_s
                    new_tat = max(self._tat.get(scope.key, now), now) + interval
                    w = new_tat - now - limit.effective_burst * interval
                    if w > 0 and (not blocked or w > wait):
                        wait, blocked = w, f"{scope.label} rate"
                    new_tats.append(new_tat)
                else:
                    new_tats.append(0.0)
            if blocked:
                return Wait(max(wait, 0.0), blocked)
            nonce = uuid.uuid4().hex
            for scope, h, new_tat in zip(scopes, holders, new_tats, strict=True):
                h[token] = now + lease
                if new_tat:
                    self._tat[scope.key] = new_tat
            grants[token] = nonce
            return Grant(activity, tenant, token, nonce)

    def lease_s(self, activity: str) -> float:
        limits = self.config.get(activity)
        return limits.lease_s if limits is not None else 0.0

    def _owned(self, grant: Grant) -> list[Scope] | None:
        scopes = self.config.scopes(grant.activity, grant.tenant)
        if not grant.nonce or scopes is None:
            return None
        if self._grants.get(scopes[0].key, {}).get(grant.token) != grant.nonce:
            return None
        return scopes

    def release(self, grant: Grant) -> bool:
        with self._lock:
            scopes = self._owned(grant)
            if scopes is None:
                return False
            now = self.clock()
            live = self._holders[scopes[0].key].get(grant.token, now) > now
            del self._grants[scopes[0].key][grant.token]
            for s in scopes:
                self._holders.get(s.key, {}).pop(grant.token, None)
            return live

    def refresh(self, grant: Grant) -> bool:
        with self._lock:
            scopes = self._owned(grant)
            if scopes is None:
                return False
            now = self.clock()
            if self._holders[scopes[0].key].get(grant.token, now) <= now:
                return False
            for s in scopes:
                h = self._holders.get(s.key, {})
                if grant.token in h:
                    h[grant.token] = now + self.lease_s(grant.activity)
            return True
