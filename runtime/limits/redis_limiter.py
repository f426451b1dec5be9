"""Limits shared by every worker through Redis: one Lua script per operation (atomic), times
from the Redis server's clock (`TIME`), never from the workers'.

Keys, for prefix `loom:limit` and activity `http_post` (all in hash slot of `{http_post}`):

    loom:limit:{http_post}:grants            hash  token -> nonce of live grants
    loom:limit:{http_post}:holders           zset  token scored by lease expiry (µs)
    loom:limit:{http_post}:rate              string GCRA theoretical arrival time (µs)
    loom:limit:{http_post}:t:acme:holders    the same, per tenant
    loom:limit:{http_post}:t:acme:rate
"""

from __future__ import annotations

import math
import uuid
from typing import Any

import redis

from runtime import errors
from runtime.limits.base import Grant, Wait, unlimited
from runtime.limits.config import LimitsConfig, Scope

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
"""

_TOUCH = """
local function touch(key, ttl_ms)
  local pttl = redis.call('PTTL', key)
  if pttl < ttl_ms then redis.call('PEXPIRE', key, ttl_ms) end
end
"""

ACQUIRE = _NOW + _TOUCH + """
-- KEYS[1] grants; then per scope i: KEYS[2i] holders, KEYS[2i+1] rate
-- ARGV: token, nonce, lease_us, then per scope i: concurrency, interval_us, burst (0 = none)
local token, nonce, lease = ARGV[1], ARGV[2], tonumber(ARGV[3])
local n = (#KEYS - 1) / 2
local ttl_ms = math.ceil(lease / 1000) + 1000
for i = 1, n do
  local h = KEYS[2 * i]
  local dead = redis.call('ZRANGEBYSCORE', h, '-inf', now)
  for _, m in ipairs(dead) do
    redis.call('ZREM', h, m)
    if i == 1 then redis.call('HDEL', KEYS[1], m) end
  end
end
local held = redis.call('HGET', KEYS[1], token)
if held then
  for i = 1, n do
    redis.call('ZADD', KEYS[2 * i], 'XX', now + lease, token)
    touch(KEYS[2 * i], ttl_ms)
  end
  touch(KEYS[1], ttl_ms)
  return {1, held, '0', ''}
end
local blocked, wait, which = false, 0, ''
local tats = {}
for i = 1, n do
  local h, r = KEYS[2 * i], KEYS[2 * i + 1]
  local conc = tonumber(ARGV[1 + 3 * i])
  local interval = tonumber(ARGV[2 + 3 * i])
  local burst = tonumber(ARGV[3 + 3 * i])
  if conc > 0 then
    local card = redis.call('ZCARD', h)
    if card >= conc then
      local slot = redis.call('ZRANGE', h, card - conc, card - conc, 'WITHSCORES')
      local w = tonumber(slot[2]) - now
      if not blocked or w > wait then blocked, wait, which = true, w, i .. ':concurrency' end
    end
  end
  if interval > 0 then
    local tat = tonumber(redis.call('GET', r) or '0')
    if tat < now then tat = now end
    local new_tat = tat + interval
    local w = new_tat - now - burst * interval
    if w > 0 and (not blocked or w > wait) then blocked, wait, which = true, w, i .. ':rate' end
    tats[i] = new_tat
  end
end
if blocked then
  if wait < 0 then wait = 0 end
  return {0, '', string.format('%.0f', wait), which}
end
for i = 1, n do
  local h, r = KEYS[2 * i], KEYS[2 * i + 1]
  redis.call('ZADD', h, now + lease, token)
  touch(h, ttl_ms)
  if tats[i] then
    redis.call('SET', r, string.format('%.3f', tats[i]),
               'PX', math.ceil((tats[i] - now) / 1000) + 1000)
  end
end
redis.call('HSET', KEYS[1], token, nonce)
touch(KEYS[1], ttl_ms)
return {1, nonce, '0', ''}
"""

RELEASE = _NOW + """
-- KEYS[1] grants, KEYS[2..] holders per scope; ARGV: token, nonce
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
for i = 2, #KEYS do redis.call('ZREM', KEYS[i], ARGV[1]) end
if score and tonumber(score) > now then return 1 end
return 0
"""

REFRESH = _NOW + _TOUCH + """
-- KEYS[1] grants, KEYS[2..] holders per scope; ARGV: token, nonce, lease_us
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score or tonumber(score) <= now then return 0 end
local lease = tonumber(ARGV[3])
local ttl_ms = math.ceil(lease / 1000) + 1000
for i = 2, #KEYS do
  redis.call('ZADD', KEYS[i], 'XX', now + lease, ARGV[1])
  touch(KEYS[i], ttl_ms)
end
touch(KEYS[1], ttl_ms)
return 1
"""


class RedisLimiter:
    """Fleet-wide limits. `client` is a `redis.Redis` or `redis.cluster.RedisCluster`
    (every script touches the keys of one activity only, all in one hash slot)."""

    def __init__(self, config: LimitsConfig, client: Any, *,
                 prefix: str = "loom:limit") -> None:
        self.config = config
        self.client = client
        self.prefix = prefix
        self._acquire = client.register_script(ACQUIRE)
        self._release = client.register_script(RELEASE)
        self._refresh = client.register_script(REFRESH)

    @classmethod
    def from_url(cls, config: LimitsConfig, url: str, *,
                 prefix: str = "loom:limit") -> RedisLimiter:
        return cls(config, redis.Redis.from_url(url), prefix=prefix)

    # -- keys
    def _key(self, scope: Scope, kind: str) -> str:
        return f"{self.prefix}:{scope.key}:{kind}"

    def keys_for(self, activity: str, tenant: str) -> list[str]:
        """Every key a call of (activity, tenant) may touch (for ops and the slot test)."""
        scopes = self.config.scopes(activity, tenant) or []
        if not scopes:
            return []
        return [self._key(scopes[0], "grants")] + [
            self._key(s, kind) for s in scopes for kind in ("holders", "rate")]

    def usage(self) -> dict[str, dict[str, Any]]:
        """For `loom cluster status`: each limited activity's limits and the calls holding
        a slot right now, fleet-wide (holders whose lease has not run out)."""
        out: dict[str, dict[str, Any]] = {}
        seconds, micros = self.client.time()
        now = int(seconds) * 1_000_000 + int(micros)
        for activity, limits in sorted(self.config.root.items()):
            holders = self._key(Scope(f"{{{activity}}}", activity, None), "holders")
            out[activity] = {"concurrency": limits.concurrency, "rate_per_s": limits.rate_per_s,
                             "in_use": int(self.client.zcount(holders, now, "+inf"))}
        return out

    def lease_s(self, activity: str) -> float:
        limits = self.config.get(activity)
        return limits.lease_s if limits else 0.0

    def _lease_us(self, activity: str) -> int:
        return math.ceil(self.lease_s(activity) * 1_000_000)

    # -- the contract
    def try_acquire(self, activity: str, tenant: str, token: str) -> Grant | Wait:
        scopes = self.config.scopes(activity, tenant)
        if scopes is None:
            return unlimited(activity, tenant, token)
        nonce = uuid.uuid4().hex
        keys = [self._key(scopes[0], "grants")]
        args: list[str | int] = [token, nonce, self._lease_us(activity)]
        for s in scopes:
            keys += [self._key(s, "holders"), self._key(s, "rate")]
            lim = s.limit
            conc = (lim.concurrency or 0) if lim else 0
            interval = lim.interval_s * 1_000_000 if lim else 0.0
            burst = lim.effective_burst if lim else 0
            args += [conc, f"{interval:.3f}", burst]
        try:
            ok, got_nonce, wait_us, which = self._acquire(keys=keys, args=args)
        except redis.RedisError as exc:
            raise errors.StorageError(f"limits: Redis failed acquiring {activity!r}: "
                                      f"{exc}") from exc
        if ok:
            return Grant(activity, tenant, token, _text(got_nonce))
        index, kind = _text(which).split(":", 1)
        return Wait(int(wait_us) / 1_000_000, f"{scopes[int(index) - 1].label} {kind}")

    def _grant_keys(self, grant: Grant) -> list[str] | None:
        scopes = self.config.scopes(grant.activity, grant.tenant)
        if not grant.nonce or scopes is None:
            return None
        return [self._key(scopes[0], "grants")] + [self._key(s, "holders") for s in scopes]

    def release(self, grant: Grant) -> bool:
        keys = self._grant_keys(grant)
        if keys is None:
            return False
        try:
            return bool(self._release(keys=keys, args=[grant.token, grant.nonce]))
        except redis.RedisError as exc:
            raise errors.StorageError(f"limits: Redis failed releasing {grant.activity!r}: "
                                      f"{exc}") from exc

    def refresh(self, grant: Grant) -> bool:
        keys = self._grant_keys(grant)
        if keys is None:
            return False
        try:
            return bool(self._refresh(keys=keys, args=[grant.token, grant.nonce,
                                                       self._lease_us(grant.activity)]))
        except redis.RedisError as exc:
            raise errors.StorageError(f"limits: Redis failed refreshing {grant.activity!r}: "
                                      f"{exc}") from exc


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
