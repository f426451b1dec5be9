"""The chaos run of issue 9: a fleet of three `loom worker`s (LOOM_REDIS_URL, 12 partitions,
2 s leases) on one SQLite journal, the real HTTP receiver that logs every effect, and trials
of new orders with one random fault each:

    kill          SIGKILL a worker at a random moment (the harness starts a new one)
    stop          SIGSTOP a worker past its lease (3-4 s), then SIGCONT: it was fenced
    term          SIGTERM: the worker drains, exits 0 (the harness starts a new one)
    redis_restart redis-server killed and started again on the same port (empty)
    redis_wipe    FLUSHALL

Each trial must end with every order and ledger entry completed exactly once, each effect
key exactly once at the receiver (check_exactly_once, for the trial's orders), no inbox
entry unconsumed, the trial's ask answered with the durable result, no worker dead that
the harness did not kill, and the fleet settled again (our live workers holding every
partition, fair shares). A trial that errors counts as a failure. The workers are reused
from trial to trial; at the end the whole run is checked again, every order of every
trial at once, and a table of faults against outcomes is printed.

The table: `mid-run` counts trials whose fault struck while some of the trial's work was
unfinished (a SIGKILL/SIGSTOP/SIGTERM victim is mostly the owner of an unfinished actor);
`finish` is from the fault's start (a SIGSTOP's pause included) to every order of the
trial done; `settle` from then until the fleet holds every partition in fair shares again;
`re-sent keys` are requests repeated with a known Idempotency-Key (the receiver answered
them without a second effect); `done while frozen` counts SIGSTOP trials the other workers
finished while the victim was still stopped (they took its partitions past the lease; when
it woke it was fenced, and nothing ran twice).

LOOM_CHAOS_TRIALS=N (default 5, one of each fault) sets the count, LOOM_CHAOS_SEED the
seed; `make chaos TRIALS=200` runs the long version.
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fleet_harness import AskClient, Fleet, RedisProc, trial_view
from test_crash_recovery import (  # noqa: F401  (trial: a fixture)
    Trial,
    _completed,
    _effect_text,
    check_exactly_once,
    trial,
)

pytestmark = [pytest.mark.system, pytest.mark.integration]

FAULTS = ("kill", "stop", "term", "redis_restart", "redis_wipe")
TRIALS = int(os.environ.get("LOOM_CHAOS_TRIALS") or 5)
LEASE_TTL_S = 2.0
PARTITIONS = 12
# from the fault's start (a SIGSTOP's pause included) to every order done: TTL, the
# longest freeze and slack
FINISH_TIMEOUT_S = 30.0
SETTLE_TIMEOUT_S = 20.0  # from done to the fleet settled again
STOP_FOR_S = (3.0, 4.0)  # SIGSTOP longer than the 2 s lease
DRAIN_EXIT_S = 10.0


@pytest.fixture
def own_redis() -> Iterator[RedisProc]:
    server = RedisProc(db=3)
    server.start()
    try:
        yield server
    finally:
        server.close()


def _schedule(rng: random.Random, n: int) -> list[str]:
    """Every fault equally often: shuffled rounds of all five."""
    out: list[str] = []
    while len(out) < n:
        block = list(FAULTS)
        rng.shuffle(block)
        out += block
    return out[:n]


class Chaos:
    def __init__(self, t: Trial, redis: RedisProc, rng: random.Random) -> None:
        self.trial = t
        self.redis = redis
        self.rng = rng
        self.fleet = Fleet(t, {"LOOM_REDIS_URL": redis.url,
                                   "LOOM_LEASE_TTL_S": f"{LEASE_TTL_S:g}",
                                   "LOOM_PARTITIONS": str(PARTITIONS)})
        self.asks = AskClient(t.home / "loom.db")
        self.unfinished: Callable[[], list[str]] | None = None
        self.finished_frozen = False

    def note(self, text: str) -> None:
        self.trial.receiver.note(text)

    # -- faults ----------------------------------------------------------------------------
    def inject(self, fault: str, pending: list[str]) -> str:
        rng, fleet = self.rng, self.fleet
        if fault in ("kill", "stop", "term"):
            # mostly the owner of an unfinished actor of this trial, so the fault bites
            actors = [a for a in pending if "/" in a and not a.startswith("inbox")]
            rng.shuffle(actors)
            worker = None
            if actors and rng.random() < 0.85:
                worker = fleet.owner_of(self.redis.url, actors)
            worker = worker or fleet.pick(rng)
            pid = worker.proc.pid
            if fault == "kill":
                self.note(f"FAULT SIGKILL {pid}")
                fleet.expected_exits.add(pid)
                worker.proc.send_signal(signal.SIGKILL)
                worker.proc.wait(timeout=10)
                fleet.heal()
                return f"SIGKILL pid {pid}"
            if fault == "stop":
                pause = rng.uniform(*STOP_FOR_S)
                self.note(f"FAULT SIGSTOP {pid} for {pause:.2f}s")
                worker.proc.send_signal(signal.SIGSTOP)
                try:  # did the others take over and finish while it was frozen?
                    end = time.monotonic() + pause
                    while time.monotonic() < end:
                        if self.unfinished is not None and not self.unfinished():
                            self.finished_frozen = True
                        time.sleep(min(0.05, max(0.0, end - time.monotonic())))
                finally:
                    worker.proc.send_signal(signal.SIGCONT)
                self.note(f"SIGCONT {pid}")
                return f"SIGSTOP pid {pid} {pause:.2f}s"
            self.note(f"FAULT SIGTERM {pid}")
            fleet.expected_exits.add(pid)
            worker.proc.send_signal(signal.SIGTERM)
            code = worker.proc.wait(timeout=DRAIN_EXIT_S)
            assert code == 0, f"the drained worker {pid} exited with {code}"
            fleet.heal()
            return f"SIGTERM pid {pid}"
        if fault == "redis_restart":
            down = self.rng.uniform(0.0, 1.0)
            self.note(f"FAULT redis restart, down {down:.2f}s")
            self.redis.restart(down)
            return f"redis restart, down {down:.2f}s"
        assert fault == "redis_wipe", fault
        self.note("FAULT FLUSHALL")
        self.redis.flushall()
        return "redis FLUSHALL"

    # -- one trial -------------------------------------------------------------------------
    def run(self, index: int, fault: str) -> dict[str, Any]:
        rng, t = self.rng, self.trial
        self.note(f"== trial {index}: {fault}")
        orders: dict[str, dict[str, Any]] = {}
        seen = t.receiver.requests
        n = rng.randint(3, 6)
        asked = f"c{index}a"
        for j in range(n - 1):
            order = f"c{index}o{j}"
            t.enqueue(order, 1000 * index + j)
            orders[order] = t.orders[order]
        payload = {"base": t.receiver.base_url, "amount": 1000 * index + 99,
                   "to": f"addr-{asked}"}
        t.orders[asked] = orders[asked] = payload
        answer = self.asks.ask(f"order/{asked}", "place", payload, f"place-{asked}",
                               timeout=FINISH_TIMEOUT_S + 30)
        view = trial_view(t, orders)
        t0 = time.monotonic()
        if rng.random() < 0.4:  # anywhere: before, between or after the requests
            time.sleep(rng.uniform(0.0, 0.5))
        else:  # while requests are in flight
            deadline = time.monotonic() + 10
            while t.receiver.requests == seen and time.monotonic() < deadline:
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, 0.25))
        at = time.monotonic() - t0
        t_fault = time.monotonic()
        pending = view.pending()
        self.unfinished, self.finished_frozen = view.pending, False
        what = self.inject(fault, pending)
        deadline = time.monotonic() + FINISH_TIMEOUT_S
        while missing := view.pending():
            died = self.fleet.heal(wait=False)
            assert not died, "a worker died that the harness did not kill:\n" + "\n".join(died)
            assert time.monotonic() < deadline, (
                f"{missing} not completed within {FINISH_TIMEOUT_S} s of the fault")
            time.sleep(0.02)
        finish = time.monotonic() - t_fault
        summary = check_exactly_once(view)
        reply = answer.result(timeout=FINISH_TIMEOUT_S)
        done = _completed(t.commits(f"order/{asked}"), f"place-{asked}")
        assert reply == done[0]["result"], f"the ask got {reply!r}, the journal {done}"
        settle = self.fleet.wait_settled(self.redis.url, SETTLE_TIMEOUT_S)
        died = self.fleet.heal(wait=False)
        assert not died, "a worker died that the harness did not kill:\n" + "\n".join(died)
        return {"what": what, "at": at, "finish": finish, "settle": settle, "orders": n,
                "hit": bool(pending), "frozen_done": self.finished_frozen,
                "duplicates": len(summary["duplicates"])}

    def recover(self) -> None:
        """After a failed trial: bring the fleet back and let what is left finish, so the
        next trial starts clean (if it cannot, the next trial fails too)."""
        try:
            self.fleet.heal()
            deadline = time.monotonic() + 60
            while self.trial.pending() and time.monotonic() < deadline:
                self.fleet.heal(wait=False)
                time.sleep(0.1)
            self.fleet.wait_settled(self.redis.url, SETTLE_TIMEOUT_S)
        except Exception as exc:
            self.note(f"recovery failed: {exc!r}")

    def close(self) -> None:
        self.asks.close()


def _table(results: list[tuple[str, bool, dict[str, Any] | None]]) -> str:
    rows = [f"{'fault':<14}{'trials':>7}{'passed':>8}{'failed':>8}{'mid-run':>9}"
            f"{'median finish s':>17}{'max finish s':>14}{'median settle s':>17}"
            f"{'re-sent keys':>14}{'done while frozen':>19}"]
    for fault in (*FAULTS, "all"):
        mine = [r for r in results if fault in ("all", r[0])]
        if not mine:
            continue
        ok = [r[2] for r in mine if r[1] and r[2] is not None]
        fin = [r["finish"] for r in ok]
        settle = [r["settle"] for r in ok]
        dups = sum(r["duplicates"] for r in ok)
        hit = sum(r["hit"] for r in ok)
        frozen = sum(r["frozen_done"] for r in ok)
        rows.append(f"{fault:<14}{len(mine):>7}{len(ok):>8}{len(mine) - len(ok):>8}{hit:>9}"
                    f"{(statistics.median(fin) if fin else float('nan')):>17.2f}"
                    f"{(max(fin) if fin else float('nan')):>14.2f}"
                    f"{(statistics.median(settle) if settle else float('nan')):>17.2f}"
                    f"{dups:>14}{frozen:>19}")
    return "\n".join(rows)


# pytest-timeout's 300 s (pyproject) is for one trial's worth; a run gets its own budget
@pytest.mark.timeout(120 + TRIALS * (FINISH_TIMEOUT_S + SETTLE_TIMEOUT_S))
def test_a_fleet_under_random_faults_keeps_every_effect_exactly_once(
        trial: Trial, own_redis: RedisProc, tmp_path: Path) -> None:  # noqa: F811
    seed = int(os.environ.get("LOOM_CHAOS_SEED") or random.randrange(1 << 30))
    rng = random.Random(seed)
    print(f"\nchaos: {TRIALS} trials, seed {seed} (LOOM_CHAOS_SEED={seed} replays the "
          f"schedule; the timing is the machine's)")
    trial.receiver.delay_s = 0.08  # requests stay in flight long enough to be cut off
    own_redis.client().flushdb()
    chaos = Chaos(trial, own_redis, rng)
    results: list[tuple[str, bool, dict[str, Any] | None]] = []
    failures: list[str] = []
    t_start = time.monotonic()
    try:
        chaos.fleet.heal()
        chaos.fleet.wait_settled(own_redis.url, 30)
        for index, fault in enumerate(_schedule(rng, TRIALS)):
            try:
                out = chaos.run(index, fault)
                results.append((fault, True, out))
                if TRIALS <= 20 or index % 10 == 0:
                    print(f"trial {index:>4} {fault:<14} ok   {out['what']:<28} "
                          f"{'mid-run' if out['hit'] else 'idle   '} "
                          f"{'done-while-frozen ' if out['frozen_done'] else ''}"
                          f"at {out['at']:.2f}s finish {out['finish']:.2f}s "
                          f"settle {out['settle']:.2f}s", flush=True)
            except Exception as exc:
                results.append((fault, False, None))
                text = (f"trial {index} ({fault}) failed: {type(exc).__name__}: {exc}\n"
                        f"{traceback.format_exc(limit=3)}")
                failures.append(text)
                print(text, flush=True)
                chaos.recover()
        whole = check_exactly_once(trial)  # every trial's orders together, once more
    finally:
        chaos.close()
        (tmp_path / "timeline.txt").write_text("\n".join(trial.receiver.timeline))
        for worker in chaos.fleet.live():
            worker.proc.send_signal(signal.SIGTERM)
        for worker in chaos.fleet.live():
            try:
                worker.proc.wait(timeout=DRAIN_EXIT_S)
            except Exception:
                worker.kill()
    took = time.monotonic() - t_start
    print(f"\nchaos: {TRIALS} trials in {took:.1f}s, seed {seed}, {len(trial.orders)} orders, "
          f"{whole['effects']} effects, {len(whole['duplicates'])} re-sent keys absorbed, "
          f"{own_redis.restarts} redis restarts\n{_table(results)}")
    assert not failures, (f"{len(failures)} of {TRIALS} trials failed (seed {seed}):\n"
                          + "\n".join(failures) + f"\neffects:\n{_effect_text(trial.receiver)}")
