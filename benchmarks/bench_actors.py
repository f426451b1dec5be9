#!/usr/bin/env python3
"""Actor runtime benchmark: durable message throughput (vs DBOS), replay, activation.

Run from the repo root:  .venv/bin/python benchmarks/bench_actors.py   (or `make bench`)

1. Throughput: one process, SqliteJournal(synchronous="FULL", WAL), an actor whose handler
   runs ONE `echo` activity (~100-byte JSON object) and commits once; N messages spread
   over 64 actors with 64 asks in flight (64 coroutines, each awaiting `rt.ask` in turn),
   best of 3. Extras: the same on the in-memory journal (no storage), SQLite transactions
   and bytes written to disk per message, the share of wall time the writer thread spends
   inside the journal's group commit (it overlaps the loop), and the event-loop thread's CPU
   share (near 100 %: the loop's own Python work is the limit).
2. DBOS side by side, same N, same concurrency, in a child process whose rounds alternate
   with Loom's (DbosProcess: its background threads stay out of Loom's GIL): SQLite system
   database (WAL, synchronous=FULL like Loom's journal), a workflow with ONE step that calls
   a Loom executor's `invoke_sync("echo", ...)` (the same module, in that process). Two
   ways of driving it: 64 threads each running the sync workflow in turn (best of 3) and 64
   coroutines awaiting an async workflow whose step runs via `DBOS.run_step_async`
   (off-loop, DBOS's recommendation).
   Rounds are interleaved with Loom's so machine noise hits both alike.
3. Replay: a run of N echo steps (N = 100, 10,000, 100,000) that ends in a `wait_for_event`
   that never arrives. (a) A NEW runtime recovers the actor (`start()`: load the journal
   tail, rebuild the run, re-execute the handler against the recorded outcomes) until the
   replay reaches the wait (`activation.run.waits` non-empty); (b) `replay_commits` on the
   completed run (after the event is delivered). Profiled with cProfile when a goal misses.
4. Activation: an actor with ~10 KB of state and a short journal; cold = first `ask` of a
   trivial handler (no activity) on a new runtime + new journal connection; warm = the next
   asks to the same, now active, actor. Medians. Whole states and state deltas
   (LOOM_STATE_DELTAS=1).
5. Commit size: one actor with ~10 KB of state, one field changing per message; bytes per
   completing commit (the JSON SQLite stores, the item Cosmos would store) and Cosmos
   documents per message, whole state vs deltas; then its cold and warm activation.

Prints a table and merges {"actors": {...}} into .loom/bench.json (other keys kept).
The journals live in a temporary directory on the local disk, never in .loom.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import importlib.util
import io
import json
import logging
import os
import platform
import pstats
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

from bench_io import fmt, ratio, verdict, write_section

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pydantic_core import to_json  # noqa: E402

from runtime.actors import Actor, ActorContext, ActorRuntime, gc_tuning, handler  # noqa: E402
from runtime.actors.activation import Activation  # noqa: E402
from runtime.actors.replay import replay_commits  # noqa: E402
from runtime.executor.executor import Executor  # noqa: E402
from runtime.executor.registry import sha256_hex  # noqa: E402
from runtime.journal.memory import MemoryJournal  # noqa: E402
from runtime.journal.sqlite import SqliteJournal  # noqa: E402
from runtime.journal.store import Commit  # noqa: E402
from runtime.settings import load_settings  # noqa: E402

# DBOS is imported only by the process that runs it (`dbos_child`): imported here, its
# modules doubled the objects every full collection of this process walks (34 -> 91 ms),
# a cost Loom's rounds would pay for a library they do not use.
DBOS_IMPORT_ERROR: str | None = (None if importlib.util.find_spec("dbos") is not None
                                 else "ModuleNotFoundError: No module named 'dbos'")


def _dbos() -> Any:
    from dbos import DBOS
    return DBOS


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:  # importable, but installed without metadata
        return "unknown version"

# The same ~100-byte JSON object as benchmarks/bench_executor.py.
PAYLOAD: dict[str, Any] = {"id": 12345, "name": "bench", "tags": ["alpha", "beta", "gamma"],
                           "active": True, "score": 3.25, "nested": {"k": "v", "n": 7}}
PAYLOAD_BYTES = len(to_json(PAYLOAD))

FIELD_ITEMS = 136  # FieldActor's ~10 KB state
COMMIT_SIZE_GOAL = 1024  # bytes per commit with one field changing per message
SEED_MSGS_PER_S = 1_000.0
GOAL_MSGS_PER_S = 5_000.0
SEED_REPLAY_100_MS = 50.0
GOAL_REPLAY_10000_MS = 50.0  # issue #12: activation replay of 10,000 steps

# Set by StepsActor when its handler is entered (benchmark instrumentation, not actor state).
MARKS: dict[str, float] = {}


# --- the actors --------------------------------------------------------------------------------
class EchoActor(Actor, type_name="bench_echo"):
    """Throughput: one activity, one commit per message."""

    @handler
    async def echo(self, ctx: ActorContext, payload: Any) -> Any:
        out = await ctx.call_activity("echo", payload)
        self.state["n"] = self.state.get("n", 0) + 1
        return out


class StepsActor(Actor, type_name="bench_steps"):
    """Replay: `n` echo steps, then (optionally) wait for an event."""

    @handler
    async def steps(self, ctx: ActorContext, payload: Any) -> Any:
        MARKS["entered"] = time.perf_counter()  # instrumentation only; not part of the run
        activity = payload.get("activity", "echo")
        for i in range(payload["n"]):
            await ctx.call_activity(activity, {**PAYLOAD, "i": i})
        if payload.get("wait"):
            await ctx.wait_for_event("go")
        self.state["runs"] = self.state.get("runs", 0) + 1
        return payload["n"]


class StateActor(Actor, type_name="bench_state"):
    """Activation: ~10 KB of state, a trivial handler."""

    @handler
    async def fill(self, ctx: ActorContext, payload: Any) -> int:
        gen = payload["gen"]
        self.state["items"] = [{"id": i, "name": f"item-{gen}-{i:04d}", "qty": i * 3 + gen,
                                "tags": ["red", "green"], "price": round(i * 1.25, 2)}
                               for i in range(payload["items"])]
        self.state["gen"] = gen
        return len(to_json(self.state))

    @handler
    async def ping(self, ctx: ActorContext, payload: Any) -> int:
        return len(self.state.get("items", []))


class FieldActor(Actor, type_name="bench_field"):
    """Commit size: ~10 KB of state; each message changes one field of it."""

    def initial_state(self) -> dict[str, Any]:
        return {"items": [{"id": i, "name": f"item-{i:04d}", "qty": i, "tags": ["red", "green"],
                           "price": round(i * 1.25, 2)} for i in range(FIELD_ITEMS)], "n": 0}

    @handler
    async def bump(self, ctx: ActorContext, payload: int) -> int:
        self.state["items"][payload % FIELD_ITEMS]["qty"] += 1
        self.state["n"] += 1
        return int(self.state["n"])

    @handler
    async def ping(self, ctx: ActorContext, payload: Any) -> int:
        return int(self.state["n"])


class SizedSqliteJournal(SqliteJournal):
    """The product journal, noting the size of every commit appended, as SQLite stores it
    (its JSON) and as a Cosmos item (`CosmosJournal._encode`: metadata + body, blobs)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        from runtime.journal.cosmos import CosmosJournal

        super().__init__(*args, **kw)
        self.cosmos = CosmosJournal("https://127.0.0.1:1", "unused")  # never connects
        self.sized: list[dict[str, Any]] = []

    async def append(self, commit: Commit) -> None:
        from runtime.journal.cosmos import _commit_paths, _item_bytes

        seq = commit["seq"]
        item = self.cosmos._encode(commit, {"id": f"c:{seq:012d}", "actor": commit["actor"],
                                            "seq": seq, "type": "commit",
                                            "has_state": "state" in commit, "done": None},
                                   _commit_paths(commit), "bench", "bench")
        self.sized.append({"bytes": len(to_json(commit)), "cosmos_bytes": _item_bytes(item),
                           "blobs": len(item.get("blobs") or ()), "kind": "kind" in commit,
                           "snapshot": "state" in commit})
        await super().append(commit)


