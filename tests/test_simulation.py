"""The durable core under faults: the real runtime, simulated processes and a virtual clock.

Every seed draws its own faults (crashes at journal calls and commit points, storage errors
before and after a write lands, killed and frozen processes, clock skew and steps, flaky
activities, evictions, 1-3 contending runtimes) and workload (payments that sleep, wait for
events that race their timeouts, fail and compensate, and message a ledger; asked by a
client with ids, or from inside a worker process with none, where runs start before their
entries are written). After the faults stop, the promises are checked (see
runtime/testing/simulation.py).

`make test` runs LOOM_SIM_SEEDS seeds (default below); `make simulate SEEDS=N` runs more,
and `make simulate SEED=n` replays one.
"""

from __future__ import annotations

import os
import random
from collections import Counter

import pytest
import sim_workload

from runtime.testing import Faults, Simulation
from runtime.testing.simulation import AskHere

SEEDS = int(os.environ.get("LOOM_SIM_SEEDS", "2000"))
FIRST = int(os.environ.get("LOOM_SIM_FIRST", "0"))
ONE = os.environ.get("LOOM_SIM_SEED")


def build(seed: int) -> Simulation:
    rng = random.Random(f"faults:{seed}")
    sim = Simulation(seed, Faults.chaos(rng) if seed % 10 else Faults(),
                     max_deliveries=3 if seed % 5 == 1 else 1_000_000)
    sim.register(sim_workload.Payment, sim_workload.Ledger)
    for name in ("charge", "refund", "ship", "ledger_write"):
        sim.activity(name)
    for name in ("quote", "risk"):
        sim.activity(name, contained=True)
    return sim


async def scenario(sim: Simulation) -> None:
    import asyncio

    rng = random.Random(f"work:{sim.seed}")
    asks = []
    for n in range(rng.randint(2, 6)):
        actor = f"payment/a{rng.randint(0, 2)}"
        confirm = rng.choice([None, None, 0.5, 3.0])
        payload = {"n": n, "amount": rng.randint(1, 100), "nap": rng.choice([0, 0, 0.3, 2.0]),
                   "confirm": confirm, "fail": rng.random() < 0.25}
        mid = f"m{n}"
        if rng.random() < 0.3:  # code in a worker process asks, with no id (the early path)
            asks.append(asyncio.ensure_future(sim.ask_here(actor, "pay", payload)))
        else:
            asks.append(asyncio.ensure_future(sim.ask(actor, "pay", payload, msg_id=mid)))
            if rng.random() < 0.3:  # a duplicate delivery of the same message
                asks.append(asyncio.ensure_future(sim.ask(actor, "pay", payload, msg_id=mid)))
        if confirm is not None:
            delay = rng.uniform(0, 4.0)  # races the wait's timeout
            asks.append(asyncio.ensure_future(_signal_later(sim, actor, delay, n)))
        if rng.random() < 0.15:  # an operator cancels whatever runs there at some point
            asks.append(asyncio.ensure_future(
                _cancel_later(sim, actor, rng.uniform(0, 3.0), f"cancel-{n}")))
        await sim.sleep(rng.uniform(0, 1.0))
    await asyncio.gather(*asks)
    # then, while the faults go on, asks from inside a worker process one after another: to
    # an actor idle there, each run starts before its entry is written
    for n in range(100, 100 + rng.randint(1, 4)):
        payload = {"n": n, "amount": rng.randint(1, 100), "nap": 0, "confirm": None,
                   "fail": rng.random() < 0.25}
        await sim.ask_here(f"payment/a{rng.randint(0, 2)}", rng.choice(["pay", "estimate"]),
                           payload)


async def _signal_later(sim: Simulation, actor: str, delay: float, n: int) -> None:
    await sim.sleep(delay)
    await sim.signal(actor, "confirm", {"n": n}, msg_id=f"confirm-{n}")


async def _cancel_later(sim: Simulation, actor: str, delay: float, mid: str) -> None:
    await sim.sleep(delay)
    await sim.cancel(actor, "operator", msg_id=mid)


def run_seed(seed: int) -> None:
    report = build(seed).run(scenario)
    report.raise_for_violations()


