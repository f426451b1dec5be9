"""The asked side of the fleet tracing test (`tests/test_tracing_fleet.py`): run by another
`loom worker`, it calls an activity that makes an HTTP request."""

from __future__ import annotations

from typing import Any

from runtime.actors import Actor, ActorContext, handler


class Back(Actor, type_name="tback"):
    @handler
    async def charge(self, ctx: ActorContext, payload: Any) -> Any:
        return await ctx.call_activity("http_post", {"url": payload["url"], "body": {"n": 1}})
