"""The asking side of the fleet tracing test (`tests/test_tracing_fleet.py`): run by one
`loom worker`, it asks an actor that only another worker runs."""

from __future__ import annotations

from typing import Any

from runtime.actors import Actor, ActorContext, ActorRef, handler


class Front(Actor, type_name="tfront"):
    @handler
    async def order(self, ctx: ActorContext, payload: Any) -> Any:
        answer = await ctx.ask(ActorRef("tback", "pay"), "charge", payload)
        return {"charged": answer}
