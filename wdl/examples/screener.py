"""The child actor used by onboarding.json's agent step (run with --actors)."""

from __future__ import annotations

from typing import Any

from runtime.actors import Actor, ActorContext, handler


class Screener(Actor, type_name="screener"):
    @handler
    async def screen(self, ctx: ActorContext, payload: dict[str, Any]) -> dict[str, Any]:
        check = await ctx.call_activity("http_post", {
            "url": f"{payload['provider']}/screening", "body": {"account": payload["account"]}})
        self.state["screened"] = self.state.get("screened", 0) + 1
        return {"risk": check["body"].get("risk", "low"), "account": payload["account"]}
