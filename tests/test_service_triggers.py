"""Triggers: an HTTP POST with an Idempotency-Key is one durable message however often it is
retried (concurrently too); cron ticks fire once per tick with two servers running, and
missed ticks are caught up or skipped as the schedule says."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from servers import RedisServer
from service_harness import LOOM, ROOT, Server

from runtime.journal.memory import MemoryJournal
from runtime.service.config import ServiceConfig
from runtime.service.cron import Cron, CronInvalid, Scheduler
from runtime.service.metrics import Metrics
from runtime.service.store import Schedule, ServiceStore


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    home = tmp_path_factory.mktemp("serve2")
    env = {"LOOM_SERVICE_CRON_INTERVAL_S": "0.05"}
    a = Server(home, env=env)
    b = Server(home, env=env)
    yield a, b
    a.stop()
    b.stop()


@pytest.mark.integration
def test_idempotency_key_under_concurrent_retries(pair: tuple[Server, Server]) -> None:
    a, b = pair
    key = a.key("acme")
    clients = [a.client(key), b.client(key)]

    def post(i: int) -> Any:
        r = clients[i % 2].post("/v1/triggers/counter/t1/add", json={"n": 1},
                                headers={"Idempotency-Key": "order-42"})
        assert r.status_code == 202, r.text
        return r.json()

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(post, range(40)))
    assert len({x["msg_id"] for x in answers}) == 1
    assert sum(x["created"] for x in answers) == 1
    c = clients[0]
    assert c.post("/v1/actors/counter/t1/ask/add", json={"payload": {"n": 0}}
                  ).json()["result"] == 1  # the trigger's message ran once
    missing = c.post("/v1/triggers/counter/t1/add", json={"n": 1})
    assert missing.status_code == 422
    assert missing.json()["errors"][0]["pointer"] == "/idempotency-key"
    other = a.client(a.key("globex"))
    r = other.post("/v1/triggers/counter/t1/add", json={"n": 1},
                   headers={"Idempotency-Key": "order-42"})  # another tenant's key space
    assert r.json()["created"] is True


@pytest.mark.integration
def test_cron_fires_once_per_tick_with_two_servers(pair: tuple[Server, Server]) -> None:
    a, _b = pair  # both servers look for due ticks every 50 ms
    c = a.client(a.key("acme", "read,invoke,write"))
    r = c.post("/v1/schedules", json={"name": "every-second", "cron": "@every 1s",
                                      "target": "counter/cron", "handler": "tick",
                                      "payload": {}})
    assert r.status_code == 201, r.text
    deadline = time.monotonic() + 60
    ticks: list[float] = []
    while time.monotonic() < deadline:
        state = c.get("/v1/actors/counter/cron")
        ticks = state.json()["state"]["ticks"] if state.status_code == 200 and \
            state.json()["state"] else []
        if len(ticks) >= 4:
            break
        time.sleep(0.2)
    assert len(ticks) >= 4
    assert len(ticks) == len(set(ticks)), "a tick fired twice"
    assert all(t2 - t1 == 1.0 for t1, t2 in itertools.pairwise(ticks)), ticks
    listed = c.get("/v1/schedules").json()
    assert listed[0]["name"] == "every-second" and listed[0]["last_tick"] >= ticks[-1]
    assert c.delete("/v1/schedules/every-second").status_code == 204


def _state(server: Server, key: str, path: str) -> Any:
    r = server.client(key).get(path)
    return r.json()["state"] if r.status_code == 200 else None


def test_servers_on_different_homes_share_keys_and_schedules_through_redis(
        tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> None:
    """Two servers, each its own home and service.db as on two hosts, sharing the store
    (LOOM_SERVICE_STORE=redis) and the journal (one deployment's servers serve the same
    actors; here one SQLite file stands in for Cosmos)."""
    shared = tmp_path_factory.mktemp("shared-journal") / "loom.db"
    env = {"LOOM_SERVICE_CRON_INTERVAL_S": "0.05", "LOOM_REDIS_URL": redis_server.url,
           "LOOM_SERVICE_STORE": "redis", "LOOM_JOURNAL_URL": f"sqlite:///{shared}"}
    a = Server(tmp_path_factory.mktemp("host-a"), env=env)
    b = Server(tmp_path_factory.mktemp("host-b"), env=env)
    try:
        key = a.key("fleet", "read,invoke,write")  # `loom keys create` on host a
        assert b.client(key).get("/v1/schedules").status_code == 200
        assert a.client(key).get("/v1/schedules").status_code == 200  # cached on a now
        key_id = key.split("_")[1]
        subprocess.run([LOOM, "keys", "revoke", key_id], cwd=ROOT, env=b.env, check=True,
                       capture_output=True)  # on host b
        deadline = time.monotonic() + 30  # a's cached record expires (2 s)
        while a.client(key).get("/v1/schedules").status_code != 401:
            assert time.monotonic() < deadline, "host a still accepts a key revoked on b"
            time.sleep(0.2)
        assert b.client(key).get("/v1/schedules").status_code == 401

        key = b.key("fleet", "read,invoke,write")
        r = a.client(key).post("/v1/schedules", json={
            "name": "every-second", "cron": "@every 1s", "target": "counter/cron",
            "handler": "tick", "payload": {}})
        assert r.status_code == 201, r.text
        assert [s["name"] for s in b.client(key).get("/v1/schedules").json()] == [
            "every-second"]
        fired: list[float] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = _state(b, key, "/v1/actors/counter/cron")  # one journal: one counter
            fired = state["ticks"] if state else []
            if len(fired) >= 6:
                break
            time.sleep(0.2)
        assert len(fired) >= 6, fired
        assert len(fired) == len(set(fired)), f"a tick fired twice: {fired}"
        assert all(t2 - t1 == 1.0 for t1, t2 in itertools.pairwise(sorted(fired))), fired
        assert b.client(key).delete("/v1/schedules/every-second").status_code == 204
        assert a.client(key).get("/v1/schedules").json() == []
    finally:
        a.stop()
        b.stop()


def _scheduler(tmp_path: Path) -> tuple[Scheduler, Any, list[float]]:
    now = [1_000_000.0]
    journal = MemoryJournal()
    svc = SimpleNamespace(store=ServiceStore(tmp_path / "s.db"), journal=journal,
                          config=ServiceConfig(), metrics=Metrics(), runtime=None)
    return Scheduler(svc, clock=lambda: now[0]), svc, now  # type: ignore[arg-type]


@pytest.mark.parametrize("missed,expected", [("catch-up", 10), ("skip", 1)])
def test_missed_ticks_caught_up_or_skipped(tmp_path: Path, missed: str, expected: int) -> None:
    sched, svc, now = _scheduler(tmp_path)
    svc.store.add_schedule(Schedule("acme", "s", "@every 1s", "counter/x", "tick", None, missed,
                                    now[0], now[0]))
    now[0] += 10.5  # ten ticks passed while no server ran
    assert asyncio.run(sched.fire_due()) == expected
    inbox = asyncio.run(svc.journal.inbox("counter/acme~x", float("inf")))
    assert [e["payload"]["scheduled_at"] for e in inbox][-1] == 1_000_010.0
    assert asyncio.run(sched.fire_due()) == 0  # nothing new until the next tick
    svc.store.close()


def test_cron_expressions() -> None:
    c = Cron("*/15 9-17 * * 1-5")
    t0 = 1_796_000_000.0  # a weekday
    ticks = c.ticks(t0, t0 + 7 * 86400, 1000)
    assert ticks and all(time.gmtime(t).tm_min % 15 == 0 for t in ticks)
    assert all(9 <= time.gmtime(t).tm_hour <= 17 for t in ticks)
    assert all(time.gmtime(t).tm_wday < 5 for t in ticks)
    assert Cron("@every 5m").ticks(0, 900, 10) == [300, 600, 900]
    for bad in ("* * *", "61 * * * *", "*/0 * * * *", "@every 0s"):
        with pytest.raises(CronInvalid):
            Cron(bad)
