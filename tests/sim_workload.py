"""Actors the simulation drives (tests/test_simulation.py): a payment saga with a durable
timer, an optional wait for an event and a message to a ledger, an estimate of contained
steps only, and the ledger.

This module is linted on registration: no clocks, randomness, environment or I/O.
"""

from __future__ import annotations

from typing import Any

from runtime.actors import Actor, ActorContext, handler
from runtime.errors import EventTimeout

RETRY = {"max_attempts": 6, "initial_interval_ms": 100, "max_interval_ms": 1000,
         "backoff_coefficient": 2.0, "jitter": False}


class Payment(Actor, type_name="payment"):
    @handler
    async def pay(self, ctx: ActorContext, p: dict[str, Any]) -> dict[str, Any]:
        order = f"{ctx.actor.id}/{p['n']}"
        token = str(ctx.uuid())  # replays to the same value
        # contained (no effect outside): their outcomes wait to be committed with the charge's
        # flush, and a crash before it computes them again
        quote = await ctx.call_activity("quote", {"order": order, "amount": p["amount"]},
                                        retry=RETRY)
        risk = await ctx.call_activity("risk", {"quote": quote["id"]}, retry=RETRY)
        async with ctx.saga() as saga:
            charge = await ctx.call_activity("charge", {"order": order, "amount": p["amount"],
                                                        "quote": quote["id"],
                                                        "risk": risk["id"]}, retry=RETRY)
            saga.add("refund", {"charge": charge["id"]})
            self.state.setdefault("charges", []).append(charge["id"])
            if p["nap"]:
                await ctx.sleep(p["nap"])
            if p["confirm"] is not None:
                try:
                    got = await ctx.wait_for_event("confirm", timeout=p["confirm"])
                except EventTimeout:
                    got = None
                self.state["confirmed"] = got
            if p["fail"]:
                raise ValueError(f"order {order} refused")
            await ctx.send(f"ledger/{ctx.actor.id}", "record",
                           {"order": order, "charge": charge["id"], "amount": p["amount"]})
            ship = await ctx.call_activity("ship", {"order": order, "token": token},
                                           retry=RETRY)
        self.state["paid"] = self.state.get("paid", 0) + p["amount"]
        return {"order": order, "charge": charge["id"], "ship": ship["id"]}


    @handler
    async def estimate(self, ctx: ActorContext, p: dict[str, Any]) -> dict[str, Any]:
        """Contained steps only: the run's first commit is its last (asked with no id, its
        entry is written with that commit)."""
        quote = await ctx.call_activity("quote", {"order": f"{ctx.actor.id}/{p['n']}",
                                                  "amount": p["amount"]}, retry=RETRY)
        risk = await ctx.call_activity("risk", {"quote": quote["id"]}, retry=RETRY)
        self.state["estimates"] = self.state.get("estimates", 0) + 1
        return {"quote": quote["id"], "risk": risk["id"]}


class Ledger(Actor, type_name="ledger"):
    @handler
    async def record(self, ctx: ActorContext, p: dict[str, Any]) -> dict[str, Any]:
        entry = await ctx.call_activity("ledger_write", p, retry=RETRY)
        self.state.setdefault("entries", []).append(entry["id"])
        return {"entry": entry["id"]}
