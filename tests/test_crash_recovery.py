"""Crash recovery, end to end: `loom worker` processes are SIGKILLed mid-flight (by the
runtime's own crash hooks, and from the outside at random moments) and restarted; every
visible effect must still happen exactly once.

The actors (tests/system_actors/payments.py) place orders: per order an HTTP charge, an
HTTP shipment and, behind the outbox, a ledger actor's HTTP ledger entry, all through the
real `http_post` wasm activity. The receiver below performs an effect at most once per
Idempotency-Key and logs every effect and every repeated key, so the assertions count real
effects (lines of the effect log), not distinct keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import http.server
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from runtime.actors.activation import key_base
from runtime.executor import Executor
from runtime.journal.sqlite import SqliteJournal
from runtime.settings import load_settings

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[1]
ACTORS = ROOT / "tests" / "system_actors" / "payments.py"
WASM = ROOT / "activities" / "build" / "http_post.wasm"
MANIFEST = ROOT / "activities" / "build" / "http_post.manifest.json"
LOOM = Path(sys.executable).parent / "loom"
HOST = "127.0.0.1"
ORDERS = 3
EFFECT_PATHS = ("/charge", "/ship", "/ledger")
PREFIX = {"/charge": "ch", "/ship": "sh", "/ledger": "le"}
KILL_POINTS = ("before_activity", "after_activity", "before_commit", "after_commit")
# Per trial the hooks are reached 3 times per order (two order activities + one ledger
# activity; two order commits + one ledger commit), so 1..9 all crash the first worker.
CRASH_AFTER = (1, 5, 9)
# A crash at these points loses the outcome of an activity that did run: its re-run must
# reach the receiver again with the same key.
RERUN_POINTS = {"after_activity", "before_commit"}
DONE_TIMEOUT_S = 30.0
DEATH_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0


# -- the receiver -----------------------------------------------------------------------------


class Receiver:
    """Effects at most once per Idempotency-Key, logged to `log_path` one line each:

        EFFECT    <path> <key> <body json> <response id>
        DUPLICATE <path> <key>               (a repeated key: the stored response, no effect)
        NOKEY     <path> -   <body json>     (no Idempotency-Key: performed, and a failure)
        CONFLICT  <path> <key> <body json>   (a known key for another path or body)
    """

    def __init__(self, log_path: Path, delay_s: float = 0.0) -> None:
        self.log_path = log_path
        self.delay_s = delay_s
        self.lock = threading.Lock()
        self.responses: dict[str, tuple[str, str, bytes]] = {}
        self.requests = 0
        self.effects = 0
        self.inflight = 0
        self.max_inflight = 0  # most requests being answered at the same time
        self.t0 = time.monotonic()
        self.timeline: list[str] = []  # every request and test event, with its time
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                with receiver.lock:
                    receiver.inflight += 1
                    receiver.max_inflight = max(receiver.max_inflight, receiver.inflight)
                try:
                    self._post()
                finally:
                    with receiver.lock:
                        receiver.inflight -= 1

            def _post(self) -> None:
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, body = receiver.handle(self.path, self.headers.get("Idempotency-Key"),
                                               data)
                if receiver.delay_s:
                    time.sleep(receiver.delay_s)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:  # the worker was killed while waiting for this response
                    receiver.note(f"response to {self.path} lost: the client is gone")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                # a worker SIGKILLed mid-request resets its connection: expected here
                receiver.note(f"connection error: {sys.exc_info()[1]!r}")

        self.httpd = Server((HOST, 0), Handler)
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://{HOST}:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def note(self, text: str) -> None:
        self.timeline.append(f"{time.monotonic() - self.t0:8.3f}  {text}")

    def _log(self, *fields: str) -> None:
        self.note(" ".join(fields[:3]))
        with self.log_path.open("a") as f:
            f.write("\t".join(fields) + "\n")

    def handle(self, path: str, key: str | None, data: bytes) -> tuple[int, bytes]:
        body = data.decode()
        with self.lock:
            self.requests += 1
            if key is not None and key in self.responses:
                seen_path, seen_body, response = self.responses[key]
                if (seen_path, seen_body) != (path, body):
                    self._log("CONFLICT", path, key, body)
                    return 409, b'{"error":"idempotency key reused for another request"}'
                self._log("DUPLICATE", path, key)
                return 200, response
            if path not in PREFIX:
                return 404, b'{"error":"no such effect"}'
            self.effects += 1
            order = json.loads(body).get("order", "?")
            ident = f"{PREFIX[path]}-{order}-{self.effects}"
            response = json.dumps({"id": ident, "path": path}).encode()
            if key is None:
                self._log("NOKEY", path, "-", body)
            else:
                self.responses[key] = (path, body, response)
                self._log("EFFECT", path, key, body, ident)
            return 200, response

    def lines(self) -> list[list[str]]:
        with self.lock:
            if not self.log_path.exists():
                return []
            return [line.split("\t") for line in self.log_path.read_text().splitlines()]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# -- workers ----------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child: get SIGKILL if the test process dies, so no worker outlives it."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class Worker:
    """One `loom worker` process for the payments module, logging to `log_path`."""

    def __init__(self, home: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        base = {k: v for k, v in os.environ.items() if not k.startswith("LOOM_")}
        base.update(LOOM_HOME=str(home), **(env or {}))
        with log_path.open("ab") as log:
            log.write(f"---- loom worker {env or ''}\n".encode())
            log.flush()
            self.log_offset = log.tell()
            self.proc = subprocess.Popen(
                [str(LOOM), "worker", "--module", str(ACTORS), "--poll", "0.01"],
                cwd=home, env=base, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)

    def wait_ready(self, timeout: float = DEATH_TIMEOUT_S) -> None:
        """Until the worker says it runs (its SIGTERM handler is installed by then)."""
        deadline = time.monotonic() + timeout
        while True:
            with self.log_path.open("rb") as log:
                log.seek(self.log_offset)
                if b"loom worker: " in log.read():
                    return
            assert self.proc.poll() is None, (
                f"the worker died (exit {self.proc.returncode}) before it was ready\n"
                f"{_tail(self.log_path)}")
            assert time.monotonic() < deadline, (
                f"the worker was not ready within {timeout} s\n{_tail(self.log_path)}")
            time.sleep(0.01)

    def wait_killed(self, timeout: float = DEATH_TIMEOUT_S) -> None:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the worker did not crash within {timeout} s\n{_tail(self.log_path)}")
        assert code == -signal.SIGKILL, (
            f"the worker exited with {code}, not by SIGKILL\n{_tail(self.log_path)}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM; the worker must exit 0 within STOP_TIMEOUT_S."""
        self.wait_ready()
        assert self.proc.poll() is None, (
            f"the worker died (exit {self.proc.returncode})\n{_tail(self.log_path)}")
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the worker ignored SIGTERM for {STOP_TIMEOUT_S} s\n"
                        f"{_tail(self.log_path)}")
        assert code == 0, f"the worker exited with {code} on SIGTERM\n{_tail(self.log_path)}"


