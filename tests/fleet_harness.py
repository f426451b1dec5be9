"""A fleet of `loom worker`s under faults, for tests/test_chaos_fleet.py.

- `RedisProc`: a redis-server of our own on a fixed port (no persistence), so it can be
  restarted on the same address or wiped without touching the session's `redis_server`.
- `Fleet`: N `loom worker --module payments` processes with LOOM_REDIS_URL, each with its
  own log; `heal()` replaces the dead ones; `settled()` says when Redis shows exactly the
  live ones holding every partition.
- `AskClient`: an `ActorRuntime` with no actor types of its own on a thread of its own,
  so the test can `ask` an order and get the answer from whichever worker ran it.
- `trial_view`: one trial's orders seen through the shared receiver and journal, so
  `check_exactly_once` checks a trial on its own while the fleet keeps running.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import redis
from servers import HOST, free_port
from test_crash_recovery import Receiver, Trial, Worker, _die_with_parent, _tail

from runtime.actors.runtime import ActorRuntime
from runtime.journal.sqlite import SqliteJournal

# -- our own redis-server ---------------------------------------------------------------------


class RedisProc:
    """redis-server on one port for its whole life: `restart()` kills it (SIGKILL, so it
    loses everything, as it keeps nothing on disk) and starts it again on the same port."""

    def __init__(self, db: int = 3) -> None:
        self.exe = shutil.which("redis-server") or "redis-server"
        self.dir = Path(tempfile.mkdtemp(prefix="loom-chaos-redis-"))
        self.log_path = self.dir / "redis.log"
        self.port = free_port()
        self.db = db
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/{self.db}"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)

    def start(self, timeout: float = 20.0) -> None:
        argv = [self.exe, "--port", str(self.port), "--bind", HOST, "--save", "",
                "--appendonly", "no", "--daemonize", "no", "--dir", str(self.dir)]
        deadline = time.monotonic() + timeout
        while True:
            with self.log_path.open("ab") as log:
                self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=subprocess.STDOUT, cwd=self.dir,
                                             preexec_fn=_die_with_parent)
            while self.proc.poll() is None and time.monotonic() < deadline:
                with contextlib.suppress(redis.RedisError, OSError):
                    c = self.client()
                    try:
                        if c.ping():
                            return
                    finally:
                        c.close()
                time.sleep(0.02)
            if self.proc.poll() is None:
                self.stop()
                raise RuntimeError(f"redis-server did not answer on {self.port}\n"
                                   f"{_tail(self.log_path)}")
            # exited: the port may still be in TIME_WAIT or taken for a moment; retry
            if time.monotonic() >= deadline:
                raise RuntimeError(f"redis-server could not start on {self.port}\n"
                                   f"{_tail(self.log_path)}")
            time.sleep(0.1)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)

    def restart(self, down_s: float = 0.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.restarts += 1
        self.start()

    def flushall(self) -> None:
        c = self.client()
        try:
            c.flushall()
        finally:
            c.close()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


# -- the fleet --------------------------------------------------------------------------------


class Fleet:
    """`size` workers of the trial's home, each logging to its own file. A worker that
    exits is not replaced behind the test's back: `heal()` does it, and says which died
    without being told to."""

    def __init__(self, trial: Trial, env: dict[str, str], size: int = 3) -> None:
        self.trial = trial
        self.env = env
        self.size = size
        self.workers: list[Worker] = []
        self.expected_exits: set[int] = set()  # pids we killed or stopped on purpose
        self.started = 0
        self.unexpected: list[str] = []  # "pid N exited with C" for deaths we did not cause

    def start_one(self) -> Worker:
        self.started += 1
        log = self.trial.worker_log.with_name(f"worker-{self.started}.log")
        self.trial.receiver.note(f"start worker #{self.started}")
        worker = Worker(self.trial.home, log, self.env)
        self.trial.workers.append(worker)  # the trial fixture kills what is left
        self.workers.append(worker)
        return worker

    def live(self) -> list[Worker]:
        return [w for w in self.workers if w.proc.poll() is None]

    def heal(self, wait: bool = True) -> list[str]:
        """Replace every dead worker; returns the deaths nobody asked for."""
        fresh: list[Worker] = []
        died: list[str] = []
        for w in list(self.workers):
            code = w.proc.poll()
            if code is None:
                continue
            self.workers.remove(w)
            if w.proc.pid not in self.expected_exits:
                died.append(f"worker pid {w.proc.pid} exited with {code}:\n{_tail(w.log_path)}")
        while len(self.workers) < self.size:
            fresh.append(self.start_one())
        if wait:
            for w in fresh:
                w.wait_ready()
        self.unexpected += died
        return died

    def pick(self, rng: random.Random) -> Worker:
        return rng.choice(self.live())

    def owner_of(self, url: str, actors: list[str]) -> Worker | None:
        """A live worker holding the partition of one of `actors`, if Redis says so."""
        from runtime.cluster.partitions import partition_of
        from runtime.cluster.status import fleet_status

        try:
            status = fleet_status(url, 2000)
        except (redis.RedisError, OSError):
            return None
        if not status.get("fleet"):
            return None
        by_id = {f"{socket.gethostname()}-{w.proc.pid}": w for w in self.live()}
        for actor in actors:
            owner = status["owners"].get(partition_of(actor, status["partitions"]), {})
            if owner.get("worker") in by_id:
                return by_id[owner["worker"]]
        return None

    def ids(self) -> set[str]:
        return {f"{socket.gethostname()}-{w.proc.pid}" for w in self.live()}

    def settled(self, url: str) -> tuple[bool, dict[str, Any]]:
        """Redis shows exactly our live workers, each holding a fair share, and no
        partition without an owner."""
        from runtime.cluster.status import fleet_status

        try:
            status = fleet_status(url, 2000)
        except (redis.RedisError, OSError) as exc:
            return False, {"error": repr(exc)}
        if not status.get("fleet"):
            return False, status
        ids = {w["id"] for w in status["workers"]}
        shares = sorted(w["partitions"] for w in status["workers"])
        n = len(ids)
        fair = n > 0 and shares[-1] - shares[0] <= 1 and sum(shares) == status["partitions"]
        ok = ids == self.ids() and not status["unowned"] and fair
        return ok, status

    def wait_settled(self, url: str, timeout: float) -> float:
        t0 = time.monotonic()
        while True:
            ok, status = self.settled(url)
            if ok:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"the fleet did not settle within {timeout} s: "
                                     f"{json.dumps(status, default=str)[:2000]}")
            self.heal(wait=False)
            time.sleep(0.05)


# -- asks from another process's point of view ------------------------------------------------


class AskClient:
    """An ActorRuntime that registers no actor type (it runs nothing), on its own thread
    and event loop: its asks are answered from the journal whichever worker runs them."""

    def __init__(self, db_path: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                       name="ask-client")
        self.thread.start()
        self.journal = SqliteJournal(db_path)
        self.runtime: ActorRuntime = self._call(self._start())

    async def _start(self) -> ActorRuntime:
        rt = ActorRuntime(self.journal, None, poll_interval_s=0.02, lease_ttl_s=2.0)
        await rt.start()
        return rt

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def ask(self, target: str, handler: str, payload: Any, msg_id: str,
            timeout: float) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(
            self.runtime.ask(target, handler, payload, msg_id=msg_id, timeout=timeout),
            self.loop)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._call(self.runtime.stop())
        with contextlib.suppress(Exception):
            self._call(self.journal.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


# -- one trial of many ------------------------------------------------------------------------


class ReceiverView:
    """The shared receiver's log restricted to some orders (by the actor in the key)."""

    def __init__(self, receiver: Receiver, orders: set[str]) -> None:
        self.receiver = receiver
        self.orders = orders

    def _mine(self, line: list[str]) -> bool:
        if line[0] in ("NOKEY", "CONFLICT"):
            return True  # always a failure: never filter it away
        actor = line[2].split(":", 1)[0]
        return actor.partition("/")[2] in self.orders

    def lines(self) -> list[list[str]]:
        return [line for line in self.receiver.lines() if self._mine(line)]


def trial_view(trial: Trial, orders: dict[str, dict[str, Any]]) -> Trial:
    """The trial seen through some orders only: `check_exactly_once` and `pending` on it
    check one trial on its own while the fleet, receiver and journal carry on."""
    return replace(trial, orders=orders,
                   receiver=ReceiverView(trial.receiver, set(orders)))  # type: ignore[arg-type]
