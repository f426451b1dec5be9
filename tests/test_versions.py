"""Deployments: a run started under one code version is resumed only where that version (or
a version declared compatible with it) runs; other workers leave it alone, and new runs
start anywhere.

In process: runtimes of different versions over one SQLite journal (with and without
partition ownership). As a system: real `loom worker` processes in a Redis fleet, where the
worker holding a run's partition runs other code, so a compatible worker runs it as a guest.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import version_actors as va
from test_durable_core import completions, eventually, run, runtime, stubs

from runtime.journal import SqliteJournal

ROOT = Path(__file__).resolve().parent.parent
LOOM = Path(sys.executable).parent / "loom"
MODULE = Path(__file__).resolve().parent / "version_actors.py"


async def _start_parked(journal: SqliteJournal, actors: list[str], version: str) -> None:
    """Runs of `actors` started under `version`, parked on their event, then left."""
    async with runtime(journal, stubs(), va.Hold, code_version=version) as rt:
        for actor in actors:
            await rt.send(actor, "start", None, msg_id=f"start-{actor}")

        async def parked() -> bool:
            for actor in actors:
                commits = await journal.read(actor)
                if not commits or commits[0]["run"].get("ver") != version:
                    return False
                if not any(a.run and a.run.parked for k, a in rt.activations.items()
                           if k == actor):
                    return False
            return True

        await eventually(parked, what="the runs to park")


def test_a_worker_of_another_version_leaves_a_parked_run_alone(tmp_path: Path) -> None:
    async def main() -> None:
        journal = SqliteJournal(tmp_path / "j.db")
        held = [f"hold/{i}" for i in range(3)]
        await _start_parked(journal, held, "v1")
        assert await journal.run_versions() == {"v1": 3}
        async with runtime(journal, stubs(), va.Hold, code_version="v2") as v2:
            for actor in held:
                await v2.signal(actor, "go", {"from": "test"}, msg_id=f"go-{actor}")
            # new runs start under v2, whatever else waits
            assert await v2.ask("hold/new", "quick", None) == {"ok": True}
            await asyncio.sleep(0.5)  # many scheduling rounds
            for actor in held:
                assert await completions(journal, actor) == [], f"v2 resumed {actor}"
                assert actor not in v2.activations
            assert await journal.due_actors(time.time(), versions={"v2"}) == []
            assert await journal.run_versions() == {"v1": 3}
        # a newer version that declares v1 compatible resumes them
        async with runtime(journal, stubs(), va.Hold, code_version="v3", compatible=["v1"]):
            for actor in held:
                await eventually(lambda a=actor: _completed(journal, a),
                                 what=f"{actor} to complete on v3")
        assert await journal.run_versions() == {}
        done = await completions(journal, held[0])
        assert done[0]["result"] == {"got": {"from": "test"}}
        await journal.close()

    run(main())


async def _completed(journal: SqliteJournal, actor: str) -> bool:
    return any(c.get("kind") == "completed" for c in await completions(journal, actor))


class _Partitions:
    """Partition ownership as a fleet gives it: `mine` decides which actors this runtime
    owns; the owner of the rest resumes only `theirs`."""

    def __init__(self, mine: bool, theirs: set[str]) -> None:
        self.mine = mine
        self.theirs = theirs

    def partition(self, key: str) -> int:
        return 0

    def owns(self, key: str) -> bool:
        return self.mine

    def scope(self) -> None:
        return None

    def report(self, in_flight: int) -> None:
        pass

    def accepts(self, key: str, version: str) -> bool:
        return version in self.theirs


def test_a_compatible_worker_runs_a_pinned_run_as_a_guest_when_its_owner_cannot(
        tmp_path: Path) -> None:
    """v2 owns every partition but cannot resume v1's runs; a v1 worker that owns none runs
    them as guests and gives the actor back once the run is over."""

    async def main() -> None:
        journal = SqliteJournal(tmp_path / "j.db")
        held = [f"hold/{i}" for i in range(3)]
        await _start_parked(journal, held, "v1")
        acts = stubs()
        async with runtime(journal, acts, va.Hold, code_version="v2",
                           ownership=_Partitions(True, {"v2"})) as v2, \
                runtime(journal, acts, va.Hold, code_version="v1",
                        ownership=_Partitions(False, {"v2"})) as v1:
            for actor in held:
                await v2.signal(actor, "go", "x", msg_id=f"go-{actor}")
            for actor in held:
                await eventually(lambda a=actor: _completed(journal, a),
                                 what=f"{actor} to complete on the v1 guest")
            await eventually(lambda: _true(not v1.activations and not v1._guests),
                             what="the guest to give the actors back")
            # the next run of those actors is the partition owner's again, under v2
            await v2.send(held[0], "quick", None, msg_id="after")
            await eventually(lambda: _completed_msg(journal, held[0], "after"))
            runs = await completions(journal, held[0])
            assert [c["run"].get("ver") for c in runs if c["run"]["msg"] == "after"] == ["v2"]
        await journal.close()

    run(main())


async def _true(value: bool) -> bool:
    return value


async def _completed_msg(journal: SqliteJournal, actor: str, msg: str) -> bool:
    return any(c["run"]["msg"] == msg for c in await completions(journal, actor))


def test_a_journal_of_loom_0_2_gains_the_version_pin(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE sched (actor TEXT PRIMARY KEY, last_n INTEGER NOT NULL DEFAULT 0,
            due_at REAL, ready_n INTEGER NOT NULL DEFAULT 0, owner TEXT,
            lease_until REAL NOT NULL DEFAULT 0, epoch INTEGER NOT NULL DEFAULT 0);
        INSERT INTO sched (actor, due_at) VALUES ('hold/a', 0);
        PRAGMA user_version=2;""")
    db.close()

    async def main() -> None:
        journal = SqliteJournal(path)
        assert await journal.due_actors(1.0, versions={"v9"}) == ["hold/a"]  # unpinned
        assert await journal.run_versions() == {}
        await journal.close()

    run(main())
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] >= 3
    assert "ver" in {r[1] for r in db.execute("PRAGMA table_info(sched)")}
    db.close()