# -- a trial ----------------------------------------------------------------------------------


@dataclass
class Trial:
    home: Path
    receiver: Receiver
    journal: SqliteJournal
    worker_log: Path
    orders: dict[str, dict[str, Any]]  # order id -> payload; message id is "place-<id>"
    workers: list[Worker]

    def enqueue(self, order: str, amount: int) -> None:
        payload = {"base": self.receiver.base_url, "amount": amount, "to": f"addr-{order}"}
        self.orders[order] = payload
        env = {"id": f"place-{order}", "target": f"order/{order}", "kind": "call",
               "handler": "place", "payload": payload, "deliver_at": 0.0}
        assert asyncio.run(self.journal.enqueue(env))

    def start_worker(self, **env: str) -> Worker:
        self.receiver.note(f"start worker {env or ''}")
        worker = Worker(self.home, self.worker_log, env)
        self.workers.append(worker)
        return worker

    def commits(self, actor: str) -> list[dict[str, Any]]:
        return asyncio.run(self.journal.read(actor))

    def pending(self) -> list[str]:
        """Orders or ledger entries not yet completed, and actors with unconsumed messages
        (a message whose run completed stays until it is consumed after the commit)."""
        missing = [f"inbox of {a}" for a in unconsumed(self.journal)]
        for order in self.orders:
            if not _completed(self.commits(f"order/{order}"), f"place-{order}"):
                missing.append(f"order/{order}")
            if not _completed(self.commits(f"ledger/{order}"), None):
                missing.append(f"ledger/{order}")
        return missing

    def wait_done(self, worker: Worker, timeout: float = DONE_TIMEOUT_S) -> float:
        t0 = time.monotonic()
        deadline = t0 + timeout
        missing = self.pending()
        while missing:
            if worker.proc.poll() is not None:
                pytest.fail(f"the worker died (exit {worker.proc.returncode}) with {missing} "
                            f"unfinished\n{_tail(self.worker_log)}")
            if time.monotonic() > deadline:
                pytest.fail(f"{missing} not completed within {timeout} s\n"
                            f"effect log:\n{_effect_text(self.receiver)}\n"
                            f"worker log:\n{_tail(self.worker_log)}")
            time.sleep(0.02)
            missing = self.pending()
        return time.monotonic() - t0


