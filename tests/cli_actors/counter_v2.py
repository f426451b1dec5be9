"""Counter, changed: it now asks for a different step, so replay must diverge."""

from __future__ import annotations

from typing import Any

from runtime.actors import Actor, ActorContext, handler


class Counter(Actor, type_name="counter"):
    @handler
    async def add(self, ctx: ActorContext, payload: dict[str, Any]) -> int:
        echoed = await ctx.call_activity("echo", {"n": payload["n"], "v": 2})
        self.state["total"] = self.state.get("total", 0) + echoed["n"]
        return int(self.state["total"])
