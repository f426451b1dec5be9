"""`make cluster`: a local fleet on the embedded profile.

A `redis-server` on a free loopback port (no persistence), three `loom worker` processes
sharing one SQLite journal in a temporary LOOM_HOME, and a small steady load sent from this
process (a client `ActorRuntime` that runs no actor: every ask crosses to the worker that
owns the actor's partition). Every few seconds it prints a compact `loom cluster status`.
Ctrl-C (or SIGTERM) stops the load, drains the workers (SIGTERM: they finish their turns
and hand their partitions over) and stops Redis.

    python -m runtime.demo.cluster [--workers 3] [--seconds N] [--kill-one] [--rate 20]

`--kill-one` SIGKILLs one worker midway: its leases expire (LOOM_LEASE_TTL_S, 3 s here)
and the others take its partitions; every message still completes.

The process helpers (`Fleet`, `start_redis`, `upload_activities`) are shared with
benchmarks/bench_cluster.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.demo.activities import BUILD
from runtime.journal.keyhash import Scope

ACTORS = Path(__file__).with_name("cluster_actors.py")
LOOM = Path(sys.executable).parent / "loom"
HOST = "127.0.0.1"
ITEMS = [{"sku": "tea", "qty": 2, "unit_cents": 450}, {"sku": "mug", "qty": 1, "unit_cents": 1200}]


def _die_with_parent() -> None:
    """In a child: SIGKILL when this process dies, so nothing outlives the demo; and its own
    session, so a Ctrl-C reaches only the demo, which then stops the children in order."""
    os.setsid()
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Redis:
    proc: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_redis(workdir: Path) -> Redis:
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server is not on PATH: run `make emulators-install`")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
         "--daemonize", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    deadline = time.monotonic() + 10
    while True:
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.2) as s:
            s.sendall(b"PING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                return Redis(proc, port)
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"redis-server did not start on port {port}")
        time.sleep(0.05)


def upload_activities(home: Path) -> None:
    """Publish the sample `price_order` (and `echo`) activities into LOOM_HOME's registry."""
    from runtime.executor import Executor
    from runtime.settings import load_settings

    missing = [n for n in ("price_order", "echo") if not (BUILD / f"{n}.wasm").exists()]
    if missing:
        raise SystemExit(f"{', '.join(missing)} not built: run `make activities`")
    settings = load_settings(home=home, blob_url="", journal_url="", cache_dir=None)
    with Executor(settings) as ex:
        for name in ("price_order", "echo"):
            manifest = json.loads((BUILD / f"{name}.manifest.json").read_text())
            ex.upload((BUILD / f"{name}.wasm").read_bytes(), manifest)


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    log_path: Path
    offset: int
    name: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    def ready(self) -> bool:
        with self.log_path.open("rb") as log:
            log.seek(self.offset)
            return b"loom worker: " in log.read()

    def alive(self) -> bool:
        return self.proc.poll() is None


