"""A run parked on a durable wait leaves memory and comes back by replay when woken."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from runtime.actors import Actor, ActorContext, ActorRuntime, handler
from runtime.journal import MemoryJournal, SqliteJournal


class Napper(Actor, type_name="napper"):
    @handler
    async def nap(self, ctx: ActorContext, seconds: float) -> dict[str, Any]:
        before = ctx.uuid().hex  # deterministic: the same value after the replay
        await ctx.sleep(seconds)
        event = await ctx.wait_for_event("wake", timeout=5)
        self.state["naps"] = self.state.get("naps", 0) + 1
        return {"token": before, "event": event, "naps": self.state["naps"]}


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_parked_runs_are_evicted_and_resume_by_replay(kind: str, tmp_path: Path) -> None:
    async def main() -> None:
        journal = MemoryJournal() if kind == "memory" else SqliteJournal(tmp_path / "j.db")
        async with ActorRuntime(journal, idle_timeout_s=0.05, poll_interval_s=0.01) as rt:
            rt.register(Napper)
            asker = asyncio.ensure_future(rt.ask("napper/n1", "nap", 0.4, timeout=10))
            # parked on the timer: swept out of memory well before it fires
            for _ in range(100):
                await asyncio.sleep(0.01)  # loom: allow(test driver code, not the actor)
                if "napper/n1" not in rt.activations:
                    break
            assert "napper/n1" not in rt.activations, "a parked run stayed in memory"
            # the timer fires -> activation -> replay -> now parked on the event: evicted again
            await asyncio.sleep(0.6)  # loom: allow(test driver code, not the actor)
            await rt.signal("napper/n1", "wake", {"by": "test"})
            result = await asker
            assert result["event"] == {"by": "test"} and result["naps"] == 1
            commits = await journal.read("napper/n1")
            ops = [e["op"] for c in commits for e in c.get("events", [])]
            assert ops == ["timer.start", "timer.fired", "wait.start", "wait.event"]
            started = [c for c in commits if "message" in c]
            assert len(started) == 1, "the run was replayed, not restarted"
        await journal.close()

    asyncio.run(main())
