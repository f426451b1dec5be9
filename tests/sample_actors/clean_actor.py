"""A replay-safe actor module: everything non-pure goes through the context."""

from __future__ import annotations

from typing import Any

from runtime.actors import Actor, ActorContext, handler


class Greeter(Actor, type_name="greeter"):
    def initial_state(self) -> dict[str, Any]:
        return {"greeted": []}

    @handler
    async def greet(self, ctx: ActorContext, payload: dict[str, Any]) -> dict[str, Any]:
        when = ctx.now().isoformat()
        ticket = str(ctx.uuid())
        lucky = ctx.random().randint(1, 6)
        await ctx.sleep(0)
        self.state["greeted"].append(payload["name"])
        return {"when": when, "ticket": ticket, "lucky": lucky}
