"""Fleet mode, measured side by side in one run (`make bench`; `.loom/bench.json` key
"cluster"). Real `loom worker` processes on one SQLite journal (the embedded profile) and a
real `redis-server`; the actor is `tally.add` (runtime/demo/cluster_actors.py), a pure step,
so the figures are the runtime's, the journal's and the fleet's, not an activity's.

1. Throughput of one worker, single-process mode (no LOOM_REDIS_URL) vs fleet mode, on
   the same journal file. Goal: fleet >= 0.8x single.
2. Throughput with 1, 2 and 3 workers in the fleet.
3. An ask that crosses processes: this process is a pure client (it runs no actor), the
   actor runs in whichever worker owns its partition. p50/p99 of `ActorRuntime.ask`, and
   of "enqueue to outcome visible in the journal" (polled every 2 ms: the fleet's own part,
   without the client's 50 ms-doubling outcome poll).
4. Failover with LOOM_LEASE_TTL_S=2: an actor with a backlog, its partition owner
   SIGKILLed mid-run; time from the kill to the first commit of that actor by the
   successor, over several repetitions. Goal: p99 < TTL + 1 s = 3 s.

Throughput method: a backlog of N messages over A actors is enqueued with a common
`deliver_at` a little in the future, so every worker starts on it at the same moment and
enqueueing does not compete with processing; the rate is taken between 10 % and 90 % of
the runs completed (counted in the journal), leaving out start-up and the tail.

Set BENCH_CLUSTER_QUICK=1 for a smaller, faster run.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_io import fmt, ratio, verdict, write_section

from runtime.cluster.balance import fair_share
from runtime.cluster.partitions import partition_of
from runtime.cluster.status import fleet_status
from runtime.demo.cluster import (
    Fleet,
    client_runtime,
    completed_runs,
    start_redis,
    upload_activities,
)
from runtime.journal.sqlite import SqliteJournal

QUICK = os.environ.get("BENCH_CLUSTER_QUICK") == "1"
PARTITIONS = 32
ACTORS = 64
N_MSGS = 4000 if QUICK else 12_000
ASKS = 60 if QUICK else 150
FAILOVERS = 3 if QUICK else 6
FAILOVER_TTL_S = 2.0
THROUGHPUT_TTL_S = 10.0
CPUS = os.cpu_count() or 1


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def commits_of(db: Path, actor: str) -> int:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return int(con.execute("SELECT COUNT(*) FROM commits WHERE actor=?",
                               (actor,)).fetchone()[0])
    finally:
        con.close()


async def enqueue_backlog(db: Path, prefix: str, n: int, actors: int) -> float:
    """N `tally.add` messages over `actors` actors, all due at one moment a little ahead
    (so enqueueing is over before the workers see any). Returns that moment (time.time)."""
    journal = SqliteJournal(db)
    try:
        go = time.time() + 0.5 + n / 10_000
        for start in range(0, n, 500):  # concurrent enqueues share the journal's group commits
            await asyncio.gather(*[journal.enqueue(
                {"id": f"{prefix}-{i}", "target": f"tally/{prefix}{i % actors}", "kind": "call",
                 "handler": "add", "payload": {"n": 1}, "deliver_at": go})
                for i in range(start, min(n, start + 500))])
        if time.time() > go:
            print(f"  (warning: enqueueing {n} took past the start time by "
                  f"{time.time() - go:.2f} s)")
        return go
    finally:
        await journal.close()


def measure_rate(db: Path, prefix: str, n: int, go: float, timeout: float = 120.0) -> float:
    """Runs a second between 10 % and 90 % of `n` completed (runs of actors under prefix)."""
    lo, hi = max(1, n // 10), n - n // 10
    t_lo = t_hi = None
    deadline = time.monotonic() + timeout
    while time.time() < go:
        time.sleep(0.01)
    while t_hi is None:
        done = completed_runs(db, f"tally/{prefix}")
        now = time.monotonic()
        if t_lo is None and done >= lo:
            t_lo, d_lo = now, done
        if done >= hi:
            t_hi, d_hi = now, done
        if now > deadline:
            raise SystemExit(f"{prefix}: only {done}/{n} runs completed in {timeout:.0f} s")
        time.sleep(0.02)
    assert t_lo is not None
    return (d_hi - d_lo) / max(t_hi - t_lo, 1e-6)


def wait_balanced(url: str, ttl_ms: int, n: int, timeout: float = 30.0) -> dict[str, Any]:
    want = sorted(fair_share([f"w{i}" for i in range(n)], PARTITIONS).values())
    deadline = time.monotonic() + timeout
    while True:
        st = fleet_status(url, ttl_ms)
        got = sorted(w["partitions"] for w in st.get("workers", []))
        if got == want and not st.get("unowned"):
            return st
        if time.monotonic() > deadline:
            raise SystemExit(f"the fleet never balanced to {want}: {got}, "
                             f"{len(st.get('unowned', []))} unowned")
        time.sleep(0.1)


def throughput(home: Path, env: dict[str, str], workers: int, label: str) -> float:
    fleet = Fleet(home, env)
    try:
        for _ in range(workers):
            fleet.start()
        if "LOOM_REDIS_URL" in env:
            wait_balanced(env["LOOM_REDIS_URL"], int(float(env["LOOM_LEASE_TTL_S"]) * 1000),
                          workers)
        prefix = f"{label}-{uuid.uuid4().hex[:6]}-"
        go = asyncio.run(enqueue_backlog(fleet.db, prefix, N_MSGS, ACTORS))
        rate = measure_rate(fleet.db, prefix, N_MSGS, go)
        print(f"  {label:<24} {rate:7.0f} runs/s  ({N_MSGS} messages over {ACTORS} actors)",
              flush=True)
        return rate
    finally:
        codes = fleet.stop()
        bad = {k: v for k, v in codes.items() if v != 0}
        if bad:
            print(f"  (warning: workers exited with {bad})")


async def ask_times(db: Path, n: int, redis_url: str | None) -> list[float]:
    """`rt.ask` from a pure client: answered by its journal poll alone, or (`redis_url`) at
    once when the worker's note arrives (runtime/cluster/replies.py)."""
    asks: list[float] = []
    with client_runtime(db, redis_url=redis_url) as rt:
        async with rt:
            for i in range(5):  # warm the actors up (first activation loads them)
                await rt.ask(f"tally/ask{i % 16}", "add", {"n": 0}, timeout=30)
            for i in range(n):
                t = time.monotonic()
                await rt.ask(f"tally/ask{i % 16}", "add", {"n": 1}, timeout=30)
                asks.append(time.monotonic() - t)
    return asks