def _completed(commits: list[dict[str, Any]], msg: str | None) -> list[dict[str, Any]]:
    return [c for c in commits if c.get("kind") == "completed" and "state" in c
            and (msg is None or c.get("run", {}).get("msg") == msg)]


def _effect_text(receiver: Receiver) -> str:
    return "\n".join("  " + " ".join(line) for line in receiver.lines()) or "  (none)"


@pytest.fixture
def trial(tmp_path: Path) -> Iterator[Trial]:
    if not (WASM.exists() and MANIFEST.exists()):
        pytest.fail(f"{WASM.relative_to(ROOT)} is not built: "
                    "run `python activities/build.py http_post`")
    home = tmp_path / "home"
    home.mkdir()
    receiver = Receiver(tmp_path / "effects.log")
    manifest = json.loads(MANIFEST.read_text())
    manifest["capabilities"]["http"] = {
        "allow": [{"scheme": "http", "host": HOST, "port": receiver.port}],
        "allow_private": True}
    settings = load_settings(home=home, blob_url="", journal_url="", cache_dir=None)
    with Executor(settings) as executor:
        executor.upload(WASM.read_bytes(), manifest)
    journal = SqliteJournal(home / "loom.db")
    t = Trial(home, receiver, journal, tmp_path / "worker.log", {}, [])
    try:
        yield t
    finally:
        for worker in t.workers:
            if worker.proc.poll() is None:
                worker.kill()
        asyncio.run(journal.close())
        receiver.close()


# -- the checks -------------------------------------------------------------------------------


