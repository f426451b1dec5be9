"""`loom actor replay` answers "would the new rule have caught it?" on recorded runs."""

from __future__ import annotations

import asyncio
from typing import Any

from runtime.actors import Actor, ActorContext, ActorRuntime, handler, invariant
from runtime.actors.replay import replay_commits
from runtime.journal import MemoryJournal


class Discounts(Actor, type_name="discounts"):
    @handler
    async def grant(self, ctx: ActorContext, pct: int) -> int:
        self.state["pct"] = pct
        return pct


class DiscountsWithCeiling(Discounts, type_name="discounts"):
    @invariant
    def ceiling(self, before: Any, after: Any, events: Any) -> bool | str:
        return after.get("pct", 0) <= 50 or f"discount {after.get('pct')}% exceeds 50%"


def test_a_new_invariant_flags_the_recorded_runs_it_would_have_refused() -> None:
    async def main() -> None:
        journal = MemoryJournal()
        async with ActorRuntime(journal, lint=False) as rt:
            rt.register(Discounts)
            assert await rt.ask("discounts/d1", "grant", 20) == 20
            assert await rt.ask("discounts/d1", "grant", 80) == 80  # allowed back then
        commits = await journal.read("discounts/d1")

        old = await replay_commits(Discounts, "discounts/d1", commits)
        assert [r.status for r in old.runs] == ["ok", "ok"] and old.ok

        new = await replay_commits(DiscountsWithCeiling, "discounts/d1", commits)
        assert [r.status for r in new.runs] == ["ok", "diverged"]
        assert "ceiling" in new.runs[1].detail and "80%" in new.runs[1].detail
        assert not new.ok

    asyncio.run(main())
