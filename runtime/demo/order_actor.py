"""The demo's order actor: price, charge, ship (a saga), then wait for delivery.

Actor modules are replayed, so this one uses only the context for time, I/O and waiting.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from runtime.actors import Actor, ActorContext, handler, invariant
from runtime.errors import EventTimeout


class OrderState(BaseModel):
    status: str = "new"
    subtotal_cents: int = 0
    total_cents: int = 0
    charge: dict[str, Any] | None = None
    shipment: dict[str, Any] | None = None
    placed_at: str | None = None


class Order(Actor, type_name="order"):
    State = OrderState
    state: OrderState

    @handler
    async def place(self, ctx: ActorContext, order: dict[str, Any]) -> dict[str, Any]:
        base = order["provider"]
        self.state.placed_at = ctx.now().isoformat()
        price = await ctx.call_activity(
            "price_order", {"items": order["items"], "discount_pct": order.get("discount_pct", 0)})
        self.state.subtotal_cents = price["subtotal_cents"]
        self.state.total_cents = price["total_cents"]
        body = {"order": ctx.actor.id, "amount_cents": price["total_cents"]}
        async with ctx.saga() as saga:
            charge = await ctx.call_activity("http_post", {"url": f"{base}/charge", "body": body})
            saga.add("http_post", {"url": f"{base}/refund", "body": body})
            self.state.charge = charge["body"]
            ship = await ctx.call_activity("http_post", {
                "url": f"{base}/ship", "body": {"order": ctx.actor.id,
                                                 "address": order["address"]}})
            saga.add("http_post", {"url": f"{base}/ship/cancel", "body": {"order": ctx.actor.id}})
            self.state.shipment = ship["body"]
        self.state.status = "shipped"
        try:
            delivery = await ctx.wait_for_event("delivered", timeout=order.get("wait_s", 1.0))
            self.state.status = f"delivered ({delivery.get('signed_by', '?')})"
        except EventTimeout:
            self.state.status = "shipped, delivery not confirmed yet"
        return self.state.model_dump()

    @invariant
    def no_shipment_without_charge(self, before: Any, after: Any, events: Any) -> bool | str:
        if after.get("shipment") and not after.get("charge"):
            return "a shipment was booked without a completed charge"
        return True

    @invariant
    def discount_ceiling(self, before: Any, after: Any, events: Any) -> bool | str:
        if after["total_cents"] < after["subtotal_cents"] * 0.5:
            return "the discount exceeds the 50% ceiling"
        return True
