"""The service's own records: tenants' API keys (hashed) and cron schedules with their cursor.

`Store` is what keys.py, cron.py and the API need; two implementations, chosen by
`LOOM_SERVICE_STORE` (`open_store`):

- `sqlite` (default, `ServiceStore`): a small file (`LOOM_SERVICE_DB`, default
  `<LOOM_HOME>/service.db`) shared by every `loom serve` on the machine;
- `redis` (`store_redis.RedisStore`, on `LOOM_REDIS_URL`): shared by the servers of a fleet
  on several hosts.

Neither holds actor data: messages, runs and their outcomes stay in the journal. The one
write servers race on (a schedule's cursor) is a compare-and-set, so each tick is claimed
by one server; the message a tick sends also has an id derived from the tick, so servers on
one journal cannot send it twice.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from runtime.service.config import ServiceConfig
    from runtime.settings import LoomSettings

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, hash TEXT NOT NULL, scopes TEXT NOT NULL,
    label TEXT NOT NULL DEFAULT '', created_at REAL NOT NULL, revoked_at REAL);
CREATE TABLE IF NOT EXISTS schedules (
    tenant TEXT NOT NULL, name TEXT NOT NULL, cron TEXT NOT NULL, target TEXT NOT NULL,
    handler TEXT NOT NULL, payload TEXT NOT NULL, missed TEXT NOT NULL,
    created_at REAL NOT NULL, cursor REAL NOT NULL, fired INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, name));
CREATE INDEX IF NOT EXISTS keys_by_hash ON keys (hash);
"""


@dataclass(frozen=True)
class KeyRecord:
    id: str
    tenant: str
    hash: str
    scopes: frozenset[str]
    label: str
    created_at: float
    revoked_at: float | None = None


@dataclass(frozen=True)
class Schedule:
    tenant: str
    name: str
    cron: str
    target: str
    """Actor address inside the tenant, `type/id`."""
    handler: str
    payload: Any
    missed: str
    """"catch-up": fire every tick missed while no server ran; "skip": only the latest."""
    created_at: float
    cursor: float
    """The last tick fired (or the creation time)."""
    fired: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "cron": self.cron, "target": self.target,
                "handler": self.handler, "payload": self.payload, "missed": self.missed,
                "created_at": self.created_at, "last_tick": self.cursor, "fired": self.fired}


class Store(Protocol):
    """Keys and schedules. Methods block (call them from a thread in async code); each is
    atomic on its own."""

    def close(self) -> None: ...

    def add_key(self, record: KeyRecord) -> None: ...

    def key(self, key_id: str) -> KeyRecord | None: ...

    def key_by_hash(self, digest: str) -> KeyRecord | None: ...

    def keys(self, tenant: str | None = None) -> list[KeyRecord]:
        """Oldest first; all tenants' when `tenant` is None; revoked ones too."""
        ...

    def revoke_key(self, key_id: str) -> bool:
        """False if there is no such key or it was revoked already."""
        ...

    def add_schedule(self, s: Schedule) -> bool:
        """False if the tenant already has a schedule of that name (nothing changed)."""
        ...

    def schedules(self, tenant: str | None = None) -> list[Schedule]:
        """Ordered by tenant, then name."""
        ...

    def remove_schedule(self, tenant: str, name: str) -> bool: ...

    def advance(self, tenant: str, name: str, old: float, new: float, fired: int) -> bool:
        """Move the cursor from `old` to `new` and add `fired` to the count, if the cursor
        is still `old` (compare-and-set); False if another server moved it first or the
        schedule is gone."""
        ...


def open_store(settings: LoomSettings, config: ServiceConfig) -> Store:
    """The store `LOOM_SERVICE_STORE` names: `sqlite` (`LOOM_SERVICE_DB`, default
    `<LOOM_HOME>/service.db`) or `redis` (`LOOM_REDIS_URL`)."""
    if config.store == "redis":
        if not settings.redis_url:
            from runtime import errors

            raise errors.SettingsInvalid("LOOM_SERVICE_STORE=redis needs LOOM_REDIS_URL")
        from runtime.service.store_redis import RedisStore

        return RedisStore(settings.redis_url)
    return ServiceStore(config.db or settings.home / "service.db")


class ServiceStore:
    """The embedded store (SQLite). Thread-safe; every method is one short transaction."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                   timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    # -- keys ------------------------------------------------------------------------------
    def add_key(self, record: KeyRecord) -> None:
        with self._lock:
            self._db.execute("INSERT INTO keys VALUES (?,?,?,?,?,?,NULL)",
                             (record.id, record.tenant, record.hash,
                              ",".join(sorted(record.scopes)), record.label, record.created_at))

    def key(self, key_id: str) -> KeyRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM keys WHERE id=?", (key_id,)).fetchone()
        return None if row is None else _key(row)

    def key_by_hash(self, digest: str) -> KeyRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM keys WHERE hash=?", (digest,)).fetchone()
        return None if row is None else _key(row)

    def keys(self, tenant: str | None = None) -> list[KeyRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM keys WHERE ?1 IS NULL OR tenant=?1 ORDER BY created_at",
                (tenant,)).fetchall()
        return [_key(r) for r in rows]

    def revoke_key(self, key_id: str) -> bool:
        with self._lock:
            cur = self._db.execute("UPDATE keys SET revoked_at=? WHERE id=? AND revoked_at IS "
                                   "NULL", (time.time(), key_id))
        return cur.rowcount == 1

    # -- schedules -------------------------------------------------------------------------
    def add_schedule(self, s: Schedule) -> bool:
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO schedules VALUES (?,?,?,?,?,?,?,?,?,0)",
                (s.tenant, s.name, s.cron, s.target, s.handler, json.dumps(s.payload), s.missed,
                 s.created_at, s.cursor))
        return cur.rowcount == 1

    def schedules(self, tenant: str | None = None) -> list[Schedule]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM schedules WHERE ?1 IS NULL OR tenant=?1 ORDER BY tenant, name",
                (tenant,)).fetchall()
        return [_schedule(r) for r in rows]

    def remove_schedule(self, tenant: str, name: str) -> bool:
        with self._lock:
            cur = self._db.execute("DELETE FROM schedules WHERE tenant=? AND name=?",
                                   (tenant, name))
        return cur.rowcount == 1

    def advance(self, tenant: str, name: str, old: float, new: float, fired: int) -> bool:
        with self._lock:
            cur = self._db.execute(
                "UPDATE schedules SET cursor=?, fired=fired+? WHERE tenant=? AND name=? "
                "AND cursor=?", (new, fired, tenant, name, old))
        return cur.rowcount == 1


def _key(row: tuple[Any, ...]) -> KeyRecord:
    return KeyRecord(row[0], row[1], row[2], frozenset(filter(None, row[3].split(","))),
                     row[4], row[5], row[6])


def _schedule(row: tuple[Any, ...]) -> Schedule:
    return Schedule(row[0], row[1], row[2], row[3], row[4], json.loads(row[5]), row[6],
                    row[7], row[8], row[9])
