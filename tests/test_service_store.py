"""The service store's contract (runtime/service/store.py `Store`), run on each backend:
the embedded SQLite file and Redis (a real redis-server). Two store objects on one backend
stand for two servers: what one writes the other reads, and the cursor's compare-and-set
lets one of them win."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

from runtime.journal.memory import MemoryJournal
from runtime.service.config import ServiceConfig
from runtime.service.cron import Scheduler
from runtime.service.keys import KeyRing, create_key
from runtime.service.metrics import Metrics
from runtime.service.store import KeyRecord, Schedule, ServiceStore, Store, open_store
from runtime.settings import load_settings

Opener = Callable[[], Store]


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.integration)])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens another store on the same backend (another server's view); closes them all."""
    opened: list[Store] = []
    if request.param == "sqlite":
        def make() -> Store:
            return ServiceStore(tmp_path / "service.db")
    else:
        from runtime.service.store_redis import RedisStore

        url = request.getfixturevalue("redis_server").url
        prefix = f"t{uuid.uuid4().hex[:12]}"

        def make() -> Store:
            return RedisStore(url, prefix=prefix)

    def open_one() -> Store:
        opened.append(make())
        return opened[-1]

    yield open_one
    for s in opened:
        s.close()


def _sched(name: str, tenant: str = "acme", cursor: float = 1_000_000.0, payload: object = None
           ) -> Schedule:
    return Schedule(tenant, name, "@every 1s", "counter/x", "tick", payload, "catch-up",
                    1_000_000.0, cursor)


def test_keys_created_listed_found_and_revoked(opener: Opener) -> None:
    a, b = opener(), opener()
    k1 = KeyRecord("aaaaaaaaaaa1", "acme", "h1", frozenset({"read", "write"}), "ci", 100.0)
    k2 = KeyRecord("aaaaaaaaaaa2", "globex", "h2", frozenset({"admin"}), "", 200.0)
    k3 = KeyRecord("aaaaaaaaaaa3", "acme", "h3", frozenset({"invoke"}), "", 300.5)
    for k in (k3, k1, k2):
        a.add_key(k)
    assert b.key(k1.id) == k1 and b.key("nosuchkey000") is None
    assert b.key_by_hash("h3") == k3 and b.key_by_hash("nope") is None
    assert b.keys() == [k1, k2, k3]  # oldest first
    assert b.keys("acme") == [k1, k3] and b.keys("initech") == []
    assert b.revoke_key(k1.id) is True
    assert a.revoke_key(k1.id) is False  # once
    assert a.revoke_key("nosuchkey000") is False
    revoked = a.key(k1.id)
    assert revoked is not None and revoked.revoked_at is not None
    assert a.key_by_hash("h1") == revoked and a.keys("acme")[0] == revoked
    assert a.key(k3.id) == k3  # the others untouched


def test_schedules_added_once_listed_in_order_and_removed(opener: Opener) -> None:
    a, b = opener(), opener()
    payload = {"n": 1, "nested": [1.5, "x", None]}
    assert a.add_schedule(_sched("nightly", payload=payload)) is True
    assert a.add_schedule(_sched("hourly", cursor=5.0)) is True
    assert a.add_schedule(_sched("nightly", tenant="globex")) is True
    assert b.add_schedule(_sched("nightly", cursor=7.0)) is False  # exists: nothing changed
    listed = b.schedules()
    assert [(s.tenant, s.name) for s in listed] == [("acme", "hourly"), ("acme", "nightly"),
                                                    ("globex", "nightly")]
    assert listed[1] == _sched("nightly", payload=payload) and listed[1].fired == 0
    assert [s.name for s in b.schedules("acme")] == ["hourly", "nightly"]
    assert b.schedules("initech") == []
    assert b.remove_schedule("acme", "nightly") is True
    assert a.remove_schedule("acme", "nightly") is False
    assert [(s.tenant, s.name) for s in a.schedules()] == [("acme", "hourly"),
                                                           ("globex", "nightly")]
    assert a.add_schedule(_sched("nightly", cursor=9.0)) is True  # the name is free again
    assert [s.cursor for s in a.schedules("acme")] == [5.0, 9.0]