def check_exactly_once(t: Trial) -> dict[str, Any]:
    """Every order and ledger entry completed once with the expected result, every effect
    happened exactly once, the journals have no gaps, nothing is left in any inbox.
    Returns a summary of what the receiver saw."""
    lines = t.receiver.lines()
    log = _effect_text(t.receiver)
    bad = [line for line in lines if line[0] in ("NOKEY", "CONFLICT")]
    assert not bad, f"requests without a key or with a reused key:\n{log}"
    effects = [line for line in lines if line[0] == "EFFECT"]
    duplicates = [line for line in lines if line[0] == "DUPLICATE"]
    per_effect = Counter((path, json.loads(body)["order"]) for _, path, _, body, _ in effects)
    expected = {(path, order) for path in EFFECT_PATHS for order in t.orders}
    assert set(per_effect) == expected, f"missing or unexpected effects:\n{log}"
    assert all(n == 1 for n in per_effect.values()), f"an effect happened twice:\n{log}"
    assert len(effects) == len(expected)
    ident = {(path, json.loads(body)["order"]): i for _, path, _, body, i in effects}
    key_of = {(path, json.loads(body)["order"]): k for _, path, k, body, _ in effects}
    sent = {(path, json.loads(body)["order"]): json.loads(body) for _, path, _, body, _ in effects}
    effect_keys = {line[2] for line in effects}
    assert {line[2] for line in duplicates} <= effect_keys, log

    for order, payload in t.orders.items():
        commits = t.commits(f"order/{order}")
        assert [c["seq"] for c in commits] == list(range(len(commits))), \
            f"order/{order} journal has gaps: {[c['seq'] for c in commits]}"
        done = _completed(commits, f"place-{order}")
        assert len(done) == 1, f"order/{order} completed {len(done)} times"
        ledger_msg = f"order/{order}:place-{order}:2"
        assert done[0]["result"] == {"order": order, "charge": ident[("/charge", order)],
                                     "shipment": ident[("/ship", order)],
                                     "ledger_msg": ledger_msg}
        state = done[0]["state"]
        assert state["charge"]["id"] == ident[("/charge", order)]
        assert state["ship"]["id"] == ident[("/ship", order)]
        assert state["status"] == "placed"
        assert key_of[("/charge", order)] == f"order/{order}:place-{order}:0"
        assert key_of[("/ship", order)] == f"order/{order}:place-{order}:1"
        assert not [c for c in commits if c.get("kind") in ("failed", "rejected")]

        ledger = t.commits(f"ledger/{order}")
        assert [c["seq"] for c in ledger] == list(range(len(ledger))), \
            f"ledger/{order} journal has gaps: {[c['seq'] for c in ledger]}"
        done = _completed(ledger, ledger_msg)
        assert len(done) == 1, f"ledger/{order} completed {len(done)} times: {ledger}"
        assert len(_completed(ledger, None)) == 1
        assert done[0]["result"] == {"order": order, "entry": ident[("/ledger", order)]}
        assert done[0]["state"] == {"entries": [ident[("/ledger", order)]]}
        assert key_of[("/ledger", order)] == f"ledger/{order}:{key_base(ledger_msg)}:0"
        amount = payload["amount"]
        assert sent[("/charge", order)] == {"order": order, "amount": amount}
        assert sent[("/ship", order)] == {"order": order, "to": payload["to"]}
        assert sent[("/ledger", order)] == {"order": order, "amount": amount,
                                            "charge": ident[("/charge", order)]}

    left = unconsumed(t.journal)
    assert left == [], f"inbox entries left unconsumed for {left}"
    return {"effects": len(effects), "duplicates": [(line[1], line[2]) for line in duplicates]}


def unconsumed(journal: Any) -> list[str]:
    """Actors with inbox entries not consumed (read straight from the SQLite file)."""
    rows = journal._query("SELECT DISTINCT actor FROM inbox WHERE consumed_at IS NULL", ())
    return [r[0] for r in rows]


# -- the tests --------------------------------------------------------------------------------


@pytest.mark.parametrize("crash_after", CRASH_AFTER)
@pytest.mark.parametrize("point", KILL_POINTS)
def test_crash_hook_then_restart_gives_exactly_once_effects(
        trial: Trial, point: str, crash_after: int) -> None:
    for i in range(ORDERS):
        trial.enqueue(f"o{i}", 100 + i)
    t0 = time.monotonic()
    trial.start_worker(LOOM_CRASH_AT=point, LOOM_CRASH_AFTER=str(crash_after)).wait_killed()
    crashed_at = time.monotonic() - t0
    before = Counter(line[0] for line in trial.receiver.lines())
    worker = trial.start_worker()
    recovery = trial.wait_done(worker)
    worker.stop()
    summary = check_exactly_once(trial)
    print(f"\n{point} after={crash_after}: crash at {crashed_at:.2f}s with "
          f"{before['EFFECT']} effect(s) done; recovered in {recovery:.2f}s; "
          f"duplicates {summary['duplicates']}")
    if point in RERUN_POINTS:
        # the crashed step's activity ran; its re-run came back with the same key, and the
        # receiver (not luck) kept it from being a second effect
        assert summary["duplicates"], (
            f"no repeated request after a crash at {point}: the crashed step was not "
            f"re-run with its key\n{_effect_text(trial.receiver)}")