@pytest.mark.parametrize("block", range(max(1, SEEDS // 50)) if not ONE else [0])
def test_simulated_seeds_keep_every_promise(block: int) -> None:
    if ONE:
        run_seed(int(ONE))
        return
    for seed in range(FIRST + block * 50, FIRST + min(SEEDS, (block + 1) * 50)):
        run_seed(seed)


def test_a_seed_replays_the_same_history() -> None:
    first, second = build(11), build(11)
    a, b = first.run(scenario), second.run(scenario)
    assert a.stats["crashes"] > 0 and first.receiver.order  # faults and effects happened
    assert any(ask.answered for ask in first.asked_here)  # ids made up by the runtime too
    assert a.trace == b.trace and a.stats == b.stats
    assert first.receiver.order == second.receiver.order
    assert {k: str(v) for k, v in first.asked.items()} == \
        {k: str(v) for k, v in second.asked.items()}
    assert [(a.msg_id, str(a.outcome)) for a in first.asked_here] == \
        [(a.msg_id, str(a.outcome)) for a in second.asked_here]


def test_asks_from_inside_a_process_start_runs_before_their_entries_under_faults() -> None:
    """The scenario's asks with no id do take the early path (entries written with their
    run's first commit, and some not the next entry: discarded, run in order), and some
    are cut off by their process's death (the seeds above check what that leaves)."""
    stats: Counter[str] = Counter()
    for seed in range(1, 40):
        report = build(seed).run(scenario)
        report.raise_for_violations()
        stats.update(report.stats)
    assert stats["entries_with_commit"] >= 10 and stats["entries_not_next"] >= 1, stats
    assert stats["asks_here_cut_off"] >= 10, stats


def test_the_checks_catch_a_broken_promise() -> None:
    """The checker itself: an effect nobody recorded, a message that never completed, a
    contained step computed again with another input, an ask answered whose run never
    completed, a run without its inbox entry."""
    sim = build(10)  # seed % 10 == 0: no faults
    report = sim.run(scenario)
    assert report.ok, report.violations
    sim.receiver.apply("charge", "payment/zz:m9:0", {"order": "zz"})
    sim.activities.computations.apply("quote", "payment/zz:m9:1", {"order": "zz"})
    sim.activities.computations.apply("quote", "payment/zz:m9:1", {"order": "yy"})
    import asyncio

    answered = next(a for a in sim.asked_here if a.answered)
    sim.asked_here.append(AskHere(answered.target, {"n": 999}, "p0.1", "never-ran",
                                  {"ok": 1}, True))
    sim.asked_here.append(AskHere(answered.target, {"n": 998}, "p0.1", "stuck",
                                  stalled="its call is nowhere"))

    async def add_orphan() -> list[str]:
        await sim.journal.enqueue({"id": "lost", "target": "payment/zz", "kind": "call",
                                   "handler": "pay", "payload": {}, "deliver_at": 0.0})
        await sim.journal.append({"actor": "payment/zy", "seq": 0, "ts": 1.0,
                                  "run": {"msg": "entryless", "ts": 1.0, "start": 0},
                                  "events": [], "message": {"id": "entryless",
                                                            "payload": {"n": 1}}})
        for n in (1, 2):  # entry 2 runs first, as if it were entry 1
            await sim.journal.enqueue({"id": f"e{n}", "target": "payment/zx", "kind": "call",
                                       "handler": "pay", "payload": {}, "deliver_at": 0.0})
        await sim.journal.append({"actor": "payment/zx", "seq": 0, "ts": 1.0,
                                  "run": {"msg": "e2", "ts": 1.0, "start": 0}, "events": [],
                                  "message": {"id": "e2", "n": 1, "payload": {}}})
        return await sim.check()

    violations = asyncio.run(add_orphan())
    assert any("happened but no run recorded it" in v for v in violations)
    assert any("never completed: payment/zz: lost" in v for v in violations)
    assert any("contained step payment/zz:m9:1 computed again with another input" in v
               for v in violations)
    assert any("(never-ran) was answered, but its run never completed" in v
               for v in violations)
    assert any("payment/zy: message entryless ran without its entry" in v for v in violations)
    assert any("payment/zx: message e2 ran as entry 1, written as 2" in v for v in violations)
    assert any("(stuck) waited 4 s in a running process: its call is nowhere" in v
               for v in violations)
