"""`/metrics` of a real `loom serve` (uvicorn, its own process): the inbox lag sampled from
the journal's schedule at scrape time, and the module cache's hits and misses (memory, disk,
compile), across a restart on the same home."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from service_harness import Server, upload

from runtime.journal import SqliteJournal

pytestmark = pytest.mark.integration


def _scrape(server: Server) -> dict[str, float]:
    out = {}
    for line in server.client(None).get("/metrics").text.splitlines():
        if line.startswith(("loom_inbox", "loom_module_cache_lookups")):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_inbox_lag_and_module_cache_hits(tmp_path: Path) -> None:
    # actors not run here, so what is due stays due
    server = Server(tmp_path, env={"LOOM_SERVICE_RUN_ACTORS": "false"})
    try:
        before = _scrape(server)
        assert before["loom_inbox_due_actors"] == 0
        assert before["loom_inbox_oldest_due_timer_age_seconds"] == 0
        c = server.client(server.key("acme"))
        assert upload(c, "echo").status_code == 201  # compiled once at upload
        for _ in range(2):
            assert c.post("/v1/activities/echo/invoke", json={"input": {}}).status_code == 200
        cache = _scrape(server)
        assert cache['loom_module_cache_lookups_total{result="compile"}'] == 1
        assert cache['loom_module_cache_lookups_total{result="memory_hit"}'] >= 1
        assert cache['loom_module_cache_lookups_total{result="disk_hit"}'] == 0

        assert c.post("/v1/actors/counter/a1/send/add", json={}).status_code == 202

        async def overdue() -> None:  # a message due 30 s ago, as after downtime
            journal = SqliteJournal(tmp_path / "loom.db")
            try:
                await journal.enqueue({"id": "late", "target": "counter/acme~t1", "kind": "call",
                                       "handler": "add", "payload": None,
                                       "deliver_at": time.time() - 30})
            finally:
                await journal.close()

        asyncio.run(overdue())
        lag = _scrape(server)
        assert lag["loom_inbox_due_actors"] == 2
        assert lag["loom_inbox_oldest_due_timer_age_seconds"] >= 30
    finally:
        server.stop()
    again = Server(tmp_path, env={"LOOM_SERVICE_RUN_ACTORS": "false"})
    try:  # a restart finds the compiled module on disk: a disk hit, no compile
        c = again.client(again.key("acme"))
        assert c.post("/v1/activities/echo/invoke", json={"input": {}}).status_code == 200
        cache = _scrape(again)
        assert cache['loom_module_cache_lookups_total{result="disk_hit"}'] == 1
        assert cache['loom_module_cache_lookups_total{result="compile"}'] == 0
    finally:
        again.stop()