def _wait_for_request(trial: Trial, worker: Worker, seen: int, what: str) -> None:
    """Until the receiver got a request after the first `seen` (or nothing is left to do)."""
    deadline = time.monotonic() + DEATH_TIMEOUT_S
    while trial.receiver.requests == seen and trial.pending():
        assert worker.proc.poll() is None, (
            f"{what}: the worker died (exit {worker.proc.returncode})\n"
            f"{_tail(trial.worker_log)}")
        assert time.monotonic() < deadline, (
            f"{what}: no request within {DEATH_TIMEOUT_S} s\n{_tail(trial.worker_log)}")
        time.sleep(0.005)


def test_random_external_kills_while_orders_are_in_flight(trial: Trial) -> None:
    seed = random.randrange(1 << 30)
    print(f"\nseed {seed}")
    rng = random.Random(seed)
    trial.receiver.delay_s = 0.03  # keep requests in flight long enough to be cut off
    kills = 6
    n = 0
    for round_ in range(kills):
        for _ in range(2):  # more orders arrive while earlier ones are unfinished
            trial.enqueue(f"r{n}", 10 + n)
            n += 1
        worker = trial.start_worker()
        if rng.random() < 0.5:
            # anywhere from start-up through recovery and replay to live work
            time.sleep(rng.uniform(0.1, 0.8))
        else:
            # while requests are being answered: soon after this worker's first request
            _wait_for_request(trial, worker, trial.receiver.requests, f"round {round_}")
            time.sleep(rng.uniform(0.0, 0.15))
        trial.receiver.note("SIGKILL")
        worker.proc.send_signal(signal.SIGKILL)
        worker.wait_killed()
    worker = trial.start_worker()
    trial.wait_done(worker)
    worker.stop()
    print("\n".join(trial.receiver.timeline))
    summary = check_exactly_once(trial)
    print(f"random kills x{kills} (seed {seed}), {len(trial.orders)} orders: "
          f"{summary['effects']} effects, duplicates {summary['duplicates']}")


def test_sigterm_mid_flight_stops_cleanly_and_the_restart_finishes(trial: Trial) -> None:
    trial.receiver.delay_s = 0.05
    for i in range(ORDERS):
        trial.enqueue(f"t{i}", 50 + i)
    worker = trial.start_worker()
    _wait_for_request(trial, worker, 0, "first worker")
    time.sleep(0.06)
    trial.receiver.note("SIGTERM")
    worker.stop()  # exit 0 within STOP_TIMEOUT_S, with activities in flight
    assert trial.pending(), "everything finished before the SIGTERM: nothing was in flight"
    worker = trial.start_worker()
    trial.wait_done(worker)
    worker.stop()
    print("\n".join(trial.receiver.timeline))
    summary = check_exactly_once(trial)
    print(f"SIGTERM mid-flight: duplicates {summary['duplicates']}")


def test_activities_of_different_actors_run_concurrently(trial: Trial) -> None:
    """Four orders wait on a slow receiver: the worker has 8 activity threads, so their
    requests should overlap rather than queue behind each other."""
    trial.receiver.delay_s = 0.15
    for i in range(4):
        trial.enqueue(f"c{i}", i)
    worker = trial.start_worker()
    took = trial.wait_done(worker)
    worker.stop()
    check_exactly_once(trial)
    print(f"\n4 orders, 0.15 s per request: done in {took:.2f}s, "
          f"at most {trial.receiver.max_inflight} request(s) at a time")
    assert trial.receiver.max_inflight >= 2, (
        f"12 requests ran one at a time ({took:.2f} s)\n" + "\n".join(trial.receiver.timeline))