async def cross_asks(db: Path, n: int, redis_url: str
                     ) -> tuple[list[float], list[float], list[float]]:
    """p50/p99 inputs: asks polled, asks noted, and enqueue -> outcome visible (2 ms poll)."""
    polled = await ask_times(db, n, None)
    asks = await ask_times(db, n, redis_url)
    visible: list[float] = []
    with client_runtime(db) as rt:
        async with rt:
            journal = rt.journal
            for i in range(n):
                target, msg = f"tally/ask{i % 16}", f"vis-{uuid.uuid4().hex}"
                t = time.monotonic()
                await journal.enqueue({"id": msg, "target": target, "kind": "call",
                                       "handler": "add", "payload": {"n": 1},
                                       "deliver_at": 0.0})
                while await journal.outcome(target, msg) is None:
                    await asyncio.sleep(0.002)
                    if time.monotonic() - t > 30:
                        raise SystemExit(f"no outcome for {msg} in 30 s")
                visible.append(time.monotonic() - t)
    return polled, asks, visible


def failover(home: Path, url: str) -> list[float]:
    """Kill the owner of a busy actor's partition; time to the successor's first commit."""
    env = {"LOOM_REDIS_URL": url, "LOOM_LEASE_TTL_S": f"{FAILOVER_TTL_S:g}",
           "LOOM_PARTITIONS": str(PARTITIONS)}
    ttl_ms = int(FAILOVER_TTL_S * 1000)
    fleet = Fleet(home, env)
    times: list[float] = []
    try:
        for _ in range(3):
            fleet.start()
        for rep in range(FAILOVERS):
            wait_balanced(url, ttl_ms, 3)
            actor = f"tally/fo{rep}-{uuid.uuid4().hex[:4]}"

            async def backlog(actor: str = actor) -> None:
                journal = SqliteJournal(fleet.db)
                try:
                    for i in range(600):
                        await journal.enqueue({"id": f"{actor}-{i}", "target": actor,
                                               "kind": "call", "handler": "add",
                                               "payload": {"n": 1}, "deliver_at": 0.0})
                finally:
                    await journal.close()

            asyncio.run(backlog())
            deadline = time.monotonic() + 20
            while commits_of(fleet.db, actor) < 5:  # its owner is running it
                if time.monotonic() > deadline:
                    raise SystemExit(f"{actor} never started")
                time.sleep(0.005)
            owner = fleet_status(url, ttl_ms)["owners"].get(partition_of(actor, PARTITIONS))
            victim = fleet.by_worker_id(owner["worker"] if owner else None)
            if victim is None:
                raise SystemExit(f"no owner found for {actor}: {owner}")
            t_kill = time.monotonic()
            victim.proc.send_signal(signal.SIGKILL)
            victim.proc.wait(timeout=10)
            before = commits_of(fleet.db, actor)  # the victim commits nothing after this
            deadline = time.monotonic() + 30
            while commits_of(fleet.db, actor) == before:
                if time.monotonic() > deadline:
                    raise SystemExit(f"no successor committed {actor} within 30 s")
                time.sleep(0.005)
            took = time.monotonic() - t_kill
            times.append(took)
            print(f"  failover {rep + 1}/{FAILOVERS}: killed {victim.name}, successor's first "
                  f"commit after {took * 1000:.0f} ms", flush=True)
            fleet.start()  # the harness replaces the dead worker
    finally:
        fleet.stop()
    return times