class TimedSqliteJournal(SqliteJournal):
    """The product journal, plus clocks around its group commit: the writer thread's
    COMMIT (WAL write and fsync; or a whole transaction when another process held the
    lock), and the loop's share (the transaction's statements, run on the event loop)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.flush_s = 0.0  # writer thread
        self.loop_s = 0.0  # event loop, inside the group commit

    def _flush(self, loop: Any) -> None:
        t0 = time.perf_counter()
        try:
            super()._flush(loop)
        finally:
            self.loop_s += time.perf_counter() - t0

    def _answered(self, *args: Any, **kw: Any) -> None:  # the writer process's answer
        t0 = time.perf_counter()
        try:
            super()._answered(*args, **kw)
        finally:
            self.loop_s += time.perf_counter() - t0

    def _commit(self, batch: Any, results: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return super()._commit(batch, results)
        finally:
            self.flush_s += time.perf_counter() - t0

    def _write_batch(self, batch: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return super()._write_batch(batch)
        finally:
            self.flush_s += time.perf_counter() - t0


# --- helpers -----------------------------------------------------------------------------------
def load_echo() -> tuple[bytes, dict[str, Any]]:
    wasm_path = ROOT / "activities/build/echo.wasm"
    manifest_path = ROOT / "activities/build/echo.manifest.json"
    if not (wasm_path.is_file() and manifest_path.is_file()):
        raise SystemExit("activities/build/echo.wasm is missing: run `make activities` first")
    wasm = wasm_path.read_bytes()
    manifest = json.loads(manifest_path.read_text())
    manifest["sha256"] = sha256_hex(wasm)
    return wasm, manifest


def make_executor(home: Path) -> Executor:
    settings = load_settings(home=home, blob_url=f"file://{home / 'blobs'}",
                             cache_dir=home / "cache")
    ex = Executor(settings)
    wasm, manifest = load_echo()
    ex.upload(wasm, manifest)
    # the same guest, allowed to log: it reaches outside the process, so each of its steps
    # is committed before the next (replay, one commit a step)
    ex.upload(wasm, {**manifest, "name": "echo_logged", "capabilities": {"log": True}})
    assert ex.invoke_sync("echo", PAYLOAD) == PAYLOAD
    return ex


def disk_written(journal: Any = None) -> int | None:
    """Bytes this process (and the journal's writer process, if it runs one) caused to be
    written to storage so far (Linux /proc/<pid>/io)."""
    total = 0
    for pid in ("self", getattr(journal, "writer_pid", None)):
        if pid is None:
            continue
        try:
            for line in Path(f"/proc/{pid}/io").read_text().splitlines():
                if line.startswith("write_bytes:"):
                    total += int(line.split()[1])
        except OSError:
            if pid == "self":
                return None
    return total


def per(total: float | None, n: int) -> float | None:
    return None if total is None or n == 0 else total / n




def r3(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def rounded(v: Any) -> Any:
    if isinstance(v, float):
        return round(v, 3)
    if isinstance(v, list):
        return [rounded(x) for x in v]
    if isinstance(v, dict):
        return {k: rounded(x) for k, x in v.items()}
    return v


def profile_top(prof: cProfile.Profile, n: int = 14) -> list[str]:
    """The top entries by own time, as compact lines."""
    st = pstats.Stats(prof, stream=io.StringIO())
    rows = []
    for (path, line, func), (_cc, nc, tt, ct, _) in st.stats.items():  # type: ignore[attr-defined]
        where = path
        for marker in (str(ROOT) + "/", "site-packages/", "lib/python3"):
            if marker in where:
                where = where.split(marker, 1)[1]
                break
        rows.append((tt, ct, nc, f"{where}:{line}({func})"))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows) or 1.0
    return [f"{tt * 1000:8.1f} ms own {tt / total * 100:5.1f}%  {ct * 1000:8.1f} ms cum  "
            f"{nc:>7} calls  {name}" for tt, ct, nc, name in rows[:n]]


async def wait_until(pred: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.perf_counter() + timeout
    while not pred():
        if time.perf_counter() > deadline:
            raise TimeoutError("benchmark condition not reached")
        await asyncio.sleep(0)


# --- 1. throughput -----------------------------------------------------------------------------
async def loom_round(rt: ActorRuntime, n: int, conc: int, tag: str) -> float:
    per_actor = n // conc

    async def worker(i: int) -> None:
        key = f"bench_echo/{tag}{i}"
        for _ in range(per_actor):
            out = await rt.ask(key, "echo", PAYLOAD)
            if out != PAYLOAD:
                raise AssertionError(f"echo returned {out!r}")

    gc.collect()
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(conc)))
    return time.perf_counter() - t0


class LoomSide:
    """One runtime on a persistent loop, so its rounds can interleave with DBOS's."""

    def __init__(self, loop: asyncio.AbstractEventLoop, ex: Executor, journal: Any,
                 threads: int) -> None:
        self.loop, self.journal = loop, journal
        self.rt = ActorRuntime(journal, ex, lint=False, activity_threads=threads)
        self.rt.register(EchoActor)
        self.rounds: list[dict[str, Any]] = []

    def start(self, conc: int) -> None:
        self.loop.run_until_complete(self.rt.start())
        self.loop.run_until_complete(loom_round(self.rt, conc * 2, conc, "a"))  # activate

    def round(self, n: int, conc: int) -> dict[str, Any]:
        j = self.journal
        tx0, w0 = getattr(j, "transactions", 0), getattr(j, "writes", 0)
        f0, d0, l0 = getattr(j, "flush_s", 0.0), disk_written(j), getattr(j, "loop_s", 0.0)
        c0 = time.thread_time()  # CPU of this thread, which runs the event loop
        dt = self.loop.run_until_complete(loom_round(self.rt, n, conc, "a"))
        loop_cpu = time.thread_time() - c0
        d1 = disk_written(j)
        sent = n // conc * conc
        rec = {"msgs_per_s": sent / dt, "seconds": dt, "messages": sent,
               "transactions": getattr(j, "transactions", 0) - tx0,
               "writes": getattr(j, "writes", 0) - w0,
               "flush_s": getattr(j, "flush_s", 0.0) - f0, "loop_cpu_s": loop_cpu,
               "loop_commit_s": getattr(j, "loop_s", 0.0) - l0,
               "disk_bytes": None if d0 is None or d1 is None else d1 - d0}
        self.rounds.append(rec)
        return rec

    def stop(self) -> None:
        self.loop.run_until_complete(self.rt.stop())
        self.loop.run_until_complete(self.journal.close())


class DbosSide:
    """DBOS on a SQLite system database in this process; workflow = one echo step."""

    def __init__(self, ex: Executor, home: Path, loop: asyncio.AbstractEventLoop) -> None:
        self.dbos = DBOS = _dbos()
        self.loop = loop
        self.db_path = home / "dbos_sys.sqlite"
        # Same durability as Loom's journal: WAL (persistent in the file) + synchronous=FULL
        # (SQLite's default for every connection DBOS opens; checked below).
        con = sqlite3.connect(self.db_path)
        self.journal_mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        self.synchronous = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(
            con.execute("PRAGMA synchronous").fetchone()[0], "?")
        con.close()
        for name in ("dbos", "sqlalchemy"):
            logging.getLogger(name).setLevel(logging.WARNING)
        DBOS.destroy(destroy_registry=True)
        DBOS(config={"name": "loom-bench-actors",
                     "system_database_url": f"sqlite:///{self.db_path}",
                     "log_level": "WARNING"})

        def echo_activity(p: Any) -> Any:  # identical activity work to Loom's
            return ex.invoke_sync("echo", p)

        echo_step = DBOS.step(name="echo_step")(echo_activity)

        @DBOS.workflow(name="echo_wf_sync")  # type: ignore[untyped-decorator]
        def echo_wf_sync(p: Any) -> Any:
            return echo_step(p)

        @DBOS.workflow(name="echo_wf_async")  # type: ignore[untyped-decorator]
        async def echo_wf_async(p: Any) -> Any:
            return await DBOS.run_step_async({"name": "echo_step_async"}, echo_activity, p)

        self.wf_sync, self.wf_async = echo_wf_sync, echo_wf_async
        DBOS.launch()
        self.rounds: dict[str, list[dict[str, Any]]] = {"threads": [], "async": []}
        assert self.wf_sync(PAYLOAD) == PAYLOAD
        assert self.loop.run_until_complete(self.wf_async(PAYLOAD)) == PAYLOAD

    def _threads(self, n: int, conc: int) -> float:
        per_worker = n // conc
        barrier = threading.Barrier(conc + 1)

        def worker(_: int) -> None:
            barrier.wait()
            for _ in range(per_worker):
                if self.wf_sync(PAYLOAD) != PAYLOAD:
                    raise AssertionError("dbos echo workflow returned something else")

        with ThreadPoolExecutor(conc, thread_name_prefix="bench-dbos") as pool:
            futs = [pool.submit(worker, i) for i in range(conc)]
            gc.collect()
            barrier.wait()
            t0 = time.perf_counter()
            for f in futs:
                f.result()
            return time.perf_counter() - t0

    async def _async(self, n: int, conc: int) -> float:
        per_worker = n // conc

        async def worker() -> None:
            for _ in range(per_worker):
                if await self.wf_async(PAYLOAD) != PAYLOAD:
                    raise AssertionError("dbos echo workflow returned something else")

        gc.collect()
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conc)))
        return time.perf_counter() - t0

    def round(self, mode: str, n: int, conc: int) -> dict[str, Any]:
        d0 = disk_written()
        if mode == "threads":
            dt = self._threads(n, conc)
        else:
            dt = self.loop.run_until_complete(self._async(n, conc))
        d1 = disk_written()
        sent = n // conc * conc
        rec = {"msgs_per_s": sent / dt, "seconds": dt, "messages": sent,
               "disk_bytes": None if d0 is None or d1 is None else d1 - d0}
        self.rounds[mode].append(rec)
        return rec

    def workflows_recorded(self) -> int | None:
        with contextlib.suppress(Exception):
            con = sqlite3.connect(self.db_path)
            try:
                return int(con.execute("SELECT COUNT(*) FROM workflow_status").fetchone()[0])
            finally:
                con.close()
        return None

    def stop(self) -> None:
        self.dbos.destroy(destroy_registry=True)


