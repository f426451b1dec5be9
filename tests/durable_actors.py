"""Actors for tests/test_durable_core.py. Linted on registration: no clock, randomness,
environment or I/O here."""

from __future__ import annotations

import asyncio
from typing import Any

from runtime.actors import Actor, ActorContext, handler, invariant
from runtime.errors import ActivityFailed, EventTimeout

ONCE = {"max_attempts": 1}


class Shipper(Actor, type_name="shipper"):
    """Two effects with a durable timer between them."""

    @handler
    async def ship(self, ctx: ActorContext, p: dict[str, Any]) -> dict[str, Any]:
        a = await ctx.call_activity("effect", {"order": p["order"], "leg": "a"})
        await ctx.sleep(p.get("nap", 0.05))
        b = await ctx.call_activity("effect", {"order": p["order"], "leg": "b"})
        self.state.setdefault("done", []).append(p["order"])
        return {"a": a["id"], "b": b["id"]}


class Payment(Actor, type_name="payment"):
    """pay, then ship, as a saga: a failure refunds."""

    @handler
    async def pay(self, ctx: ActorContext, p: dict[str, Any]) -> dict[str, Any]:
        async with ctx.saga() as saga:
            paid = await ctx.call_activity("pay", {"order": p["order"]}, retry=ONCE)
            saga.add("refund", {"order": p["order"]})
            shipped = await ctx.call_activity("ship", {"order": p["order"]}, retry=ONCE)
        self.state["status"] = "done"
        return {"paid": paid["id"], "shipped": shipped["id"]}


class Waiter(Actor, type_name="waiter"):
    @handler
    async def two_events(self, ctx: ActorContext, p: Any) -> list[Any]:
        first = await ctx.wait_for_event("go", timeout=30)
        second = await ctx.wait_for_event("go", timeout=30)
        return [first, second]

    @handler
    async def parcel(self, ctx: ActorContext, p: dict[str, Any]) -> Any:
        try:
            return await ctx.wait_for_event("delivered", timeout=p["timeout"], key=p.get("key"))
        except EventTimeout:
            return "late"


class Bank(Actor, type_name="bank"):
    """Pays out through a message to the payee; may never go below zero."""

    def initial_state(self) -> dict[str, Any]:
        return {"balance": 50}

    @handler
    async def payout(self, ctx: ActorContext, p: dict[str, Any]) -> int:
        self.state["balance"] -= p["amount"]
        await ctx.send(p["to"], "credit", {"amount": p["amount"]})
        return int(self.state["balance"])

    @handler
    async def payout_then_fail(self, ctx: ActorContext, p: dict[str, Any]) -> int:
        self.state["balance"] -= p["amount"]
        await ctx.send(p["to"], "credit", {"amount": p["amount"]})
        raise ValueError("the transfer was refused downstream")

    @invariant
    def solvent(self, before: Any, after: Any, events: list[dict[str, Any]]) -> Any:
        return after["balance"] >= 0 or f"balance would be {after['balance']}"


class Payee(Actor, type_name="payee"):
    @handler
    async def credit(self, ctx: ActorContext, p: dict[str, Any]) -> int:
        self.state["paid_out"] = self.state.get("paid_out", 0) + p["amount"]
        return int(self.state["paid_out"])

    @handler
    async def get(self, ctx: ActorContext, p: Any) -> dict[str, Any]:
        return dict(self.state)


class Charger(Actor, type_name="charger"):
    @handler
    async def charge(self, ctx: ActorContext, p: dict[str, Any]) -> str:
        out = await ctx.call_activity("charge", {"order": p["order"]})
        await ctx.call_activity("ship", {"order": p["order"]})
        return str(out["id"])


class Parker(Actor, type_name="parker"):
    @handler
    async def park(self, ctx: ActorContext, p: Any) -> Any:
        return await ctx.wait_for_event("go")


class Sleeper(Actor, type_name="sleeper"):
    @handler
    async def nap(self, ctx: ActorContext, p: dict[str, Any]) -> str:
        await ctx.sleep(p["seconds"])
        return "awake"


class Brancher(Actor, type_name="brancher"):
    """Two concurrent branches, each with two activities; random numbers in each."""

    @handler
    async def run(self, ctx: ActorContext, p: dict[str, Any]) -> dict[str, Any]:
        async def leg(name: str) -> list[Any]:
            b = ctx.branch(name)
            token = str(b.uuid())
            first = await b.call_activity("effect", {"leg": name, "step": 1})
            second = await b.call_activity("effect", {"leg": name, "step": 2})
            if p.get("wait"):
                await b.wait_for_event(f"go-{name}", timeout=30)
            return [token, first["id"], second["id"]]

        left, right = await asyncio.gather(leg("left"), leg("right"))
        return {"left": left, "right": right}

    @handler
    async def again(self, ctx: ActorContext, p: Any) -> list[str]:
        one = await ctx.branch("x").call_activity("effect", {"n": 1})
        two = await ctx.branch("x").call_activity("effect", {"n": 2})
        return [one["id"], two["id"]]

    @handler
    async def sets(self, ctx: ActorContext, p: Any) -> Any:
        return await ctx.call_activity("effect", {"tags": {"a", "b"}})

    @handler
    async def keep_error(self, ctx: ActorContext, p: Any) -> str:
        try:
            await ctx.call_activity("broken", {}, retry=ONCE)
        except ActivityFailed as exc:
            self.state["error"] = str(exc)
        await ctx.wait_for_event("go", timeout=30)
        return str(self.state["error"])


