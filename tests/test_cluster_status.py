"""`loom cluster status` shows what an operator steers by: runs per code version and those no
live worker can resume, dead letters, fleet-wide limits in use, breakers that are not closed
(real redis-server; the journal part from a real SQLite journal)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pybreaker
import pytest

from runtime.actors.resilience import redis_breaker_storage
from runtime.cluster import ClusterConfig, ClusterNode, WorkerInfo, connect
from runtime.cluster.status import fleet_status, read_journal_view
from runtime.journal import SqliteJournal
from runtime.limits import limiter_from_settings
from runtime.limits.base import Grant

pytestmark = pytest.mark.integration


def test_status_shows_versions_dead_letters_limits_and_open_breakers(
        redis_server: Any, tmp_path: Path) -> None:
    url = redis_server.url.rsplit("/", 1)[0] + "/11"
    client = connect(url, 2000)
    client.flushdb()
    node = ClusterNode(client, WorkerInfo(id="w1", version="v2", compatible=("v1",)),
                       ClusterConfig(partitions=4, lease_ttl_ms=2000))
    node.tick()

    async def journal_view() -> Any:
        journal = SqliteJournal(tmp_path / "j.db")
        for actor, version in (("a/1", "v1"), ("a/2", "v0"), ("a/3", "v0"), ("a/4", None)):
            await journal.enqueue({"id": "m", "target": actor, "kind": "call",
                                   "payload": None, "deliver_at": 0.0})
            await journal.acquire(actor, "o", 1.0, 10.0)
            await journal.settle(actor, "o", now=1.0, seen_n=-1, busy=False, release=True,
                                 version=version)
        await journal.put_dead_letter({"actor": "a/9", "msg": "poison", "envelope": {},
                                       "deliveries": 6, "error": {"message": "boom"},
                                       "at": 2.0})
        try:
            return await read_journal_view(journal)
        finally:
            await journal.close()

    limiter = limiter_from_settings('{"http_post": {"concurrency": 4, "rate_per_s": 50}}', url)
    grant = limiter.try_acquire("http_post", "t", "call-1")
    assert isinstance(grant, Grant)
    breaker = pybreaker.CircuitBreaker(fail_max=1, state_storage=redis_breaker_storage(url)(
        "flaky"))
    with pytest.raises(pybreaker.CircuitBreakerError):
        breaker.call(lambda: 1 / 0)

    status = fleet_status(url, 2000, asyncio.run(journal_view()), limits=limiter,
                          breaker_url=url)
    assert [w["compatible"] for w in status["workers"]] == [["v1"]]
    assert status["runs_by_version"] == {"v0": {"runs": 2, "resumed_by": []},
                                         "v1": {"runs": 1, "resumed_by": ["w1"]}}
    assert status["stranded_versions"] == ["v0"]
    assert status["dead_letters"]["count"] == 1
    assert status["dead_letters"]["latest"][0]["error"] == "boom"
    assert status["limits"] == {"http_post": {"concurrency": 4, "rate_per_s": 50,
                                              "in_use": 1}}
    assert status["breakers_not_closed"] == {"flaky": "open"}
    assert sum(status["due_actors_per_partition"].values()) == 4
    limiter.release(grant)
    assert fleet_status(url, 2000, limits=limiter)["limits"]["http_post"]["in_use"] == 0
    node.stop()
    client.close()
