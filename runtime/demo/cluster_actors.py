"""Actors for `make cluster` (runtime/demo/cluster.py) and benchmarks/bench_cluster.py.

`tally/<id>.add(n)` is a pure step: it adds to the actor's state and returns the total, so
a benchmark measures the runtime, the journal and the fleet, not an activity.
`basket/<id>.price(order)` prices an order through the `price_order` wasm activity (no
network), keeping a count and the last total. Actor modules are linted and replayed: no
clock, randomness, environment or I/O here; only the context does those.
"""

from __future__ import annotations

from typing import Any

from runtime.actors import Actor, ActorContext, handler


class Tally(Actor, type_name="tally"):
    @handler
    async def add(self, ctx: ActorContext, payload: dict[str, Any]) -> dict[str, Any]:
        total = int(self.state.get("total", 0)) + int(payload.get("n", 1))
        self.state["total"] = total
        self.state["runs"] = int(self.state.get("runs", 0)) + 1
        return {"actor": ctx.actor.id, "total": total, "runs": self.state["runs"]}


class Basket(Actor, type_name="basket"):
    @handler
    async def price(self, ctx: ActorContext, order: dict[str, Any]) -> dict[str, Any]:
        priced = await ctx.call_activity(
            "price_order", {"items": order["items"],
                            "discount_pct": order.get("discount_pct", 0)})
        self.state["orders"] = int(self.state.get("orders", 0)) + 1
        self.state["last_total_cents"] = priced["total_cents"]
        return {"basket": ctx.actor.id, "total_cents": priced["total_cents"],
                "orders": self.state["orders"]}
