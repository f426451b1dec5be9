"""Keys and schedules in Redis (`LOOM_SERVICE_STORE=redis`), shared by every `loom serve` of a
fleet on several hosts.

Layout, every key under one hash tag so each operation is in one slot (Redis Cluster):

- `{loom:service}:key:<id>`: a hash per API key (tenant, hash, scopes, label, created_at,
  revoked_at); `{loom:service}:key-hash:<sha256>`: the key id of that hash;
  `{loom:service}:keys`: the ids, scored by creation time.
- `{loom:service}:schedule:<tenant>:<name>`: a hash per schedule; `{loom:service}:schedules`:
  the `<tenant>:<name>` of each.

The cursor's compare-and-set and a revocation are Lua scripts on the one hash they change;
creating or removing a record writes its hash and its indexes in one script. Floats are
kept as Python's `repr` (exact round trip), so the cursor is compared as a string. The
records are small and written rarely (reads are cached by the key ring), so one slot is
enough. Redis must persist them (AOF or RDB): a Redis that restarts empty forgets the keys.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from runtime.service.store import KeyRecord, Schedule

_REVOKE = """
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HGET', KEYS[1], 'revoked_at') ~= '' then
  return 0
end
redis.call('HSET', KEYS[1], 'revoked_at', ARGV[1])
return 1
"""

_ADD_SCHEDULE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('ZADD', KEYS[2], 0, ARGV[1])
return 1
"""

_ADVANCE = """
if redis.call('HGET', KEYS[1], 'cursor') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'cursor', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'fired', ARGV[3])
return 1
"""


class RedisStore:
    """Thread-safe (redis-py's client pools its connections)."""

    def __init__(self, url: str, prefix: str = "loom") -> None:
        self._r = redis.Redis.from_url(url, decode_responses=True)
        self._ns = f"{{{prefix}:service}}"
        self._revoke = self._r.register_script(_REVOKE)
        self._add_schedule = self._r.register_script(_ADD_SCHEDULE)
        self._advance = self._r.register_script(_ADVANCE)

    def close(self) -> None:
        self._r.close()

    # -- keys ------------------------------------------------------------------------------
    def _k(self, key_id: str) -> str:
        return f"{self._ns}:key:{key_id}"

    def add_key(self, record: KeyRecord) -> None:
        with self._r.pipeline(transaction=True) as p:
            p.hset(self._k(record.id), mapping={
                "id": record.id, "tenant": record.tenant, "hash": record.hash,
                "scopes": ",".join(sorted(record.scopes)), "label": record.label,
                "created_at": _f(record.created_at), "revoked_at": ""})
            p.set(f"{self._ns}:key-hash:{record.hash}", record.id)
            p.zadd(f"{self._ns}:keys", {record.id: record.created_at})
            p.execute()

    def key(self, key_id: str) -> KeyRecord | None:
        return _key(_text(self._r.hgetall(self._k(key_id))))

    def key_by_hash(self, digest: str) -> KeyRecord | None:
        key_id = self._r.get(f"{self._ns}:key-hash:{digest}")
        return None if key_id is None else self.key(str(key_id))

    def keys(self, tenant: str | None = None) -> list[KeyRecord]:
        ids = [str(x) for x in self._r.zrange(f"{self._ns}:keys", 0, -1)]
        with self._r.pipeline(transaction=False) as p:
            for key_id in ids:
                p.hgetall(self._k(key_id))
            rows = p.execute()
        records = [r for r in (_key(_text(row)) for row in rows) if r is not None]
        return [r for r in records if tenant is None or r.tenant == tenant]

    def revoke_key(self, key_id: str) -> bool:
        return bool(self._revoke(keys=[self._k(key_id)], args=[_f(time.time())]))

    # -- schedules -------------------------------------------------------------------------
    def _s(self, tenant: str, name: str) -> str:
        return f"{self._ns}:schedule:{tenant}:{name}"

    def add_schedule(self, s: Schedule) -> bool:
        fields = {"tenant": s.tenant, "name": s.name, "cron": s.cron, "target": s.target,
                  "handler": s.handler, "payload": json.dumps(s.payload), "missed": s.missed,
                  "created_at": _f(s.created_at), "cursor": _f(s.cursor), "fired": "0"}
        flat = [x for kv in fields.items() for x in kv]
        return bool(self._add_schedule(keys=[self._s(s.tenant, s.name),
                                             f"{self._ns}:schedules"],
                                       args=[f"{s.tenant}:{s.name}", *flat]))

    def schedules(self, tenant: str | None = None) -> list[Schedule]:
        members = [str(x) for x in self._r.zrange(f"{self._ns}:schedules", 0, -1)]
        if tenant is not None:
            members = [m for m in members if m.partition(":")[0] == tenant]
        with self._r.pipeline(transaction=False) as p:
            for m in members:
                p.hgetall(f"{self._ns}:schedule:{m}")
            rows = p.execute()
        found = [_schedule(_text(r)) for r in rows if r]
        return sorted(found, key=lambda s: (s.tenant, s.name))

    def remove_schedule(self, tenant: str, name: str) -> bool:
        with self._r.pipeline(transaction=True) as p:
            p.delete(self._s(tenant, name))
            p.zrem(f"{self._ns}:schedules", f"{tenant}:{name}")
            deleted, _ = p.execute()
        return bool(deleted)

    def advance(self, tenant: str, name: str, old: float, new: float, fired: int) -> bool:
        return bool(self._advance(keys=[self._s(tenant, name)],
                                  args=[_f(old), _f(new), fired]))


def _f(x: float) -> str:
    """A float as text that reads back as the same float (and `1` and `1.0` alike)."""
    return repr(float(x))


def _text(h: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in h.items()}


def _key(h: dict[str, str]) -> KeyRecord | None:
    if not h:
        return None
    return KeyRecord(h["id"], h["tenant"], h["hash"],
                     frozenset(filter(None, h["scopes"].split(","))), h["label"],
                     float(h["created_at"]), float(h["revoked_at"]) if h["revoked_at"] else None)


def _schedule(h: dict[str, str]) -> Schedule:
    return Schedule(h["tenant"], h["name"], h["cron"], h["target"], h["handler"],
                    json.loads(h["payload"]), h["missed"], float(h["created_at"]),
                    float(h["cursor"]), int(h["fired"]))
