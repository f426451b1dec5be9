"""A changed deployment of the workflow engine (same actor type "workflow") whose code asks
for a different step than the journal recorded: it inserts an activity after the first step.
Used to check what a replay divergence does to a running workflow. Lint-clean."""

from __future__ import annotations

from typing import Any

from runtime.actors import ActorContext, handler
from wdl.engine import WorkflowActor


class ChangedWorkflow(WorkflowActor, type_name="workflow"):
    @handler
    async def start(self, ctx: ActorContext, payload: dict[str, Any]) -> dict[str, Any]:
        definition = dict(payload["workflow"])
        steps = list(definition["steps"])
        extra = {"id": "inserted", "kind": "activity", "activity": "http_post",
                 "input": {"url": "{{ input.provider }}/inserted"}}
        definition["steps"] = [steps[0], extra, *steps[1:]]
        return await super().start(ctx, {**payload, "workflow": definition})