def test_cursor_moves_by_compare_and_set(opener: Opener) -> None:
    a, b = opener(), opener()
    a.add_schedule(_sched("s", cursor=1_000_000.25))
    assert b.advance("acme", "s", 1_000_000.0, 1_000_001.0, 1) is False  # not the cursor
    assert b.advance("acme", "s", 1_000_000.25, 1_000_003, 3) is True  # an int tick
    assert a.advance("acme", "s", 1_000_000.25, 1_000_004.0, 1) is False  # moved already
    [s] = a.schedules()
    assert (s.cursor, s.fired) == (1_000_003.0, 3)
    assert a.advance("acme", "s", s.cursor, 1_000_000.25, -3) is True  # given back
    [s] = b.schedules()
    assert (s.cursor, s.fired) == (1_000_000.25, 0)
    assert a.advance("acme", "gone", 0.0, 1.0, 1) is False
    assert a.schedules() == [s]  # a missed compare-and-set creates nothing


def test_one_of_many_racing_servers_wins_the_cursor(opener: Opener) -> None:
    stores = [opener() for _ in range(4)]
    stores[0].add_schedule(_sched("s"))
    with ThreadPoolExecutor(16) as pool:
        won = list(pool.map(lambda i: stores[i % 4].advance("acme", "s", 1_000_000.0,
                                                             1_000_001.0, 1), range(64)))
    assert won.count(True) == 1
    assert [(s.cursor, s.fired) for s in stores[3].schedules()] == [(1_000_001.0, 1)]


def test_a_key_revoked_through_one_server_is_refused_by_another(opener: Opener) -> None:
    a, b = opener(), opener()
    full, record = create_key(a, "acme", ["read", "invoke"], "ci")
    ring = KeyRing(b, ttl_s=0)  # no caching: the store's answer, each time
    who = ring.check(full)
    assert who is not None and (who.tenant, who.scopes) == ("acme", frozenset({"read",
                                                                                "invoke"}))
    assert ring.check(full[:-1] + ("A" if full[-1] != "A" else "B")) is None  # wrong secret
    assert a.revoke_key(record.id)
    assert ring.check(full) is None


def test_each_tick_fires_once_with_two_servers_racing(opener: Opener) -> None:
    """Two schedulers (each with its own store connection) on one journal, as the servers
    of one deployment: every pass they race, and each tick is one message."""
    now = [1_000_000.0]
    journal = MemoryJournal()
    servers = [SimpleNamespace(store=opener(), journal=journal, config=ServiceConfig(),
                               metrics=Metrics(), runtime=None) for _ in range(2)]
    servers[0].store.add_schedule(_sched("s", cursor=now[0]))
    schedulers = [Scheduler(s, clock=lambda: now[0]) for s in servers]  # type: ignore[arg-type]

    async def passes() -> int:
        fired = 0
        for _ in range(6):
            now[0] += 1.0
            fired += sum(await asyncio.gather(*(s.fire_due() for s in schedulers)))
        return fired

    assert asyncio.run(passes()) == 6
    fired = [e["payload"]["scheduled_at"]
             for e in asyncio.run(journal.inbox("counter/acme~x", float("inf")))]
    assert sorted(fired) == [1_000_001.0 + i for i in range(6)]
    assert [s.fired for s in servers[1].store.schedules()] == [6]


def test_the_setting_chooses_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from runtime import errors

    settings = load_settings(home=tmp_path)
    store = open_store(settings, ServiceConfig())
    assert isinstance(store, ServiceStore) and store.path == tmp_path / "service.db"
    store.close()
    monkeypatch.setenv("LOOM_SERVICE_STORE", "redis")
    with pytest.raises(errors.SettingsInvalid, match="LOOM_REDIS_URL"):
        open_store(load_settings(home=tmp_path, redis_url=""), ServiceConfig())
