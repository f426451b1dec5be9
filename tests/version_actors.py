"""Actors for tests/test_versions.py (also run by `loom worker` there). Linted on
registration: no clock, randomness, environment or I/O here."""

from __future__ import annotations

from typing import Any

from runtime.actors import Actor, ActorContext, handler


class Hold(Actor, type_name="hold"):
    """A run that commits a step (a short timer), then parks until `go` arrives."""

    @handler
    async def start(self, ctx: ActorContext, p: Any) -> dict[str, Any]:
        await ctx.sleep(0.01)
        got = await ctx.wait_for_event("go")
        return {"got": got}

    @handler
    async def quick(self, ctx: ActorContext, p: Any) -> dict[str, Any]:
        return {"ok": True}