def main() -> int:
    t_start = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="loom-bench-cluster-"))
    home = work / "home"
    home.mkdir()
    redis = start_redis(work)
    result: dict[str, Any] = {}
    try:
        upload_activities(home)
        fleet_env = {"LOOM_REDIS_URL": redis.url.rsplit("/", 1)[0] + "/1",
                     "LOOM_LEASE_TTL_S": f"{THROUGHPUT_TTL_S:g}",
                     "LOOM_PARTITIONS": str(PARTITIONS)}
        print(f"bench_cluster: {CPUS} CPU(s), one SQLite journal, redis-server, "
              f"{PARTITIONS} partitions{' (quick)' if QUICK else ''}")
        print("throughput (runs/s, tally.add, pure step):")
        single = [throughput(home, {}, 1, "single-process, 1 worker")]
        fleet1 = [throughput(home, fleet_env, 1, "fleet, 1 worker")]
        single.append(throughput(home, {}, 1, "single-process, 1 worker"))
        fleet1.append(throughput(home, fleet_env, 1, "fleet, 1 worker"))
        fleet2 = throughput(home, fleet_env, 2, "fleet, 2 workers")
        fleet3 = throughput(home, fleet_env, 3, "fleet, 3 workers")
        s, f1 = statistics.mean(single), statistics.mean(fleet1)

        print("cross-process ask (client process -> actor in a worker of a 3-worker fleet):")
        fleet = Fleet(home, fleet_env)
        try:
            for _ in range(3):
                fleet.start()
            wait_balanced(fleet_env["LOOM_REDIS_URL"], int(THROUGHPUT_TTL_S * 1000), 3)
            polled, asks, visible = asyncio.run(cross_asks(fleet.db, ASKS,
                                                           fleet_env["LOOM_REDIS_URL"]))
        finally:
            fleet.stop()
        print(f"  rt.ask, journal poll only: p50 {pct(polled, 50) * 1000:6.1f} ms   "
              f"p99 {pct(polled, 99) * 1000:6.1f} ms  ({len(polled)} asks)")
        print(f"  rt.ask, reply note:        p50 {pct(asks, 50) * 1000:6.1f} ms   "
              f"p99 {pct(asks, 99) * 1000:6.1f} ms  ({len(asks)} asks)")
        print(f"  enqueue -> outcome visible: p50 {pct(visible, 50) * 1000:6.1f} ms   "
              f"p99 {pct(visible, 99) * 1000:6.1f} ms")

        print(f"failover (LOOM_LEASE_TTL_S={FAILOVER_TTL_S:g}, 3 workers, SIGKILL the owner):")
        fo = failover(home, redis.url.rsplit("/", 1)[0] + "/2")
        fo_p50, fo_p99 = pct(fo, 50), pct(fo, 99)
        goal_fo = FAILOVER_TTL_S + 1.0

        r = ratio(f1, s)
        result = {
            "cpus": CPUS, "partitions": PARTITIONS, "journal": "sqlite (one file)",
            "actor": "tally.add (pure step)", "messages_per_run": N_MSGS, "actors": ACTORS,
            "single_runs_per_s": single, "fleet1_runs_per_s": fleet1,
            "fleet_vs_single": r, "fleet_vs_single_goal": 0.8,
            "fleet_runs_per_s": {"1": f1, "2": fleet2, "3": fleet3},
            "scaling_2_vs_1": ratio(fleet2, f1), "scaling_3_vs_1": ratio(fleet3, f1),
            "ask_ms": {"p50": pct(asks, 50) * 1000, "p99": pct(asks, 99) * 1000,
                       "n": len(asks)},
            "ask_polled_ms": {"p50": pct(polled, 50) * 1000, "p99": pct(polled, 99) * 1000,
                              "n": len(polled)},
            "ask_visible_ms": {"p50": pct(visible, 50) * 1000,
                               "p99": pct(visible, 99) * 1000},
            "failover_lease_ttl_s": FAILOVER_TTL_S,
            "failover_s": {"p50": fo_p50, "p99": fo_p99, "all": fo, "goal_p99": goal_fo},
            "seconds": time.monotonic() - t_start,
        }
        path = write_section("cluster", result)
        print("\nsummary")
        print(f"  fleet / single, 1 worker:   {fmt(r, '.2f')}x  ({f1:.0f} vs {s:.0f} runs/s; "
              f"goal >= 0.8x: {verdict(r, 0.8, at_most=False)})")
        print(f"  2 workers / 1:              {fmt(ratio(fleet2, f1), '.2f')}x  "
              f"({fleet2:.0f} runs/s)")
        print(f"  3 workers / 1:              {fmt(ratio(fleet3, f1), '.2f')}x  "
              f"({fleet3:.0f} runs/s)")
        print(f"  cross-process ask:          p50 {result['ask_ms']['p50']:.1f} ms, "
              f"p99 {result['ask_ms']['p99']:.1f} ms (outcome visible: p50 "
              f"{result['ask_visible_ms']['p50']:.1f}, p99 {result['ask_visible_ms']['p99']:.1f})")
        print(f"  failover (TTL {FAILOVER_TTL_S:g} s):     p50 {fmt(fo_p50, '.2f')} s, p99 "
              f"{fmt(fo_p99, '.2f')} s (goal p99 < {goal_fo:g} s: "
              f"{verdict(fo_p99, goal_fo, at_most=True)})")
        print(f"  scaling on {CPUS} cores is bounded by one SQLite writer (every commit, "
              "enqueue and settle is a write transaction on one file), by one GIL per worker "
              "process, and by the CPU count (the workers, the client and redis share "
              f"{CPUS} cores)")
        print(f"  wrote {path} (key 'cluster'); {result['seconds']:.0f} s in all")
    finally:
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
