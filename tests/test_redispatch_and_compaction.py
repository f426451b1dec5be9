"""Three review findings about what survives an actor's quiet periods and a compaction:

- the newest commit's outbox is sent again on activation only if its dispatch may have been
  cut off (what the commit consumes is still pending); sent again after a long idle period,
  when the target's tombstone is gone, a message ran twice;
- a tail that does not start with a snapshot (a compaction between `read_tail`'s two
  queries) still loads from the latest snapshot in it, never from the initial state;
- Cosmos compaction comes due whenever a state commit passes a multiple of `compact_every`,
  not only when one lands exactly on it (runs of two commits never did)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from runtime.actors import Actor, ActorContext, ActorRuntime, delta, handler
from runtime.journal import MemoryJournal
from runtime.journal.cosmos import CosmosJournal
from runtime.journal.sqlite import SqliteJournal
from runtime.testing import StubActivities


class Pinger(Actor, type_name="pinger"):
    @handler
    async def go(self, ctx: ActorContext, payload: Any) -> int:
        await ctx.send("counter/x", "bump", payload)
        self.state["n"] = self.state.get("n", 0) + 1
        return int(self.state["n"])


class Counter(Actor, type_name="counter"):
    @handler
    async def bump(self, ctx: ActorContext, payload: Any) -> None:
        self.state.setdefault("seen", []).append(payload)


async def _seen(rt: ActorRuntime, count: int) -> list[Any]:
    deadline = time.monotonic() + 10
    while len(seen := ((await rt.state_of("counter/x")) or {}).get("seen", [])) < count:
        assert time.monotonic() < deadline, seen
        await asyncio.sleep(0.02)
    return list(seen)


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_an_idle_actors_newest_outbox_is_not_sent_again(kind: str, tmp_path: Path) -> None:
    async def main() -> None:
        journal: Any = SqliteJournal(tmp_path / "j.db") if kind == "sqlite" else MemoryJournal()
        for message in ("first", "second"):
            rt = ActorRuntime(journal, activities=StubActivities(), lint=False,
                              poll_interval_s=0.02)
            rt.register(Pinger)
            rt.register(Counter)
            async with rt:
                await rt.ask("pinger/p", "go", message)
                seen = await _seen(rt, 1 if message == "first" else 2)
                await asyncio.sleep(0.2)  # time for a wrong second delivery to show
                seen = await _seen(rt, len(seen))
            # the tombstones' time to live runs out while the pinger is idle
            await journal.purge_tombstones(time.time() + 60)
        assert seen == ["first", "second"]
        await journal.close()

    asyncio.run(main())


def test_a_tail_that_lost_its_first_snapshot_loads_from_the_latest() -> None:
    s0 = {"seq": 0, "state": {"v": 0, "k": [0]}, "kind": "completed"}
    d1 = {"seq": 1, "delta": [["s", ["v"], 1]], "kind": "completed"}
    d2 = {"seq": 2, "delta": [["s", ["v"], 2]], "kind": "completed"}
    s3 = {"seq": 3, "state": {"v": 3, "k": [3]}, "kind": "completed"}
    d4 = {"seq": 4, "delta": [["s", ["v"], 4]], "kind": "completed"}
    run = {"seq": 5, "events": [], "run": {"msg": "m5"}}
    for tail in ([d1, d2, s3, d4, run],  # s0 deleted, d1 and d2 not yet
                 [s0, d2, s3, d4, run]):  # d1 deleted: a gap before the newer snapshot
        state, policy, unfinished = delta.load_tail([dict(c) for c in tail])
        assert state == {"v": 4, "k": [3]} and unfinished == [run]
        assert (policy.base_seq, policy.nbytes) == (3, 15)
    assert delta.load_tail([dict(d1), dict(run)])[0] is None  # no snapshot at all


def test_cosmos_compaction_comes_due_when_a_state_commit_passes_a_multiple() -> None:
    journal = CosmosJournal("https://127.0.0.1:1", "a2V5", verify_tls=False, compact_every=8)

    def commit(seq: int, start: int, state: str | None) -> dict[str, Any]:
        doc: dict[str, Any] = {"actor": "a/1", "seq": seq, "run": {"msg": f"m{start}",
                                                                 "start": start}}
        if state is not None:
            doc[state] = {"v": seq} if state == "state" else [["s", ["v"], seq]]
        return doc

    # runs of two commits (a step, then the completing one): state commits at odd seqs only
    due = [seq for seq in range(1, 40, 2) if journal._compaction_due(commit(seq, seq - 1, "delta"))]
    assert due == [9, 17, 25, 33]
    assert not journal._compaction_due(commit(40, 40, None))  # no state: never
    assert journal._compaction_due(commit(41, 40, "state"))  # 40 passed since 39
    # another actor, first seen here: counted from its run's start
    assert journal._compaction_due({**commit(16, 15, "state"), "actor": "b/1"})
    assert not journal._compaction_due({**commit(13, 12, "state"), "actor": "c/1"})
    assert not CosmosJournal("https://127.0.0.1:1", "a2V5", verify_tls=False,
                             compact_every=0)._compaction_due(commit(64, 0, "state"))
