"""/v1/workflows: validate, start, status, send-event, graph (Mermaid, coloured by status)."""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request

from runtime import errors
from runtime.actors.delta import current_state
from runtime.service import flowchart, tenancy
from runtime.service.api_actors import enqueue, envelope, message_id
from runtime.service.auth import INVOKE, READ
from runtime.service.keys import Principal
from runtime.service.models import Queued, SignalRequest, WorkflowStart
from runtime.service.problems import Problem, not_found

router = APIRouter(prefix="/v1/workflows", tags=["workflows"])
COLOURS = {"done": "#b7e4c7", "running": "#ffe08a", "failed": "#f4a3a3",
           "compensated": "#f6c28b", "pending": "#eeeeee"}


def _svc(request: Request) -> Any:
    return request.app.state.service


def _check(svc: Any, tenant: str, raw: Any) -> Any:
    from wdl import validate

    def known(name: str, version: str | None) -> bool:
        try:
            svc.executor.registry.get(svc.calls.resolve(tenant, name), version)
            return True
        except errors.NotFound:
            return False

    try:
        return validate(raw, known_activity=known)
    except errors.WorkflowInvalid as exc:
        raise Problem(422, "workflow_invalid", "Workflow invalid",
                      f"{len(exc.problems)} problem(s)",
                      errors_=[{"pointer": p["path"], "message": p["message"]}
                               for p in exc.problems]) from None


@router.post("/validate", summary="Every problem of a workflow, with its JSON pointer")
async def validate_(request: Request, workflow: Annotated[dict[str, Any], Body()],
                    who: Principal = READ) -> dict[str, Any]:
    wf = _check(_svc(request), who.tenant, workflow)
    return {"valid": True, "ref": wf.ref, "steps": len(wf.steps)}


@router.post("/graph", summary="The Mermaid flowchart of a workflow document")
async def graph_of(request: Request, workflow: Annotated[dict[str, Any], Body()],
                   who: Principal = READ) -> dict[str, Any]:
    from wdl import mermaid

    return {"mermaid": mermaid(_check(_svc(request), who.tenant, workflow))}


@router.post("", status_code=202, response_model=Queued, summary="Start an instance")
async def start(body: WorkflowStart, request: Request, who: Principal = INVOKE) -> Queued:
    from wdl import start_message

    svc = _svc(request)
    wf = _check(svc, who.tenant, body.workflow)
    instance = body.instance or f"{wf.name}-{uuid.uuid4().hex[:8]}"
    created = await enqueue(svc, envelope(tenancy.actor(who.tenant, "workflow", instance),
                                          "call", "start", start_message(wf, body.input),
                                          "start"))
    return Queued(msg_id=instance, created=created)


async def _instance(svc: Any, tenant: str, instance: str) -> tuple[list[dict[str, Any]],
                                                                    dict[str, Any]]:
    key = tenancy.actor(tenant, "workflow", instance)
    commits = await svc.journal.read(key)
    if not commits:
        if await svc.journal.inbox(key, float("inf"), calls=1):
            return [], {"status": "queued"}
        raise not_found(f"workflow instance {instance}")
    state = current_state(commits)  # the last snapshot, the deltas after it applied
    return commits, (state if state is not None else {"status": "running"})


@router.get("/{instance}", summary="Status, variables, finished steps, output or error")
async def status(instance: str, request: Request, who: Principal = READ) -> dict[str, Any]:
    commits, state = await _instance(_svc(request), who.tenant, instance)
    return {"instance": instance, **state, "seq": commits[-1]["seq"] if commits else None}


@router.post("/{instance}/events/{event}", status_code=202, response_model=Queued,
             summary="Raise an event at a running instance")
async def send_event(instance: str, event: str, body: SignalRequest, request: Request,
                     who: Principal = INVOKE) -> Queued:
    svc = _svc(request)
    await _instance(svc, who.tenant, instance)
    msg_id = message_id(who.tenant, request.headers.get("idempotency-key"), body.msg_id)
    created = await enqueue(svc, envelope(tenancy.actor(who.tenant, "workflow", instance),
                                          "event", event, body.payload, msg_id, body.key))
    return Queued(msg_id=msg_id, created=created)


_OPS = {"activity": ({"activity.done"}, {"activity.failed"}), "agent": ({"ask.reply"}, set()),
        "sleep": ({"timer.fired"}, set()), "wait": ({"wait.event"}, {"wait.timeout"})}


def _live(steps: list[Any], commits: list[dict[str, Any]]) -> dict[str, str]:
    """Statuses of a running instance's leading top-level steps, from its journal: the
    workflow's state is written when a turn ends, but each step's events are committed as
    it goes (the n-th effectful step of the top level is journal step n). Stops at the first
    step not finished, and at a condition or parallel step (their branches' steps are not
    walked here; the state says when they are done)."""
    ops: dict[int, set[str]] = {}
    for commit in commits:
        for event in commit.get("events") or []:
            if isinstance(event.get("step"), int):
                ops.setdefault(event["step"], set()).add(str(event.get("op")))
    out: dict[str, str] = {}
    for n, step in enumerate(steps):
        kinds = _OPS.get(step.kind)
        seen = ops.get(n)
        if kinds is None or not seen:
            break
        if seen & kinds[0]:
            out[step.id] = "done"
            continue
        out[step.id] = "failed" if seen & kinds[1] else "running"
        break
    return out


@router.get("/{instance}/graph", summary="The instance's graph, each step coloured by its "
                                          "status: Mermaid text, and nodes and edges")
async def graph(instance: str, request: Request, who: Principal = READ) -> dict[str, Any]:
    from schemas.wdl import Workflow
    from wdl import mermaid

    commits, state = await _instance(_svc(request), who.tenant, instance)
    first = next((c for c in commits if isinstance(c.get("message"), dict)), None)
    if first is None:
        raise not_found(f"workflow instance {instance} (not started yet)")
    wf = Workflow.model_validate(first["message"]["payload"]["workflow"])
    text = mermaid(wf)
    done = set(state.get("done") or [])
    undone = set((state.get("error") or {}).get("compensated") or [])
    nodes: dict[str, str] = {}
    for m in re.finditer(r'^\s+(n\d+)[\[\(\{]+"([^":]+):', text, re.M):
        nodes.setdefault(m.group(2), m.group(1))
    statuses: dict[str, str] = {}
    live = _live(wf.steps, commits) if state.get("status") == "running" else {}
    running_marked = False
    for step_id in nodes:
        if step_id in done:
            statuses[step_id] = "compensated" if step_id in undone else "done"
        elif step_id in live:
            statuses[step_id] = live[step_id]
            running_marked = running_marked or live[step_id] == "running"
        elif state.get("status") == "failed" and not running_marked:
            statuses[step_id], running_marked = "failed", True
        elif state.get("status") == "running" and not running_marked:
            statuses[step_id], running_marked = "running", True
        else:
            statuses[step_id] = "pending"
    styles = "".join(f"    style {nodes[s]} fill:{COLOURS[v]}\n" for s, v in statuses.items())
    drawn, edges = flowchart.parse(text)
    return {"instance": instance, "status": state.get("status"), "steps": statuses,
            "mermaid": text + styles, "nodes": drawn, "edges": edges, "colours": COLOURS}
