"""Start a workflow instance on a runtime and wait for its outcome."""

from __future__ import annotations

from typing import Any

from runtime.actors import ActorRuntime
from schemas.wdl import Workflow
from wdl.engine import WorkflowActor


def start_message(wf: Workflow, input: Any) -> dict[str, Any]:
    """The `start` payload: the whole definition travels with the instance (its version)."""
    return {"workflow": wf.model_dump(mode="json", by_alias=True, exclude_none=True),
            "input": input}


async def run_workflow(runtime: ActorRuntime, wf: Workflow, input: Any, *, instance: str,
                       timeout: float | None = None) -> dict[str, Any]:
    """Run (or resume: same instance id = same message id) a workflow; return its outcome."""
    if WorkflowActor.type_name not in runtime.types:
        runtime.register(WorkflowActor)
    result: dict[str, Any] = await runtime.ask(
        f"workflow/{instance}", "start", start_message(wf, input),
        msg_id="start", timeout=timeout)
    return result