class BrancherDroppedStep(Brancher, type_name="brancher"):
    """Brancher whose right branch lost its second activity (a code change)."""

    @handler
    async def run(self, ctx: ActorContext, p: dict[str, Any]) -> dict[str, Any]:
        async def leg(name: str, steps: int) -> list[Any]:
            b = ctx.branch(name)
            token = str(b.uuid())
            out = [token]
            for step in range(1, steps + 1):
                out.append((await b.call_activity("effect", {"leg": name, "step": step}))["id"])
            if p.get("wait"):
                await b.wait_for_event(f"go-{name}", timeout=30)
            return out

        left, right = await asyncio.gather(leg("left", 2), leg("right", 1))
        return {"left": left, "right": right}


class TwoWay(Actor, type_name="twoway"):
    """One branch waits for an event while the other starts a durable timer."""

    @handler
    async def go(self, ctx: ActorContext, p: Any) -> str:
        async def waiter() -> Any:
            return await ctx.branch("w").wait_for_event("ping", timeout=30)

        async def sleeper() -> None:
            await ctx.branch("s").sleep(0.1)

        got, _ = await asyncio.gather(waiter(), sleeper())
        return f"both: {got}"


class Ordered(Actor, type_name="ordered"):
    @handler
    async def go(self, ctx: ActorContext, p: Any) -> Any:
        return await ctx.call_activity("effect", {"a": 1, "b": 2})


class Reordered(Actor, type_name="ordered"):
    """The same arguments, built in another key order."""

    @handler
    async def go(self, ctx: ActorContext, p: Any) -> Any:
        return await ctx.call_activity("effect", {"b": 2, "a": 1})


class Changed(Actor, type_name="ordered"):
    @handler
    async def go(self, ctx: ActorContext, p: Any) -> Any:
        return await ctx.call_activity("effect", {"a": 1, "b": 3})


class Payment3(Actor, type_name="payment3"):
    """A saga whose second effect is followed by a third inside the block."""

    @handler
    async def pay(self, ctx: ActorContext, p: dict[str, Any]) -> Any:
        async with ctx.saga() as saga:
            await ctx.call_activity("pay", {"order": p["order"]}, retry=ONCE)
            saga.add("refund", {"order": p["order"]})
            await ctx.call_activity("ship", {"order": p["order"]}, retry=ONCE)
            await ctx.call_activity("notify", {"order": p["order"]}, retry=ONCE)
        return "ok"


class Br(Actor, type_name="br"):
    """The left branch holds the run on two waits; the right one makes two effects."""

    @handler
    async def run(self, ctx: ActorContext, p: Any) -> Any:
        async def left() -> Any:
            b = ctx.branch("left")
            await b.wait_for_event("a")
            return await b.wait_for_event("b")

        async def right() -> None:
            b = ctx.branch("right")
            await b.call_activity("effect", {"n": 1})
            await b.call_activity("effect", {"n": 2})

        await asyncio.gather(left(), right())
        return "ok"


class BrDropped(Br, type_name="br"):
    """Br whose right branch lost its last step."""

    @handler
    async def run(self, ctx: ActorContext, p: Any) -> Any:
        async def left() -> Any:
            b = ctx.branch("left")
            await b.wait_for_event("a")
            return await b.wait_for_event("b")

        async def right() -> None:
            await ctx.branch("right").call_activity("effect", {"n": 1})

        await asyncio.gather(left(), right())
        return "ok"


class Gate(Actor, type_name="gate"):
    @handler
    async def go(self, ctx: ActorContext, p: Any) -> Any:
        await ctx.call_activity("slow", {})
        return await ctx.wait_for_event("go")


class Booking(Actor, type_name="booking"):
    """Books, then waits for a confirmation; a cancel undoes the booking."""

    @handler
    async def book(self, ctx: ActorContext, p: dict[str, Any]) -> str:
        async with ctx.saga() as saga:
            await ctx.call_activity("book", {"trip": p["trip"]})
            saga.add("unbook", {"trip": p["trip"]})
            if p.get("slow"):
                await ctx.call_activity("slow", {"trip": p["trip"]})
                await ctx.call_activity("ticket", {"trip": p["trip"]})
            await ctx.wait_for_event("confirmed", timeout=p.get("timeout", 60))
        self.state["booked"] = p["trip"]
        return "booked"


class Limited(Actor, type_name="limited"):
    @handler
    async def call(self, ctx: ActorContext, p: Any) -> Any:
        return await ctx.call_activity("slow", {"n": p})


class Poison(Actor, type_name="poison"):
    @handler
    async def go(self, ctx: ActorContext, p: Any) -> Any:
        return await ctx.call_activity("boom", {})


class Crasher(Actor, type_name="crasher"):
    """Its process dies before the handler reaches any activity call (the test abandons the
    runtime while the handler hangs here)."""

    @handler
    async def go(self, ctx: ActorContext, p: Any) -> Any:
        await asyncio.Event().wait()
        return await ctx.call_activity("boom", {})
