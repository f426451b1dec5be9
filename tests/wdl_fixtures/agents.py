"""Child actors for WDL agent steps. Registered with the determinism lint on, so this module
must stay replay-safe: no clock, randomness or I/O (the state is the only memory)."""

from __future__ import annotations

from typing import Any

from runtime.actors import Actor, ActorContext, handler


class Scorer(Actor, type_name="scorer"):
    """Scores an amount; counts how often it was asked (per actor id)."""

    def initial_state(self) -> dict[str, Any]:
        return {"calls": 0, "amounts": []}

    @handler
    async def score(self, ctx: ActorContext, payload: dict[str, Any]) -> dict[str, Any]:
        amount = payload["amount"]
        self.state["calls"] += 1
        self.state["amounts"].append(amount)
        return {"risk": "high" if amount > 100 else "low", "amount": amount,
                "actor": ctx.actor.id, "calls": self.state["calls"]}