class DbosProcess:
    """A DbosSide in a child process, driven a round at a time (JSON lines on its stdin and
    stdout). In this process, DBOS's background threads (queue poller, scheduler,
    notification listener, its own event loop) kept waking and taking the GIL from Loom's
    rounds (measured: 4.2k -> 3.3-3.5k msg/s with DBOS idle beside them). Rounds still
    alternate with Loom's, in the same minutes; each side has the machine to itself while
    it runs."""

    def __init__(self, home: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--dbos-child", str(home)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        hello = self._read()
        self.journal_mode, self.synchronous = hello["journal_mode"], hello["synchronous"]
        self.rounds: dict[str, list[dict[str, Any]]] = {"threads": [], "async": []}

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the DBOS process exited ({self.proc.wait()})")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return answer

    def _ask(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def round(self, mode: str, n: int, conc: int) -> dict[str, Any]:
        rec = self._ask({"round": mode, "n": n, "conc": conc})
        self.rounds[mode].append(rec)
        return rec

    def workflows_recorded(self) -> int | None:
        found: int | None = self._ask({"recorded": True}).get("recorded")
        return found

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._ask({"stop": True})
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def dbos_child(home: Path) -> None:
    """The DBOS process: a DbosSide, then one JSON answer per command line."""
    out, sys.stdout = sys.stdout, sys.stderr  # what DBOS prints must not garble the answers

    def say(answer: dict[str, Any]) -> None:
        out.write(json.dumps(answer) + "\n")
        out.flush()

    gc_tuning.raise_young_threshold()  # the young-GC threshold Loom's runtime sets for itself
    try:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        ex = make_executor(home / "dbos-executor")
        side = DbosSide(ex, home, loop)
    except Exception as exc:
        say({"error": f"DBOS did not start on SQLite: {type(exc).__name__}: {exc}"})
        return
    say({"journal_mode": side.journal_mode, "synchronous": side.synchronous})
    for line in sys.stdin:
        command = json.loads(line)
        try:
            if "round" in command:
                say(side.round(command["round"], command["n"], command["conc"]))
            elif "recorded" in command:
                say({"recorded": side.workflows_recorded()})
            else:
                say({"stopped": True})
                break
        except Exception as exc:
            say({"error": f"{type(exc).__name__}: {exc}"})
    with contextlib.suppress(Exception):
        side.stop()
    ex.close()


def bench_throughput(ex: Executor, home: Path, args: argparse.Namespace) -> dict[str, Any]:
    n, conc = args.messages, args.actors
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    out: dict[str, Any] = {}
    journal = TimedSqliteJournal(home / "throughput.db", synchronous="FULL")
    mode = journal._db.execute("PRAGMA journal_mode").fetchone()[0]
    sync = journal._db.execute("PRAGMA synchronous").fetchone()[0]
    out["journal_mode"], out["synchronous"] = mode, {2: "FULL", 3: "EXTRA"}.get(sync, sync)
    loom = LoomSide(loop, ex, journal, args.activity_threads)
    loom.start(conc)

    dbos_side: DbosProcess | None = None
    out["dbos_error"] = DBOS_IMPORT_ERROR
    if DBOS_IMPORT_ERROR is None and not args.no_dbos:
        try:
            dbos_side = DbosProcess(home)
        except Exception as exc:  # record why, keep going with Loom's numbers
            out["dbos_error"] = str(exc)
    elif args.no_dbos:
        out["dbos_error"] = "skipped (--no-dbos)"

    plan: list[tuple[str, str]] = []
    for r in range(max(args.rounds, args.dbos_rounds, args.dbos_async_rounds)):
        if r < args.rounds:
            plan.append(("loom", "sqlite"))
        if dbos_side is not None and r < args.dbos_rounds:
            plan.append(("dbos", "threads"))
        if dbos_side is not None and r < args.dbos_async_rounds:
            plan.append(("dbos", "async"))
    for who, mode_ in plan:
        if who == "loom":
            rec = loom.round(n, conc)
            print(f"    loom  sqlite FULL        {rec['msgs_per_s']:8.0f} msg/s  "
                  f"({rec['seconds']:.2f} s, {rec['transactions']} txns)", flush=True)
        else:
            assert dbos_side is not None
            try:
                rec = dbos_side.round(mode_, n, conc)
            except Exception as exc:
                out["dbos_error"] = f"DBOS round failed: {type(exc).__name__}: {exc}"
                print(f"    dbos  {mode_:<18} FAILED: {out['dbos_error']}", flush=True)
                continue
            print(f"    dbos  {mode_:<18} {rec['msgs_per_s']:8.0f} msg/s  "
                  f"({rec['seconds']:.2f} s)", flush=True)
    # Sustained: more rounds on the same file, which keeps growing (no DBOS in between).
    for _ in range(args.sustained_rounds):
        rec = loom.round(n, conc)
        print(f"    loom  sqlite FULL, same file {rec['msgs_per_s']:6.0f} msg/s  "
              f"({rec['seconds']:.2f} s)", flush=True)
    pages, size, free = (journal._db.execute(f"PRAGMA {q}").fetchone()[0]
                         for q in ("page_count", "page_size", "freelist_count"))
    out["journal_file_bytes"] = (pages - free) * size  # the database as of the last commit
    loom.stop()
    if dbos_side is not None:
        out["dbos_workflows_recorded"] = dbos_side.workflows_recorded()
        out["dbos_journal_mode"] = dbos_side.journal_mode
        out["dbos_synchronous"] = dbos_side.synchronous
        with contextlib.suppress(Exception):
            dbos_side.stop()
    out["loom_rounds"] = loom.rounds[:len(loom.rounds) - args.sustained_rounds]
    out["sustained_rounds"] = loom.rounds
    out["dbos_rounds"] = dbos_side.rounds if dbos_side is not None else None

    # The same runtime on the in-memory journal: what the storage costs.
    mem = LoomSide(loop, ex, MemoryJournal(), args.activity_threads)
    mem.start(conc)
    for _ in range(args.rounds):
        rec = mem.round(n, conc)
        print(f"    loom  memory journal     {rec['msgs_per_s']:8.0f} msg/s  "
              f"({rec['seconds']:.2f} s)", flush=True)
    mem.stop()
    out["memory_rounds"] = mem.rounds
    loop.close()
    asyncio.set_event_loop(None)
    return out


# --- 3. replay ---------------------------------------------------------------------------------
async def build_unfinished(ex: Executor, path: Path, key: str, n: int,
                           activity: str = "echo") -> dict[str, Any]:
    """Journal a run of `n` echo steps that then waits for an event (left unfinished)."""
    journal = SqliteJournal(path, synchronous="NORMAL")  # building only; reads are measured
    rt = ActorRuntime(journal, ex, lint=False)
    rt.register(StepsActor)
    t0 = time.perf_counter()
    async with rt:
        msg = await rt.send(key, "steps", {"n": n, "wait": True, "activity": activity})

        def waiting() -> bool:
            act = rt.activations.get(key)
            return act is not None and act.run is not None and bool(act.run.waits)

        await wait_until(waiting, timeout=600)
    build_s = time.perf_counter() - t0
    commits = len(await journal.read(key))
    await journal.close()
    return {"msg": msg, "build_s": build_s, "commits": commits,
            "db_bytes": path.stat().st_size + (path.with_name(path.name + "-wal").stat().st_size
                                               if path.with_name(path.name + "-wal").exists()
                                               else 0)}


async def activate_once(path: Path, key: str, n: int, ex: Executor, *,
                        profile: cProfile.Profile | None = None,
                        finish: bool = False, gc_off: bool = False) -> dict[str, Any]:
    """A new journal connection + runtime recovers `key`; time until the replay reaches
    the wait. With finish=True, then deliver the event and let the run complete."""
    journal = SqliteJournal(path, synchronous="FULL")
    rt = ActorRuntime(journal, ex, lint=False)
    rt.register(StepsActor)
    MARKS.clear()

    def waiting() -> bool:
        act = rt.activations.get(key)
        return act is not None and act.run is not None and bool(act.run.waits)

    gc.collect()
    if gc_off:
        gc.disable()
    full0 = gc.get_stats()[2]["collections"]
    if profile is not None:
        profile.enable()
    try:
        t0 = time.perf_counter()
        await rt.start()
        rt.notify(key)  # a parked run is not due by itself: activate it as an event would
        await wait_until(waiting)
        t1 = time.perf_counter()
    finally:
        if profile is not None:
            profile.disable()
        gc.enable()
    full_gcs = gc.get_stats()[2]["collections"] - full0
    act: Activation = rt.activations[key]
    run = act.run
    assert run is not None
    replayed = run.replay_until
    if run.step != replayed or replayed != n + 1:  # n activity steps + the wait step
        raise AssertionError(f"replay stopped at step {run.step} of {replayed} (n={n})")
    entered = MARKS.get("entered", t0)
    res = {"total_ms": (t1 - t0) * 1000, "load_ms": (entered - t0) * 1000,
           "handler_ms": (t1 - entered) * 1000, "steps": replayed, "full_gcs": full_gcs}
    if finish:
        await rt.signal(key, "go", {"ok": True})
        await wait_until(lambda: act.run is None, timeout=60)
        state = await rt.state_of(key)
        assert state == {"runs": 1}, state
    await rt.stop()
    t2 = time.perf_counter()
    tail = await journal.read_tail(key)
    res["read_tail_ms"] = (time.perf_counter() - t2) * 1000
    res["tail_commits"] = len(tail)
    await journal.close()
    return res


def load_breakdown(path: Path, key: str, n: int) -> dict[str, float]:
    """Where a recovery's time goes, piece by piece (no profiler): the SQLite read of the
    tail, decoding each commit document, and the step fingerprint computed per replayed step."""
    from pydantic_core import from_json

    from runtime.actors.context import digest

    con = sqlite3.connect(path)
    try:
        t0 = time.perf_counter()
        rows = con.execute(
            "SELECT doc FROM commits WHERE actor=?1 AND seq >= COALESCE((SELECT seq FROM "
            "commits WHERE actor=?1 AND has_state=1 ORDER BY seq DESC LIMIT 1), 0) "
            "ORDER BY seq", (key,)).fetchall()  # the query of SqliteJournal.read_tail
        fetch_ms = (time.perf_counter() - t0) * 1000
        gc.collect()
        full0 = gc.get_stats()[2]["collections"]
        t1 = time.perf_counter()
        docs = [from_json(r[0]) for r in rows]
        t2 = time.perf_counter()
        full_gcs = gc.get_stats()[2]["collections"] - full0
        for i in range(n):
            digest({"input": {**PAYLOAD, "i": i}, "version": None})
        t3 = time.perf_counter()
        del docs
        gc.collect()
        gc.disable()  # the same decode with the cyclic GC off: what the collections cost
        try:
            t4 = time.perf_counter()
            docs = [from_json(r[0]) for r in rows]
            t5 = time.perf_counter()
        finally:
            gc.enable()
    finally:
        con.close()
    return {"sqlite_fetch_ms": fetch_ms, "from_json_ms": (t2 - t1) * 1000,
            "from_json_gc_off_ms": (t5 - t4) * 1000, "full_gc_runs_during_decode": full_gcs,
            "heap_objects": len(gc.get_objects()),
            "digest_ms": (t3 - t2) * 1000, "docs": len(docs),
            "doc_bytes_avg": sum(len(r[0]) for r in rows) / max(1, len(rows))}


async def bench_replay(ex: Executor, home: Path, n: int, repeats: int,
                       goal_ms: float, activity: str = "echo") -> dict[str, Any]:
    path = home / f"replay_{n}_{activity}.db"
    key = f"bench_steps/r{n}{activity}"
    built = await build_unfinished(ex, path, key, n, activity)
    samples = []
    for _ in range(repeats):
        samples.append(await activate_once(path, key, n, ex))
    med = {k: statistics.median(s[k] for s in samples)
           for k in ("total_ms", "load_ms", "handler_ms", "read_tail_ms")}
    parts = load_breakdown(path, key, n)
    out: dict[str, Any] = {"n": n, "activation_ms": med["total_ms"], "breakdown_ms": parts,
                           "activation_min_ms": min(s["total_ms"] for s in samples),
                           "activation_samples_ms": [s["total_ms"] for s in samples],
                           "load_ms": med["load_ms"], "handler_replay_ms": med["handler_ms"],
                           "read_tail_ms": med["read_tail_ms"],
                           "commits": built["commits"], "build_s": built["build_s"],
                           "journal_bytes": built["db_bytes"], "profile": None}
    out["full_gc_runs"] = statistics.median(s["full_gcs"] for s in samples)
    if med["total_ms"] >= goal_ms:
        # What the cyclic GC costs here: the same recovery with it switched off (diagnostic).
        off = [await activate_once(path, key, n, ex, gc_off=True) for _ in range(3)]
        out["activation_gc_off_ms"] = statistics.median(o["total_ms"] for o in off)
        prof = cProfile.Profile()
        await activate_once(path, key, n, ex, profile=prof)
        out["profile"] = profile_top(prof)

    # Finish the run (deliver the event) on one more new runtime; then replay_commits.
    await activate_once(path, key, n, ex, finish=True)
    journal = SqliteJournal(path, synchronous="FULL")
    t0 = time.perf_counter()
    commits = await journal.read(key)
    read_ms = (time.perf_counter() - t0) * 1000
    await journal.close()
    rc = []
    report = None
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        report = await replay_commits(StepsActor, key, commits)
        rc.append((time.perf_counter() - t0) * 1000)
    assert report is not None
    statuses = [r.status for r in report.runs]
    if statuses != ["ok"]:
        raise AssertionError(f"replay_commits: {[(r.status, r.detail) for r in report.runs]}")
    out.update(replay_commits_ms=statistics.median(rc), replay_commits_samples_ms=rc,
               read_all_ms=read_ms, replay_commits_profile=None)
    if out["replay_commits_ms"] >= goal_ms:
        prof = cProfile.Profile()
        prof.enable()
        await replay_commits(StepsActor, key, commits)
        prof.disable()
        out["replay_commits_profile"] = profile_top(prof)
    return out


# --- 4. activation -----------------------------------------------------------------------------
async def bench_activation(ex: Executor, home: Path, samples: int, warm_per: int,
                           items: int, fills: int, *, deltas: bool = False) -> dict[str, Any]:
    with state_deltas(deltas):
        return await _bench_activation(ex, home / f"activation_{int(deltas)}.db", samples,
                                       warm_per, items, fills)


async def _bench_activation(ex: Executor, path: Path, samples: int, warm_per: int,
                            items: int, fills: int) -> dict[str, Any]:
    key = "bench_state/s1"
    journal = SqliteJournal(path, synchronous="FULL")
    rt = ActorRuntime(journal, ex, lint=False)
    rt.register(StateActor)
    state_bytes = 0
    async with rt:
        for gen in range(fills):
            state_bytes = await rt.ask(key, "fill", {"gen": gen, "items": items})
    await journal.close()

    cold, warm, setup, warm_tx, warm_flush = [], [], [], [], []
    for _ in range(samples):
        gc.collect()
        t0 = time.perf_counter()
        journal = TimedSqliteJournal(path, synchronous="FULL")
        rt = ActorRuntime(journal, ex, lint=False)
        rt.register(StateActor)
        await rt.start()
        t1 = time.perf_counter()
        assert key not in rt.activations
        got = await rt.ask(key, "ping")
        t2 = time.perf_counter()
        assert got == items, got
        setup.append((t1 - t0) * 1000)
        cold.append((t2 - t1) * 1000)
        tx0, f0 = journal.transactions, journal.flush_s
        for _ in range(warm_per):
            t3 = time.perf_counter()
            await rt.ask(key, "ping")
            warm.append((time.perf_counter() - t3) * 1000)
        warm_tx.append((journal.transactions - tx0) / warm_per)
        warm_flush.append((journal.flush_s - f0) * 1000 / warm_per)
        await rt.stop()
        tail = await journal.read_tail(key)
        commits = len(await journal.read(key))
        await journal.close()
    return {"cold_ms": statistics.median(cold), "warm_ms": statistics.median(warm),
            "cold_samples_ms": cold, "warm_p90_ms": sorted(warm)[int(len(warm) * 0.9)],
            "runtime_start_ms": statistics.median(setup), "state_bytes": state_bytes,
            "warm_transactions_per_ask": statistics.median(warm_tx),
            "warm_commit_ms_per_ask": statistics.median(warm_flush),
            "tail_commits": len(tail), "commits": commits,
            "commit_doc_bytes": len(to_json(tail[-1]))}


# --- 5. commit size: whole state vs deltas -------------------------------------------------------
@contextlib.contextmanager
def state_deltas(on: bool) -> Any:
    """Commits written meanwhile carry deltas (LOOM_STATE_DELTAS, read per activation)."""
    saved = os.environ.get("LOOM_STATE_DELTAS")
    os.environ["LOOM_STATE_DELTAS"] = "1" if on else "0"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("LOOM_STATE_DELTAS", None)
        else:
            os.environ["LOOM_STATE_DELTAS"] = saved


async def bench_commit_size(ex: Executor, home: Path, messages: int, samples: int,
                            deltas: bool) -> dict[str, Any]:
    """`messages` asks to one ~10 KB-state actor, one field changing per message: the size
    of each commit (SQLite JSON, Cosmos item), documents per message, disk written; then
    cold activations of that actor (snapshot + the deltas after it) and warm asks."""
    path = home / f"field_{'delta' if deltas else 'full'}.db"
    key = "bench_field/f1"
    with state_deltas(deltas):
        journal = SizedSqliteJournal(path, synchronous="FULL")
        rt = ActorRuntime(journal, ex, lint=False)
        rt.register(FieldActor)
        async with rt:
            state_bytes = len(to_json(FieldActor().initial_state()))
            d0 = disk_written(journal)
            for i in range(messages):
                await rt.ask(key, "bump", i)
            d1 = disk_written(journal)
        sized = [c for c in journal.sized if c["kind"]]
        await journal.close()
        cold, warm, tails = [], [], []
        for _ in range(samples):
            gc.collect()
            journal2 = SqliteJournal(path, synchronous="FULL")
            rt = ActorRuntime(journal2, ex, lint=False)
            rt.register(FieldActor)
            await rt.start()
            t0 = time.perf_counter()
            got = await rt.ask(key, "ping")
            cold.append((time.perf_counter() - t0) * 1000)
            for _ in range(3):
                t1 = time.perf_counter()
                await rt.ask(key, "ping")
                warm.append((time.perf_counter() - t1) * 1000)
            await rt.stop()
            tails.append(len(await journal2.read_tail(key)))
            await journal2.close()
        assert got == messages, got
    n = len(sized)
    blobs = sum(c["blobs"] for c in sized)
    return {"deltas": deltas, "messages": messages, "state_bytes": state_bytes,
            "bytes_per_commit": sum(c["bytes"] for c in sized) / n,
            "bytes_per_commit_max": max(c["bytes"] for c in sized),
            "delta_commit_bytes_median": (statistics.median(c["bytes"] for c in sized
                                                            if not c["snapshot"])
                                          if any(not c["snapshot"] for c in sized) else None),
            "cosmos_item_bytes_per_commit": sum(c["cosmos_bytes"] for c in sized) / n,
            # inbox entry + schedule row + the commit + blobs its large values moved to
            "cosmos_documents_per_msg": 2 + (n + blobs) / messages,
            "snapshots": sum(c["snapshot"] for c in sized),
            "disk_bytes_per_msg": per(None if d0 is None or d1 is None else d1 - d0, messages),
            "cold_ms": statistics.median(cold), "warm_ms": statistics.median(warm),
            "tail_commits": statistics.median(tails)}


# --- report ------------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break

    def ver(pkg: str) -> str | None:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    return {"platform": platform.platform(), "cpu": cpu, "cpus": os.cpu_count(),
            "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
            "wasmtime": ver("wasmtime"), "dbos": ver("dbos"), "pydantic": ver("pydantic")}


def write_json(result: dict[str, Any]) -> Path:
    return write_section("actors", result)


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=5_120, help="messages per timed round")
    ap.add_argument("--actors", type=int, default=64, help="actors = asks in flight")
    ap.add_argument("--rounds", type=int, default=3, help="Loom rounds (best is kept)")
    ap.add_argument("--dbos-rounds", type=int, default=3, help="DBOS rounds, threads mode")
    ap.add_argument("--dbos-async-rounds", type=int, default=1,
                    help="DBOS rounds, async-workflow mode")
    ap.add_argument("--no-dbos", action="store_true", help="skip DBOS")
    ap.add_argument("--activity-threads", type=int, default=8,
                    help="ActorRuntime(activity_threads=...) (the runtime's default is 8)")
    ap.add_argument("--sustained-rounds", type=int, default=5,
                    help="Loom rounds after the timed ones, on the same (growing) file")
    ap.add_argument("--replay-repeats", type=int, default=5)
    ap.add_argument("--activation-samples", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="small counts, for a smoke test")
    ap.add_argument("--dbos-child", type=Path, help=argparse.SUPPRESS)  # DbosProcess's child
    args = ap.parse_args()
    if args.dbos_child is not None:
        dbos_child(args.dbos_child)
        return 0
    if args.quick:
        args.messages, args.rounds, args.dbos_rounds, args.dbos_async_rounds = 1_024, 2, 1, 1
        args.replay_repeats, args.activation_samples = 2, 5
        args.sustained_rounds = 1
    replay_sizes = [100, 1_000] if args.quick else [100, 10_000, 100_000]
    field_messages = 128 if args.quick else 512
    started = time.perf_counter()
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    home = Path(tempfile.mkdtemp(prefix="loom-bench-actors-"))
    ex = make_executor(home)
    print(f"Loom actor benchmark  |  echo activity, {PAYLOAD_BYTES}-byte JSON  |  "
          f"{os.cpu_count()} CPUs  |  journals in {home}  |  dbos: "
          f"{_version('dbos') if DBOS_IMPORT_ERROR is None else 'NOT AVAILABLE'}")
    try:
        print(f"\n[1/3] throughput: {args.messages} messages over {args.actors} actors, "
              f"{args.actors} asks in flight; Loom x{args.rounds}, DBOS threads "
              f"x{args.dbos_rounds}, DBOS async x{args.dbos_async_rounds}, interleaved ...",
              flush=True)
        tp = bench_throughput(ex, home, args)

        print(f"[2/3] replay: runs of {' and '.join(map(str, replay_sizes))} steps "
              "(building the journals, then recovering) ...", flush=True)
        replay = {n: run(bench_replay(ex, home, n, args.replay_repeats if n <= 10_000 else 3,
                                      SEED_REPLAY_100_MS if n == 100
                                      else GOAL_REPLAY_10000_MS * n / 10_000))
                  for n in replay_sizes}
        per_step = run(bench_replay(ex, home, replay_sizes[1], args.replay_repeats,
                                    GOAL_REPLAY_10000_MS, activity="echo_logged"))

        print(f"[3/3] activation: {args.activation_samples} cold starts of a ~10 KB-state "
              "actor, whole states and deltas; commit sizes over "
              f"{field_messages} one-field changes ...", flush=True)
        act = run(bench_activation(ex, home, args.activation_samples, 5, 136, 4))
        act_delta = run(bench_activation(ex, home, args.activation_samples, 5, 136, 4,
                                         deltas=True))
        sizes = {mode: run(bench_commit_size(ex, home, field_messages,
                                             args.activation_samples, mode == "delta"))
                 for mode in ("full", "delta")}
    finally:
        ex.close()
        shutil.rmtree(home, ignore_errors=True)
    elapsed = time.perf_counter() - started

    # ---- derive ----
    lr = tp["loom_rounds"]
    best_l = max(lr, key=lambda r: r["msgs_per_s"])
    msgs = best_l["msgs_per_s"]
    msgs_mem = max(r["msgs_per_s"] for r in tp["memory_rounds"])
    tot_msgs = sum(r["messages"] for r in lr)
    tx_per_msg = per(sum(r["transactions"] for r in lr), tot_msgs)
    writes_per_msg = per(sum(r["writes"] for r in lr), tot_msgs)
    writes_per_tx = ratio(sum(r["writes"] for r in lr), sum(r["transactions"] for r in lr))
    flush_share = ratio(sum(r["flush_s"] for r in lr), sum(r["seconds"] for r in lr))
    loop_cpu_share = ratio(sum(r.get("loop_cpu_s", 0.0) for r in lr),
                           sum(r["seconds"] for r in lr))
    flush_ms_per_tx = ratio(sum(r["flush_s"] for r in lr) * 1000,
                            sum(r["transactions"] for r in lr))
    loop_commit_share = ratio(sum(r.get("loop_commit_s", 0.0) for r in lr),
                              sum(r["seconds"] for r in lr))
    loop_commit_ms_per_tx = ratio(sum(r.get("loop_commit_s", 0.0) for r in lr) * 1000,
                                  sum(r["transactions"] for r in lr))
    disk = [r["disk_bytes"] for r in lr]
    loom_disk_per_msg = None if None in disk else per(sum(disk), tot_msgs)

    dr = tp["dbos_rounds"] or {"threads": [], "async": []}
    best_mode: dict[str, float | None] = {
        m: (max(r["msgs_per_s"] for r in rs) if rs else None) for m, rs in dr.items()}
    cands = [(v, m) for m, v in best_mode.items() if v is not None]
    dbos_best, dbos_mode = max(cands) if cands else (None, None)
    all_d = [r for rs in dr.values() for r in rs]
    ddisk = [r["disk_bytes"] for r in all_d]
    dbos_disk_per_msg = (None if not all_d or None in ddisk
                         else per(sum(ddisk), sum(r["messages"] for r in all_d)))
    vs_dbos = ratio(msgs, dbos_best)

    r100, r10k = replay[replay_sizes[0]], replay[replay_sizes[1]]
    big = replay_sizes[1]

    # ---- table ----
    W = 64
    print("\n" + "=" * 100)
    print(f"THROUGHPUT: {args.messages // args.actors * args.actors} messages, "
          f"{args.actors} actors, {args.actors} in flight; handler = 1 echo activity + 1 commit")
    print(f"  Loom journal: SQLite {tp['journal_mode']}, synchronous={tp['synchronous']}, "
          f"group commit; activity_threads={args.activity_threads}")
    if tp.get("dbos_journal_mode"):
        print(f"  DBOS system db: SQLite {tp['dbos_journal_mode']}, "
              f"synchronous={tp['dbos_synchronous']}; workflow = 1 step calling "
              "executor.invoke_sync('echo')")
    print("-" * 100)
    print(f"  {'variant':<{W}}{'best':>10}{'median':>10}{'rounds':>8}")

    def row(label: str, rounds: list[dict[str, Any]]) -> None:
        if not rounds:
            print(f"  {label:<{W}}{'n/a':>10}")
            return
        v = [r["msgs_per_s"] for r in rounds]
        print(f"  {label:<{W}}{max(v):>10.0f}{statistics.median(v):>10.0f}{len(v):>8}")

    row("Loom, SQLite journal (msg/s)", lr)
    row("DBOS, sync workflows on 64 threads (msg/s)", dr["threads"])
    row("DBOS, async workflows + run_step_async, 64 coroutines (msg/s)", dr["async"])
    row("Loom, in-memory journal, not durable  [extra] (msg/s)", tp["memory_rounds"])
    print("-" * 100)
    print(f"  Loom msgs/s = {msgs:.0f}   seed > {SEED_MSGS_PER_S:.0f}: "
          f"{verdict(msgs, SEED_MSGS_PER_S + 1e-9, at_most=False)}   goal >= "
          f"{GOAL_MSGS_PER_S:.0f}: {verdict(msgs, GOAL_MSGS_PER_S, at_most=False)}")
    if dbos_best is not None:
        print(f"  DBOS best = {dbos_best:.0f} msg/s ({dbos_mode});  loom / dbos = "
              f"{fmt(vs_dbos, '.1f')}x")
    else:
        print(f"  DBOS: n/a ({tp['dbos_error']})")
    print(f"  per Loom message: {fmt(writes_per_msg, '.2f')} journal writes, "
          f"{fmt(tx_per_msg, '.3f')} SQLite transactions ({fmt(writes_per_tx, '.1f')} writes "
          f"per group commit), disk written {fmt(per(loom_disk_per_msg, 1024), '.1f')} KiB "
          f"(DBOS: {fmt(per(dbos_disk_per_msg, 1024), '.1f')} KiB)")
    # The loop runs a transaction's statements (in bulk), the writer thread its COMMIT (WAL
    # write and fsync), which overlaps the loop's work. The loop thread's own CPU share says
    # whether the loop is the bottleneck (near 100 %: Python work per message) or waits.
    print(f"  group commit: event loop blocked in its statements "
          f"{fmt(None if loop_commit_share is None else loop_commit_share * 100, '.0f')}% of "
          f"wall time ({fmt(loop_commit_ms_per_tx, '.2f')} ms per transaction); writer thread "
          f"committing {fmt(None if flush_share is None else flush_share * 100, '.0f')}% "
          f"({fmt(flush_ms_per_tx, '.2f')} ms per transaction, overlapping the loop)")
    print(f"  event-loop thread on CPU: "
          f"{fmt(None if loop_cpu_share is None else loop_cpu_share * 100, '.0f')}% of wall "
          f"time;  durable / in-memory = {fmt(ratio(msgs, msgs_mem), '.2f')}")
    sr = [r["msgs_per_s"] for r in tp["sustained_rounds"]]
    file_per_msg = per(tp["journal_file_bytes"], sum(r["messages"] for r in tp["sustained_rounds"]))
    print(f"  sustained, one growing file: {len(sr)} rounds of {tp['loom_rounds'][0]['messages']}"
          f" messages: {' '.join(f'{v:.0f}' for v in sr)} msg/s (last / first = "
          f"{fmt(ratio(sr[-1], sr[0]), '.2f')}); the file holds {fmt(file_per_msg, '.0f')} "
          "bytes of database a message (compaction keeps tombstone_ttl_s: nothing is old "
          "enough to go within a benchmark)")

    print("\n" + "=" * 100)
    print("REPLAY: a run of N echo steps ending in wait_for_event (unfinished); median of "
          f"{args.replay_repeats} (ms)")
    print("  activation = new runtime.start() -> journal tail read -> run rebuilt -> handler "
          "re-executed -> reaches the wait")
    print("-" * 100)
    print(f"  {'N':>7}{'commits':>9}{'activation':>12}{'(load':>9}{'replay)':>9}"
          f"{'read_tail':>11}{'replay_commits':>16}{'read all':>10}{'build s':>9}{'target':>16}")
    for n, r in replay.items():
        target = (f"seed < {SEED_REPLAY_100_MS:.0f} ms" if n == 100 else
                  f"goal < {GOAL_REPLAY_10000_MS:.0f} ms" if n == 10_000 else "")
        print(f"  {n:>7}{r['commits']:>9}{r['activation_ms']:>12.1f}{r['load_ms']:>9.1f}"
              f"{r['handler_replay_ms']:>9.1f}{r['read_tail_ms']:>11.1f}"
              f"{r['replay_commits_ms']:>16.1f}{r['read_all_ms']:>10.1f}{r['build_s']:>9.1f}"
              f"   {target}")
    print("-" * 100)
    print(f"  replay 100 (activation)      = {r100['activation_ms']:7.1f} ms   seed < "
          f"{SEED_REPLAY_100_MS:.0f} ms: "
          f"{verdict(r100['activation_ms'], SEED_REPLAY_100_MS, at_most=True)}")
    print(f"  replay {big} (activation)   = {r10k['activation_ms']:7.1f} ms   goal < "
          f"{GOAL_REPLAY_10000_MS:.0f} ms: "
          f"{verdict(r10k['activation_ms'], GOAL_REPLAY_10000_MS, at_most=True)}")
    print(f"  replay {big}, an activity that may log (not contained: one commit a step, "
          f"{per_step['commits']} commits) = {per_step['activation_ms']:.1f} ms (load "
          f"{per_step['load_ms']:.1f}, handler {per_step['handler_replay_ms']:.1f})")
    print(f"  replay_commits {big}        = {r10k['replay_commits_ms']:7.1f} ms   goal < "
          f"{GOAL_REPLAY_10000_MS:.0f} ms: "
          f"{verdict(r10k['replay_commits_ms'], GOAL_REPLAY_10000_MS, at_most=True)}  "
          f"(+ {r10k['read_all_ms']:.1f} ms to read the commits)")
    print(f"  per step: activation {r10k['activation_ms'] * 1000 / big:.1f} us, "
          f"replay_commits {r10k['replay_commits_ms'] * 1000 / big:.1f} us;  building the "
          f"{big}-step journal live (synchronous=NORMAL): "
          f"{big / r10k['build_s']:.0f} steps/s")
    bd = r10k["breakdown_ms"]
    if r10k.get("activation_gc_off_ms") is not None:
        print(f"  {big}-step activation with the cyclic GC switched off: "
              f"{r10k['activation_gc_off_ms']:.1f} ms (vs {r10k['activation_ms']:.1f} ms with "
              f"it on; {r10k['full_gc_runs']:.0f} full collections per recovery)")
    print(f"  {big}-step recovery pieces, timed alone: SQLite read of {bd['docs']} commit rows "
          f"{bd['sqlite_fetch_ms']:.1f} ms, from_json of each ({bd['doc_bytes_avg']:.0f} B avg) "
          f"{bd['from_json_ms']:.1f} ms (GC off: {bd['from_json_gc_off_ms']:.1f} ms; "
          f"{bd['full_gc_runs_during_decode']} full collections of a "
          f"{bd['heap_objects'] / 1e6:.2f} M-object heap), step digests {bd['digest_ms']:.1f} ms")
    for n, r in replay.items():
        for key, what in (("profile", "activation replay"),
                          ("replay_commits_profile", "replay_commits")):
            if r.get(key):
                print(f"\n  cProfile, {what} of {n} steps (top by own time):")
                for line in r[key]:
                    print("    " + line)

    print("\n" + "=" * 100)
    print(f"ACTIVATION: actor with {act['state_bytes'] / 1024:.1f} KB of state, "
          f"{act['commits']} commits ({act['tail_commits']} read on activation); trivial handler, "
          "no activity (ms)")
    print("-" * 100)
    print(f"  cold (new runtime + journal connection, first ask)   median "
          f"{act['cold_ms']:7.2f}   ({args.activation_samples} samples, min "
          f"{min(act['cold_samples_ms']):.2f})")
    print(f"  warm (same actor, next ask)                          median "
          f"{act['warm_ms']:7.2f}   (p90 {act['warm_p90_ms']:.2f})")
    print(f"  activation overhead (cold - warm) = {act['cold_ms'] - act['warm_ms']:.2f} ms; "
          f"new journal + runtime + start(): {act['runtime_start_ms']:.2f} ms (not included); "
          f"each commit writes {act['commit_doc_bytes'] / 1024:.1f} KB (whole state)")
    print(f"  a warm ask waits for {act['warm_transactions_per_ask']:.1f} durable SQLite "
          f"transactions (enqueue, commit, consume): {act['warm_commit_ms_per_ask']:.2f} ms "
          "of it inside the group commit")
    print(f"  with state deltas (LOOM_STATE_DELTAS=1): cold {act_delta['cold_ms']:.2f}, warm "
          f"{act_delta['warm_ms']:.2f} ms; {act_delta['tail_commits']} commits read on "
          f"activation; the last commit writes {act_delta['commit_doc_bytes']} bytes")

    print("\n" + "=" * 100)
    full, dlt = sizes["full"], sizes["delta"]
    print(f"COMMIT SIZE: {full['messages']} messages to one actor with "
          f"{full['state_bytes'] / 1024:.1f} KB of state, one field changing per message")
    print("-" * 100)
    print(f"  {'':<14}{'bytes/commit':>14}{'max':>9}{'delta median':>14}{'snapshots':>11}"
          f"{'Cosmos item B':>15}{'Cosmos docs/msg':>17}{'disk KiB/msg':>14}{'cold ms':>9}"
          f"{'warm ms':>9}{'tail':>6}")
    for label, r in (("whole state", full), ("deltas", dlt)):
        med = r["delta_commit_bytes_median"]
        print(f"  {label:<14}{r['bytes_per_commit']:>14.0f}{r['bytes_per_commit_max']:>9}"
              f"{fmt(med, '.0f'):>14}{r['snapshots']:>11}"
              f"{r['cosmos_item_bytes_per_commit']:>15.0f}{r['cosmos_documents_per_msg']:>17.2f}"
              f"{fmt(per(r['disk_bytes_per_msg'], 1024), '.1f'):>14}{r['cold_ms']:>9.2f}"
              f"{r['warm_ms']:>9.2f}{r['tail_commits']:>6.0f}")
    print("-" * 100)
    print(f"  bytes per commit with deltas = {dlt['bytes_per_commit']:.0f}   goal <= "
          f"{COMMIT_SIZE_GOAL}: "
          f"{verdict(dlt['bytes_per_commit'], COMMIT_SIZE_GOAL, at_most=True)}   (whole state: "
          f"{full['bytes_per_commit']:.0f}; a snapshot every <= 64 commits or when the deltas "
          "since outweigh it)")
    print("  Cosmos documents per message = inbox entry + schedule row + commit (+ blobs of "
          "values too large for an item: none at this size)")
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if load_end is not None and (max(load_start, load_end) > (os.cpu_count() or 1)):
        print(f"\nNOTE: the machine was busy (1-min load average {load_start:.1f} at the start, "
              f"{load_end:.1f} at the end, {os.cpu_count()} CPUs): numbers are noisy")

    result: dict[str, Any] = {
        "msgs_per_s": r3(msgs),
        "dbos_msgs_per_s": r3(dbos_best),
        **{f"replay_{n}_ms": r3(r["activation_ms"]) for n, r in replay.items()},
        f"replay_{replay_sizes[1]}_one_commit_a_step_ms": r3(per_step["activation_ms"]),
        f"replay_{replay_sizes[1]}_one_commit_a_step_commits": per_step["commits"],
        "activation_cold_ms": r3(act["cold_ms"]),
        "activation_warm_ms": r3(act["warm_ms"]),
        # extras
        "msgs_per_s_median": r3(statistics.median(r["msgs_per_s"] for r in lr)),
        "msgs_per_s_rounds": [r3(r["msgs_per_s"]) for r in lr],
        "msgs_per_s_sustained_rounds": [r3(r["msgs_per_s"]) for r in tp["sustained_rounds"]],
        "journal_file_bytes_per_msg": r3(file_per_msg),
        "msgs_per_s_memory": r3(msgs_mem),
        "ratio_vs_dbos": r3(vs_dbos),
        "dbos_mode": dbos_mode,
        "dbos_threads_msgs_per_s": r3(best_mode.get("threads")),
        "dbos_async_msgs_per_s": r3(best_mode.get("async")),
        "dbos_rounds_msgs_per_s": {m: [r3(r["msgs_per_s"]) for r in rs] for m, rs in dr.items()},
        "dbos_error": tp["dbos_error"] if dbos_best is None else None,
        "dbos_system_db": (None if not tp.get("dbos_journal_mode") else
                           f"sqlite {tp['dbos_journal_mode']} synchronous="
                           f"{tp['dbos_synchronous']}"),
        "dbos_workflows_recorded": tp.get("dbos_workflows_recorded"),
        "journal": f"sqlite {tp['journal_mode']} synchronous={tp['synchronous']}",
        "sqlite_transactions_per_msg": r3(tx_per_msg),
        "journal_writes_per_msg": r3(writes_per_msg),
        "writes_per_transaction": r3(writes_per_tx),
        "writer_in_group_commit_pct": r3(None if flush_share is None
                                         else flush_share * 100),
        "loop_thread_cpu_pct": r3(None if loop_cpu_share is None else loop_cpu_share * 100),
        "loop_in_group_commit_pct": r3(None if loop_commit_share is None
                                       else loop_commit_share * 100),
        "loop_group_commit_ms_per_transaction": r3(loop_commit_ms_per_tx),
        "group_commit_ms_per_transaction": r3(flush_ms_per_tx),
        "disk_bytes_per_msg": r3(loom_disk_per_msg),
        "dbos_disk_bytes_per_msg": r3(dbos_disk_per_msg),
        "ratio_durable_vs_memory": r3(ratio(msgs, msgs_mem)),
        **{f"replay_commits_{n}_ms": r3(r["replay_commits_ms"]) for n, r in replay.items()},
        "replay_detail": {str(n): {k: rounded(v) for k, v in r.items()}
                          for n, r in replay.items()},
        "activation_overhead_ms": r3(act["cold_ms"] - act["warm_ms"]),
        "activation_runtime_start_ms": r3(act["runtime_start_ms"]),
        "activation_state_bytes": act["state_bytes"],
        "activation_commit_doc_bytes": act["commit_doc_bytes"],
        "activation_journal_commits": act["commits"],
        "activation_warm_transactions_per_ask": r3(act["warm_transactions_per_ask"]),
        "activation_warm_commit_ms_per_ask": r3(act["warm_commit_ms_per_ask"]),
        "activation_cold_samples_ms": [r3(x) for x in act["cold_samples_ms"]],
        "activation_deltas_cold_ms": r3(act_delta["cold_ms"]),
        "activation_deltas_warm_ms": r3(act_delta["warm_ms"]),
        "commit_bytes_full": r3(sizes["full"]["bytes_per_commit"]),
        "commit_bytes_delta": r3(sizes["delta"]["bytes_per_commit"]),
        "cosmos_item_bytes_full": r3(sizes["full"]["cosmos_item_bytes_per_commit"]),
        "cosmos_item_bytes_delta": r3(sizes["delta"]["cosmos_item_bytes_per_commit"]),
        "cosmos_documents_per_msg_full": r3(sizes["full"]["cosmos_documents_per_msg"]),
        "cosmos_documents_per_msg_delta": r3(sizes["delta"]["cosmos_documents_per_msg"]),
        "commit_size_detail": {k: {kk: rounded(vv) for kk, vv in v.items()}
                               for k, v in sizes.items()},
        "goal_commit_bytes": COMMIT_SIZE_GOAL,
        "goal_commit_bytes_met": sizes["delta"]["bytes_per_commit"] <= COMMIT_SIZE_GOAL,
        "goal_msgs_per_s": GOAL_MSGS_PER_S,
        "seed_msgs_per_s": SEED_MSGS_PER_S,
        "goal_replay_10000_ms": GOAL_REPLAY_10000_MS,
        "seed_replay_100_ms": SEED_REPLAY_100_MS,
        "seed_msgs_met": msgs > SEED_MSGS_PER_S,
        "goal_msgs_met": msgs >= GOAL_MSGS_PER_S,
        "seed_replay_100_met": r100["activation_ms"] < SEED_REPLAY_100_MS,
        "goal_replay_10000_met": (r10k["activation_ms"] < GOAL_REPLAY_10000_MS
                                  if big == 10_000 else None),
        "goal_replay_commits_10000_met": (r10k["replay_commits_ms"] < GOAL_REPLAY_10000_MS
                                          if big == 10_000 else None),
        "messages": args.messages // args.actors * args.actors,
        "actors": args.actors,
        "activity_threads": args.activity_threads,
        "rounds": args.rounds,
        "payload_bytes": PAYLOAD_BYTES,
        "quick": args.quick,
        "bench_seconds": round(elapsed, 1),
        "loadavg_start": r3(load_start),
        "loadavg_end": r3(load_end),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
    }
    path = write_json(result)
    print(f"\nwrote {path.relative_to(ROOT)} (key \"actors\") in {elapsed:.0f} s total")
    return 0


if __name__ == "__main__":
    sys.exit(main())