@dataclass
class Fleet:
    """`loom worker` processes over one LOOM_HOME (one SQLite journal), optionally in a
    Redis fleet. `env` adds LOOM_* settings (LOOM_REDIS_URL, LOOM_LEASE_TTL_S, ...)."""

    home: Path
    env: dict[str, str]
    poll: float = 0.01
    workers: list[Worker] = field(default_factory=list)
    started: int = 0

    @property
    def db(self) -> Path:
        return self.home / "loom.db"

    def start(self, ready_timeout: float = 30.0) -> Worker:
        self.started += 1
        name = f"w{self.started}"
        log_path = self.home / f"worker-{name}.log"
        base = {k: v for k, v in os.environ.items() if not k.startswith("LOOM_")}
        base.update(LOOM_HOME=str(self.home), **self.env)
        with log_path.open("ab") as log:
            offset = log.tell()
            proc = subprocess.Popen(
                [str(LOOM), "worker", "--module", str(ACTORS), "--poll", str(self.poll),
                 "--log-level", "warning"],
                cwd=self.home, env=base, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        worker = Worker(proc, log_path, offset, name)
        self.workers.append(worker)
        deadline = time.monotonic() + ready_timeout
        while not worker.ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise SystemExit(f"worker {name} did not start (exit {proc.poll()}):\n{tail}")
            time.sleep(0.02)
        return worker

    def live(self) -> list[Worker]:
        return [w for w in self.workers if w.alive()]

    def kill(self, worker: Worker) -> None:
        if worker.alive():
            worker.proc.send_signal(signal.SIGKILL)
        worker.proc.wait(timeout=10)

    def stop(self, timeout: float = 20.0) -> dict[str, int | None]:
        """SIGTERM every live worker at once (each drains and hands its partitions over);
        SIGKILL what is still running after `timeout`. Returns each worker's exit code."""
        for w in self.live():
            w.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        codes: dict[str, int | None] = {}
        for w in self.workers:
            try:
                codes[w.name] = w.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.proc.kill()
                codes[w.name] = w.proc.wait()
        return codes

    def by_worker_id(self, worker_id: str | None) -> Worker | None:
        """The worker whose cluster id (`<host>-<pid>`) is `worker_id`."""
        if worker_id is None:
            return None
        pid = worker_id.rsplit("-", 1)[-1]
        return next((w for w in self.workers if str(w.pid) == pid), None)


def completed_runs(db: Path, prefix: str = "") -> int:
    """Runs completed in the journal (commits that end a run), of actors under `prefix`."""
    if not db.exists():
        return 0
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        row = con.execute("SELECT COUNT(*) FROM commits WHERE done_msg IS NOT NULL "
                          "AND actor LIKE ?", (prefix + "%",)).fetchone()
        return int(row[0])
    except sqlite3.OperationalError:  # the schema is not there yet
        return 0
    finally:
        con.close()


class NoActorsHere:
    """The ownership of a pure client: it runs no actor, so every ask is answered from the
    journal by whichever worker owns the actor's partition."""

    def partition(self, key: str) -> int:
        return 0

    def owns(self, key: str) -> bool:
        return False

    def scope(self) -> Scope:
        return Scope(1, frozenset())  # no partition: its due poll finds nothing to run

    def report(self, in_flight: int) -> None:
        pass

    def accepts(self, key: str, version: str) -> bool:
        return True


@contextlib.contextmanager
def client_runtime(db: Path, poll: float = 0.01, redis_url: str | None = None
                   ) -> Iterator[Any]:
    """A client `ActorRuntime` on the fleet's journal (enter with `async with`); with
    `redis_url`, workers tell it the moment an answer is durable (runtime/cluster/replies.py)."""
    from runtime.actors import ActorRuntime
    from runtime.cluster.replies import Replies
    from runtime.journal.sqlite import SqliteJournal

    journal = SqliteJournal(db)
    rt = ActorRuntime(journal, None, poll_interval_s=poll, ownership=NoActorsHere())
    if redis_url:
        import redis

        from runtime.cluster.delivery import StreamDelivery
        from runtime.cluster.partitions import ensure_partition_count
        count = ensure_partition_count(redis.Redis.from_url(redis_url), None)
        rt.replies = Replies(redis_url, rt.owner)
        rt.delivery = StreamDelivery(redis_url, count, rt.owner)
    yield rt


# -- status ----------------------------------------------------------------------------------


def status(url: str, ttl_ms: int, db: Path) -> dict[str, Any]:
    """`loom cluster status` (runtime/cluster/status.py) with the journal's view."""
    from runtime.cluster.status import JournalView, fleet_status, read_journal_view
    from runtime.journal.sqlite import SqliteJournal

    async def view() -> JournalView:
        journal = SqliteJournal(db)
        try:
            return await read_journal_view(journal)
        finally:
            await journal.close()

    return fleet_status(url, ttl_ms, asyncio.run(view()))


def summary(st: dict[str, Any], fleet: Fleet, t0: float, sent: int, asks: list[float]) -> str:
    names = {str(w.pid): w.name for w in fleet.workers}
    parts = []
    for w in st.get("workers", []):
        name = names.get(str(w["pid"]), w["id"])
        parts.append(f"{name}(pid {w['pid']}): {w['partitions']:>2}p {w['in_flight']} busy "
                     f"hb {w['heartbeat_age_ms'] or 0:>4}ms")
    due = st.get("due_actors_per_partition", {})
    due_text = " ".join(f"p{p}:{n}" for p, n in list(due.items())[:8]) or "none"
    if len(due) > 8:
        due_text += f" (+{len(due) - 8} partitions)"
    done = completed_runs(fleet.db)
    lat = sorted(asks)
    ask_text = (f"ask p50 {lat[len(lat) // 2] * 1000:.0f} ms" if lat else "no asks yet")
    return (f"[{time.monotonic() - t0:5.1f}s] workers {len(st.get('workers', []))}, "
            f"unowned {len(st.get('unowned', []))}/{st.get('partitions', '?')} | "
            + " | ".join(parts)
            + f"\n         due per partition: {due_text} | sent {sent}, runs completed {done}, "
            f"{ask_text}")


# -- the demo --------------------------------------------------------------------------------


async def load(db: Path, stop: asyncio.Event, rate: float, sent: list[int],
               asks: list[float]) -> None:
    """`rate` messages a second over 16 baskets (price_order) and 32 tallies (pure), one in
    ten an ask whose latency is kept."""
    with client_runtime(db) as rt:
        async with rt:
            pending: set[asyncio.Task[Any]] = set()

            async def ask(target: str, handler: str, payload: Any) -> None:
                t = time.monotonic()
                with contextlib.suppress(Exception):
                    await rt.ask(target, handler, payload, timeout=60)
                    asks.append(time.monotonic() - t)

            i = 0
            while not stop.is_set():
                target, handler, payload = (
                    (f"basket/b{i % 16}", "price", {"items": ITEMS, "discount_pct": i % 20})
                    if i % 2 else (f"tally/t{i % 32}", "add", {"n": i}))
                if i % 10 == 0:
                    task = asyncio.create_task(ask(target, handler, payload))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                else:
                    await rt.send(target, handler, payload)
                sent[0] += 1
                i += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1 / rate)
            for task in list(pending):
                task.cancel()