def test_two_workers_share_one_journal_without_running_an_actor_twice(trial: Trial) -> None:
    """Two `loom worker`s on one SQLite journal (issue "durable core", defect 1): every
    order runs in one of them only, so no effect is even attempted twice; then one worker
    is killed mid-flight and the other finishes its runs."""
    trial.receiver.delay_s = 0.01
    for i in range(12):
        trial.enqueue(f"w{i}", 100 + i)
    first, second = trial.start_worker(), trial.start_worker()
    trial.wait_done(first)
    summary = check_exactly_once(trial)
    assert summary["duplicates"] == [], summary  # nobody ran an order the other ran
    for i in range(12, 24):
        trial.enqueue(f"w{i}", 100 + i)
    _wait_for_request(trial, second, trial.receiver.requests, "the second batch")
    trial.receiver.note("SIGKILL the second worker")
    second.proc.send_signal(signal.SIGKILL)
    second.wait_killed()
    trial.wait_done(first)
    first.stop()
    summary = check_exactly_once(trial)
    print(f"two workers, one killed: {summary['effects']} effects, "
          f"duplicates {summary['duplicates']}")


def _fleet(url: str) -> dict[str, Any]:
    from runtime.cluster.status import fleet_status

    return fleet_status(url, 2000)


def _wait_for_fleet(url: str, shares: list[int], timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status = _fleet(url)
        got = sorted(w["partitions"] for w in status.get("workers", []))
        if got == sorted(shares) and not status["unowned"]:
            return status
        assert time.monotonic() < deadline, f"fleet never reached {shares}: {status}"
        time.sleep(0.1)


@pytest.mark.integration
def test_a_fleet_of_three_workers_shares_the_actors_and_takes_over_a_killed_one(
        trial: Trial, redis_server: Any) -> None:
    """Three `loom worker`s with LOOM_REDIS_URL split 12 partitions 4/4/4 and run only the
    actors of their partitions (no effect attempted twice); one is SIGKILLed mid-flight,
    the other two take its partitions (6/6) and finish every run, exactly once."""
    import redis

    url = redis_server.url.rsplit("/", 1)[0] + "/7"
    redis.Redis.from_url(url).flushdb()
    env = {"LOOM_REDIS_URL": url, "LOOM_LEASE_TTL_S": "2", "LOOM_PARTITIONS": "12"}
    trial.receiver.delay_s = 0.01
    workers = [trial.start_worker(**env) for _ in range(3)]
    for worker in workers:
        worker.wait_ready()
    _wait_for_fleet(url, [4, 4, 4])
    shown = subprocess.run([str(LOOM), "cluster", "status"], capture_output=True, text=True,
                           env={**os.environ, **env, "LOOM_HOME": str(trial.home)}, timeout=30)
    assert shown.returncode == 0, shown.stderr
    assert len(json.loads(shown.stdout)["workers"]) == 3
    for i in range(18):
        trial.enqueue(f"f{i}", 200 + i)
    trial.wait_done(workers[0])
    assert check_exactly_once(trial)["duplicates"] == []  # nobody ran another's actor
    for i in range(18, 36):
        trial.enqueue(f"f{i}", 200 + i)
    _wait_for_request(trial, workers[1], trial.receiver.requests, "the second batch")
    trial.receiver.note("SIGKILL worker 1")
    workers[1].proc.send_signal(signal.SIGKILL)
    workers[1].wait_killed()
    trial.wait_done(workers[0], timeout=40)
    _wait_for_fleet(url, [6, 6])
    workers[0].stop()
    workers[2].stop()
    summary = check_exactly_once(trial)
    print(f"fleet of 3, one killed: {summary['effects']} effects, "
          f"re-sent and absorbed: {len(summary['duplicates'])}")