# -- real workers in a fleet -------------------------------------------------------------------


def _rows(home: Path) -> str:
    db = sqlite3.connect(home / "loom.db")
    try:
        return "\n".join(str(r) for r in db.execute("SELECT * FROM sched ORDER BY actor"))
    finally:
        db.close()


def _worker(home: Path, log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("LOOM_")}
    base.update(LOOM_HOME=str(home), **env)
    with log.open("ab") as out:
        out.write(f"---- worker {env}\n".encode())
    return subprocess.Popen([str(LOOM), "worker", "--module", str(MODULE), "--poll", "0.01"],
                            cwd=home, env=base, stdin=subprocess.DEVNULL,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


def _status(home: Path, env: dict[str, str]) -> dict[str, Any]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("LOOM_")}
    shown = subprocess.run([str(LOOM), "cluster", "status"], capture_output=True, text=True,
                           env={**base, **env, "LOOM_HOME": str(home)}, timeout=30)
    assert shown.returncode == 0, shown.stderr
    status: dict[str, Any] = json.loads(shown.stdout)
    return status


@pytest.mark.system
def test_a_rolling_deploy_leaves_old_runs_to_workers_that_can_resume_them(
        tmp_path: Path, redis_server: Any) -> None:
    import redis

    url = redis_server.url.rsplit("/", 1)[0] + "/9"
    redis.Redis.from_url(url).flushdb()
    home = tmp_path / "home"
    home.mkdir()
    log = tmp_path / "workers.log"
    fleet = {"LOOM_REDIS_URL": url, "LOOM_LEASE_TTL_S": "2", "LOOM_PARTITIONS": "8"}
    journal = SqliteJournal(home / "loom.db")
    held = [f"hold/{i}" for i in range(16)]
    procs: list[subprocess.Popen[bytes]] = []

    def tail() -> str:
        return "\n".join(log.read_text(errors="replace").splitlines()[-60:])

    async def send(actor: str, handler: str | None, msg_id: str, kind: str = "call",
                   name: str | None = None) -> None:
        env: dict[str, Any] = {"id": msg_id, "target": actor, "kind": kind, "payload": None,
                               "deliver_at": 0.0}
        if handler:
            env["handler"] = handler
        if name:
            env["name"] = name
        await journal.enqueue(env)

    async def wait_for(check: Any, what: str, timeout: float = 40.0) -> None:
        deadline = time.monotonic() + timeout
        while not await check():
            assert all(p.poll() is None for p in procs), f"a worker died\n{tail()}"
            assert time.monotonic() < deadline, (
                f"timed out waiting for {what}\n{tail()}\n{json.dumps(_status(home, fleet))}"
                f"\n{_rows(home)}")
            await asyncio.sleep(0.05)

    async def all_pinned(version: str) -> bool:
        for actor in held:
            commits = await journal.read(actor)
            if not commits or commits[0]["run"].get("ver") != version:
                return False
        return await journal.run_versions() == {version: len(held)}

    try:
        v1 = _worker(home, log, {**fleet, "LOOM_CODE_VERSION": "v1"})
        procs.append(v1)
        for actor in held:
            run(send(actor, "start", f"start-{actor}"))
        run(wait_for(lambda: all_pinned("v1"), "v1 to start and park every run"))
        v1.terminate()
        assert v1.wait(30) == 0, tail()
        procs.remove(v1)

        v2 = _worker(home, log, {**fleet, "LOOM_CODE_VERSION": "v2"})
        procs.append(v2)
        for actor in held:
            run(send(actor, None, f"go-{actor}", kind="event", name="go"))
        run(send("hold/fresh", "quick", "fresh"))
        run(wait_for(lambda: _completed(journal, "hold/fresh"), "v2 to run a new message"))
        time.sleep(1.5)
        for actor in held:
            assert not run(_completed(journal, actor)), f"v2 resumed {actor}\n{tail()}"
        status = _status(home, fleet)
        assert status["runs_by_version"]["v1"]["runs"] == len(held), status
        assert status["stranded_versions"] == ["v1"], status

        v3 = _worker(home, log, {**fleet, "LOOM_CODE_VERSION": "v3",
                                 "LOOM_COMPATIBLE_VERSIONS": "v1"})
        procs.append(v3)
        for actor in held:
            run(wait_for(lambda a=actor: _completed(journal, a), f"{actor} to complete"))
        status = _status(home, fleet)
        assert status["stranded_versions"] == [], status
        owners = {w["id"]: w for w in status["workers"]}
        assert {w["version"] for w in owners.values()} == {"v2", "v3"}
        assert any(w["compatible"] == ["v1"] for w in owners.values())
        # the guest path was needed: some of those actors are in partitions v2 holds
        v2_parts = {int(p) for p, o in status["owners"].items()
                    if o["worker"].startswith(next(i for i, w in owners.items()
                                                   if w["version"] == "v2"))}
        from runtime.cluster.partitions import partition_of
        assert {partition_of(a, 8) for a in held} & v2_parts, status
        for proc in procs:
            proc.terminate()
        for proc in procs:
            assert proc.wait(30) == 0, tail()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        run(journal.close())
