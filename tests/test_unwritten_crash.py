"""Asks made up here run before their entries are written (docs/architecture.md, "An ask
from here starts before its entry is written"). Here a process doing nothing but such asks,
on SQLite with its writer process, is SIGKILLed with that writer process (as a machine
crash would take both) at random moments, restarted, killed again, and finally recovered.
Whatever moment the kill hit (an early run before its entry, an entry written with its
first commit, a batch the writer process was committing), the journal must hold:

- every answered ask ran exactly once;
- no run without its entry (no commit of a call whose entry is not in the inbox);
- every entry written ran, once, whether or not its asker lived to hear the answer.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from runtime.actors import Actor, ActorContext, ActorRuntime, handler
from runtime.executor import Executor
from runtime.executor.registry import sha256_hex
from runtime.journal.sqlite import SqliteJournal
from runtime.settings import load_settings

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[1]
ACTORS = 8
KILLS = 4

CHILD = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[4])
    from runtime.actors import ActorRuntime
    from runtime.executor import Executor
    from runtime.journal.sqlite import SqliteJournal
    from tests.test_unwritten_crash import Tally, settings

    async def main() -> None:
        home, journal, tag = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
        rt = ActorRuntime(SqliteJournal(journal, synchronous="FULL"),
                          Executor(settings(home)), lease_ttl_s=1.0, lint=False)
        rt.register(Tally)
        await rt.start()

        async def asker(i: int) -> None:
            k = 0
            while True:
                p = f"{tag}-{i}-{k}"
                assert await rt.ask(f"crash_tally/a{i}", "note", p) == p
                sys.stdout.write(p + "\\n")
                sys.stdout.flush()
                k += 1

        await asyncio.gather(*(asker(i) for i in range(int(sys.argv[5]))))

    asyncio.run(main())
""")


class Tally(Actor, type_name="crash_tally"):
    def initial_state(self) -> dict[str, Any]:
        return {"seen": []}

    @handler
    async def note(self, ctx: ActorContext, payload: str) -> str:
        out = await ctx.call_activity("echo", {"p": payload})  # contained: runs early
        self.state["seen"].append(out["p"])
        return str(out["p"])

    @handler
    async def peek(self, ctx: ActorContext, payload: Any) -> list[str]:
        return list(self.state["seen"])


def settings(home: Path) -> Any:
    return load_settings(home=home, blob_url=f"file://{home / 'blobs'}",
                         cache_dir=home / "cache")


def _run_and_kill(home: Path, journal: Path, tag: str, rng: random.Random) -> list[str]:
    """One process asking until it is SIGKILLed, some answers after it started; the asks
    it reported answered."""
    log = home.parent / f"{tag}.log"  # (a file: a full stderr pipe would stall the child)
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(home), str(journal), tag, str(ROOT), str(ACTORS)],
            stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT, start_new_session=True)
    answered: list[str] = []
    reader = threading.Thread(target=lambda: answered.extend(
        line.strip() for line in proc.stdout or ()), daemon=True)
    reader.start()
    deadline = time.monotonic() + 60
    want = rng.randint(20, 400)
    while len(answered) < want and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, f"the asking process died: {log.read_text()[-3000:]}"
    assert len(answered) >= want, f"only {len(answered)} asks answered in 60 s"
    time.sleep(rng.uniform(0.0, 0.05))
    os.killpg(proc.pid, signal.SIGKILL)  # with its writer process: a batch it holds dies too
    proc.wait(timeout=30)
    reader.join(timeout=30)
    return [a for a in answered if a]


async def _recover(home: Path, journal: Path) -> dict[str, list[str]]:
    """A fresh runtime runs what is left (after the dead owner's leases expire); each
    actor's tally, read by an ask that queues behind everything written before it."""
    rt = ActorRuntime(SqliteJournal(journal), Executor(settings(home)), lease_ttl_s=1.0,
                      lint=False)
    rt.register(Tally)
    await rt.start()
    try:
        return {f"crash_tally/a{i}": await asyncio.wait_for(
            rt.ask(f"crash_tally/a{i}", "peek", None, msg_id=f"peek-{i}"), 60)
            for i in range(ACTORS)}
    finally:
        await rt.stop()


def test_kills_during_early_runs_lose_no_written_call_and_run_none_twice(
        tmp_path: Path) -> None:
    home, journal = tmp_path / "home", tmp_path / "journal.db"
    ex = Executor(settings(home))
    wasm = (ROOT / "activities/build/echo.wasm").read_bytes()
    manifest = json.loads((ROOT / "activities/build/echo.manifest.json").read_text())
    manifest["sha256"] = sha256_hex(wasm)
    ex.upload(wasm, manifest)
    ex.close()

    rng = random.Random(7)
    answered: list[str] = []
    for kill in range(KILLS):
        answered += _run_and_kill(home, journal, f"k{kill}", rng)
    tallies = asyncio.run(_recover(home, journal))

    db = sqlite3.connect(journal)
    entries: dict[str, str] = {}  # payload -> actor, of every call entry written
    for actor, doc in db.execute("SELECT actor, doc FROM inbox WHERE kind = 'call'"):
        env = json.loads(doc)
        if env.get("handler") == "note":
            entries[env["payload"]] = actor
    pending = db.execute("SELECT COUNT(*) FROM inbox WHERE consumed_at IS NULL").fetchone()[0]
    db.close()

    ran = Counter(p for seen in tallies.values() for p in seen)
    twice = sorted(p for p, c in ran.items() if c > 1)
    assert not twice, f"ran more than once: {twice[:10]}"
    where = {p: actor for actor, seen in tallies.items() for p in seen}
    assert all(where[p] == entries.get(p) for p in where), \
        f"ran without its entry: {sorted(p for p in where if p not in entries)[:10]}"
    assert set(entries) <= set(ran), \
        f"written but never ran: {sorted(set(entries) - set(ran))[:10]}"
    lost = sorted(set(answered) - set(ran))
    assert not lost, f"answered but not in the journal's state: {lost[:10]}"
    assert pending == 0
    assert len(answered) >= KILLS * 20
    assert len(entries) >= len(answered)