async def demo(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="loom-cluster-"))
    home = work / "home"
    home.mkdir()
    ttl_s = args.lease_ttl
    print(f"== Loom fleet demo: LOOM_HOME={home}")
    redis = start_redis(work)
    print(f"   redis-server on {redis.url} (no persistence)")
    upload_activities(home)
    print("   activities price_order and echo uploaded to the registry")
    env = {"LOOM_REDIS_URL": redis.url, "LOOM_LEASE_TTL_S": f"{ttl_s:g}",
           "LOOM_PARTITIONS": str(args.partitions)}
    fleet = Fleet(home, env)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    sent: list[int] = [0]
    asks: list[float] = []
    code = 0
    try:
        for _ in range(args.workers):
            w = await asyncio.to_thread(fleet.start)
            print(f"   worker {w.name} started (pid {w.pid})")
        print(f"   {args.workers} workers, {args.partitions} partitions, lease TTL {ttl_s:g} s; "
              f"load {args.rate:g} msg/s from this process; Ctrl-C stops everything\n")
        t0 = time.monotonic()
        load_task = asyncio.create_task(load(fleet.db, stop, args.rate, sent, asks))
        killed = False
        end = t0 + args.seconds if args.seconds else None
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.every)
            if stop.is_set():
                break
            try:
                st = await asyncio.to_thread(status, redis.url, int(ttl_s * 1000), fleet.db)
                print(summary(st, fleet, t0, sent[0], asks), flush=True)
            except Exception as exc:  # a status read can race a worker's start; keep going
                print(f"   (status unavailable: {exc})")
            now = time.monotonic()
            midway = (end - t0) / 2 if end else 10.0
            if args.kill_one and not killed and now - t0 >= midway and fleet.live():
                victim = fleet.live()[-1]
                fleet.kill(victim)
                killed = True
                print(f"   >> SIGKILL worker {victim.name} (pid {victim.pid}): its partitions "
                      f"move to the others when its leases expire (<= {ttl_s:g} s)", flush=True)
            if end is not None and now >= end:
                stop.set()
        print("\n== stopping: load first, then the workers drain (SIGTERM), then Redis")
        await load_task
        backlog_deadline = time.monotonic() + 15
        while time.monotonic() < backlog_deadline and completed_runs(fleet.db) < sent[0]:
            await asyncio.sleep(0.2)  # let the last messages finish before draining
        done = completed_runs(fleet.db)
        codes = await asyncio.to_thread(fleet.stop)
        print(f"   workers exited: {codes}")
        print(f"   sent {sent[0]} messages, {done} runs completed; "
              f"{len(asks)} asks answered" + (
                  f", p50 {sorted(asks)[len(asks) // 2] * 1000:.0f} ms" if asks else ""))
        if done < sent[0]:
            print(f"   WARNING: {sent[0] - done} messages not completed before the stop; "
                  "they stay in the journal and complete on the next start")
            code = 1
        bad = {n: c for n, c in codes.items() if c not in (0, -signal.SIGKILL)}
        if bad:
            print(f"   WARNING: workers exited abnormally: {bad}")
            code = 1
    finally:
        for w in fleet.live():
            w.proc.kill()
        redis.stop()
        print("   redis-server stopped")
        if args.keep:
            print(f"   kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return code


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m runtime.demo.cluster", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--partitions", type=int, default=12)
    p.add_argument("--seconds", type=float, default=0.0, help="stop after N seconds")
    p.add_argument("--kill-one", action="store_true", help="SIGKILL one worker midway")
    p.add_argument("--rate", type=float, default=20.0, help="messages a second")
    p.add_argument("--every", type=float, default=3.0, help="status every N seconds")
    p.add_argument("--lease-ttl", type=float, default=3.0, help="LOOM_LEASE_TTL_S")
    p.add_argument("--keep", action="store_true", help="keep the temporary LOOM_HOME")
    args = p.parse_args(argv)
    return asyncio.run(demo(args))


if __name__ == "__main__":
    raise SystemExit(main())
