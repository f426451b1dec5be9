"""One fleet suite for both journals: two real `loom worker`s with Redis partitions over the
embedded SQLite journal and over the Cosmos DB journal (the emulator over HTTPS). Runs park
on both workers; one worker is SIGKILLed; the other takes its partitions over and finishes
every run exactly once. (The chaos suite, tests/test_chaos_fleet.py, runs on SQLite.)"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from runtime.cluster.partitions import partition_of
from runtime.journal.cosmos import CosmosJournal
from runtime.journal.sqlite import SqliteJournal
from runtime.journal.store import JournalStore

MODULE = Path(__file__).resolve().parent / "version_actors.py"
LOOM = Path(sys.executable).parent / "loom"
pytestmark = [pytest.mark.system, pytest.mark.filterwarnings(
    "ignore::urllib3.exceptions.InsecureRequestWarning")]


@pytest.mark.parametrize("kind", ["sqlite", "cosmos"])
def test_a_fleet_takes_over_a_killed_worker(kind: str, request: pytest.FixtureRequest,
                                            redis_server: Any, tmp_path: Path) -> None:
    import redis

    cosmos_server = request.getfixturevalue("cosmos_server") if kind == "cosmos" else None

    url = redis_server.url.rsplit("/", 1)[0] + "/12"
    redis.Redis.from_url(url).flushdb()
    container = f"fleet-{uuid.uuid4().hex[:10]}"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("LOOM_")},
           "LOOM_REDIS_URL": url, "LOOM_PARTITIONS": "8", "LOOM_LEASE_TTL_S": "2",
           "LOOM_HOME": str(tmp_path)}
    if cosmos_server is not None:
        env.update(cosmos_server.env(), LOOM_COSMOS_DATABASE="loom-tests",
                   LOOM_COSMOS_CONTAINER=container)
    log = tmp_path / "workers.log"
    actors = [f"hold/{i}" for i in range(12)]
    procs = [subprocess.Popen([str(LOOM), "worker", "--module", str(MODULE), "--poll", "0.02"],
                              env=env, cwd=tmp_path, stdout=log.open("ab"),
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
             for _ in range(2)]

    def journal() -> JournalStore:
        if cosmos_server is None:
            return SqliteJournal(tmp_path / "loom.db")
        return CosmosJournal(cosmos_server.endpoint, cosmos_server.key, database="loom-tests",
                             container=container, verify_tls=False)

    def tail() -> str:
        return "\n".join(log.read_text(errors="replace").splitlines()[-40:])

    async def until(check: Any, what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not await check():
            assert time.monotonic() < deadline, f"timed out waiting for {what}\n{tail()}"
            await asyncio.sleep(0.1)

    async def main() -> None:
        j = journal()
        try:
            await until(lambda: _both_hold_partitions(url), "both workers to hold partitions")
            for actor in actors:
                await j.enqueue({"id": f"start-{actor}", "target": actor, "kind": "call",
                                 "handler": "start", "payload": None, "deliver_at": 0.0})

            async def parked() -> bool:
                return all([bool(await j.read(a)) for a in actors])

            await until(parked, "every run to start and park")
            owners = _owners(url)
            victim = procs[0]
            lost = {a for a in actors if owners.get(partition_of(a, 8), "").endswith(
                f"-{victim.pid}")}
            assert lost, f"the victim held none of the actors: {owners}"
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
            for actor in actors:
                await j.enqueue({"id": f"go-{actor}", "target": actor, "kind": "event",
                                 "name": "go", "payload": actor, "deliver_at": 0.0})

            async def done() -> bool:
                for a in actors:
                    if not any(c.get("kind") == "completed" for c in await j.read(a)):
                        return False
                return True

            await until(done, "the survivor to finish every run (the victim's after takeover)")
            for a in actors:
                kinds = [c.get("kind") for c in await j.read(a) if c.get("kind")]
                assert kinds == ["completed"], (a, kinds)
                result = next(c["result"] for c in await j.read(a) if c.get("kind"))
                assert result == {"got": a}
            assert await j.dead_letters() == []
        finally:
            await j.close()

    try:
        asyncio.run(main())
        procs[1].terminate()
        assert procs[1].wait(30) == 0, tail()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def _owners(url: str) -> dict[int, str]:
    from runtime.cluster.status import fleet_status

    return {int(p): o["worker"] for p, o in fleet_status(url, 2000)["owners"].items()}


async def _both_hold_partitions(url: str) -> bool:
    from runtime.cluster.status import fleet_status

    status = fleet_status(url, 2000)
    return status.get("fleet", False) and len(status["workers"]) == 2 and all(
        w["partitions"] == 4 for w in status["workers"])
