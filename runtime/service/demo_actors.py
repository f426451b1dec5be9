"""The actors of `make studio`'s demo server (`runtime/service/demo.py`) and of the service
tests: a counter whose handlers complete, tick on a schedule, call an activity, fail and
park on an event."""

from __future__ import annotations

from typing import Any

from runtime.actors import Actor, ActorContext, handler


class Counter(Actor, type_name="counter"):
    def initial_state(self) -> Any:
        return {"total": 0, "ticks": []}

    @handler
    async def add(self, ctx: ActorContext, payload: Any) -> int:
        self.state["total"] += int((payload or {}).get("n", 1))
        return int(self.state["total"])

    @handler
    async def tick(self, ctx: ActorContext, payload: Any) -> int:
        self.state["ticks"].append((payload or {}).get("scheduled_at"))
        return len(self.state["ticks"])

    @handler
    async def echo(self, ctx: ActorContext, payload: Any) -> Any:
        return await ctx.call_activity("echo", payload)

    @handler
    async def boom(self, ctx: ActorContext, payload: Any) -> Any:
        raise ValueError("boom on purpose")

    @handler
    async def park(self, ctx: ActorContext, payload: Any) -> Any:
        return await ctx.wait_for_event("go", timeout=600)
