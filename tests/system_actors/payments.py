"""Actors for the crash-recovery system tests (tests/test_crash_recovery.py).

An `order/<id>` actor's `place` handler makes two visible effects through the `http_post`
activity (charge, then ship) and sends a message to `ledger/<id>`, whose `record` handler
makes the third (a ledger entry). The send goes through the outbox, so it leaves with the
order's completing commit. The receiver's base URL comes in the payload (actor code must
not read the environment). This module is linted on registration: keep it free of clocks,
randomness, environment and I/O.
"""

from __future__ import annotations

import json
from typing import Any

from runtime.actors import Actor, ActorContext, handler


def _body(output: dict[str, Any]) -> Any:
    """The response body of an http_post output (JSON, or text holding JSON)."""
    body = output["body"]
    return json.loads(body) if isinstance(body, str) else body


async def _post(ctx: ActorContext, url: str, body: Any) -> Any:
    return _body(await ctx.call_activity("http_post", {"url": url, "body": body}))


class Order(Actor, type_name="order"):
    @handler
    async def place(self, ctx: ActorContext, payload: dict[str, Any]) -> dict[str, Any]:
        base, order, amount = payload["base"], ctx.actor.id, payload["amount"]
        charge = await _post(ctx, f"{base}/charge", {"order": order, "amount": amount})
        self.state["charge"] = charge
        ship = await _post(ctx, f"{base}/ship", {"order": order, "to": payload["to"]})
        self.state["ship"] = ship
        sent = await ctx.send(f"ledger/{order}", "record",
                              {"base": base, "order": order, "amount": amount,
                               "charge": charge["id"]})
        self.state["ledger_msg"] = sent
        self.state["status"] = "placed"
        return {"order": order, "charge": charge["id"], "shipment": ship["id"],
                "ledger_msg": sent}


class Ledger(Actor, type_name="ledger"):
    @handler
    async def record(self, ctx: ActorContext, payload: dict[str, Any]) -> dict[str, Any]:
        entry = await _post(ctx, f"{payload['base']}/ledger",
                            {"order": payload["order"], "amount": payload["amount"],
                             "charge": payload["charge"]})
        self.state.setdefault("entries", []).append(entry["id"])
        return {"order": payload["order"], "entry": entry["id"]}
