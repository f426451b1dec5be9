"""/v1/actors: send, ask, signal, cancel, show, journal; /v1/triggers: the same send, exactly
once per `Idempotency-Key`. Addresses are the tenant's own (`order/42`)."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from typing import Any

from fastapi import APIRouter, Header, Query, Request

from runtime import errors
from runtime.actors.delta import after_last_state, current_state
from runtime.actors.host import MAX_PAYLOAD_DEPTH
from runtime.service import tenancy
from runtime.service.auth import INVOKE, READ, WRITE
from runtime.service.keys import Principal
from runtime.service.models import (
    AskRequest,
    CancelRequest,
    MessageRequest,
    Outcome,
    Queued,
    RunPage,
    SignalRequest,
)
from runtime.service.problems import Problem, not_found
from schemas.fast_check import nests_deeper

router = APIRouter(tags=["actors"])
OUTCOMES = ("completed", "failed", "rejected", "cancelled", "dead_lettered")


def _svc(request: Request) -> Any:
    return request.app.state.service


def message_id(tenant: str, idempotency_key: str | None, msg_id: str | None) -> str:
    """The message id: the caller's, one derived from its Idempotency-Key, or a new one."""
    if idempotency_key:
        digest = hashlib.sha256(f"{tenant}\0{idempotency_key}".encode()).hexdigest()[:32]
        return f"http-{digest}"
    return msg_id or str(uuid.uuid4())


def envelope(target: str, kind: str, name: str | None, payload: Any, msg_id: str,
             key: str | None = None) -> dict[str, Any]:
    if nests_deeper(payload, MAX_PAYLOAD_DEPTH):  # it could be written, never read back
        raise Problem(422, "request_invalid", "Request invalid",
                      f"the payload nests deeper than {MAX_PAYLOAD_DEPTH} levels")
    env: dict[str, Any] = {"id": msg_id, "target": target, "kind": kind, "payload": payload,
                           "deliver_at": 0.0}
    if kind == "call":
        env["handler"] = name
    elif kind == "event":
        env["name"] = name
    if key is not None:
        env["key"] = key
    return env


async def enqueue(svc: Any, env: dict[str, Any]) -> bool:
    created = bool(await svc.journal.enqueue(env))
    if svc.runtime is not None:
        svc.runtime.notify(env["target"])
    return created


async def _exists(svc: Any, key: str) -> bool:
    if await svc.journal.read_tail(key):
        return True
    return bool(await svc.journal.inbox(key, float("inf"), calls=1))


@router.post("/v1/actors/{type}/{id}/send/{handler}", status_code=202, response_model=Queued,
             summary="Queue a call (at least once; a repeated msg_id is delivered once)")
async def send(type: str, id: str, handler: str, body: MessageRequest, request: Request,
               who: Principal = INVOKE,
               idempotency_key: str | None = Header(default=None, max_length=200)) -> Queued:
    svc = _svc(request)
    msg_id = message_id(who.tenant, idempotency_key, body.msg_id)
    created = await enqueue(svc, envelope(tenancy.actor(who.tenant, type, id), "call", handler,
                                          body.payload, msg_id))
    return Queued(msg_id=msg_id, created=created)


@router.post("/v1/triggers/{type}/{id}/{handler}", status_code=202, response_model=Queued,
             tags=["triggers"],
             summary="HTTP trigger: one durable message per Idempotency-Key, however often "
                     "the request is retried")
async def trigger(type: str, id: str, handler: str, request: Request,
                  idempotency_key: str = Header(min_length=1, max_length=200),
                  who: Principal = INVOKE) -> Queued:
    svc = _svc(request)
    raw = await request.body()
    payload: Any = None
    if raw:
        import json

        try:
            payload = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise Problem(400, "malformed_json", "Malformed JSON", str(exc)) from None
    msg_id = message_id(who.tenant, idempotency_key, None)
    created = await enqueue(svc, envelope(tenancy.actor(who.tenant, type, id), "call", handler,
                                          payload, msg_id))
    svc.metrics.triggers.labels("http", str(created).lower()).inc()
    return Queued(msg_id=msg_id, created=created)


@router.post("/v1/actors/{type}/{id}/signal/{event}", status_code=202, response_model=Queued,
             summary="Raise an event (for ctx.wait_for_event)")
async def signal(type: str, id: str, event: str, body: SignalRequest, request: Request,
                 who: Principal = INVOKE,
                 idempotency_key: str | None = Header(default=None, max_length=200)) -> Queued:
    svc = _svc(request)
    msg_id = message_id(who.tenant, idempotency_key, body.msg_id)
    created = await enqueue(svc, envelope(tenancy.actor(who.tenant, type, id), "event", event,
                                          body.payload, msg_id, body.key))
    return Queued(msg_id=msg_id, created=created)


def outcome_of(commit: dict[str, Any], msg_id: str) -> Outcome:
    out = Outcome(msg_id=msg_id, outcome=str(commit.get("kind")))
    if "error" in commit:
        err = commit["error"]
        out.error = {k: err.get(k) for k in ("type", "code", "message")}
    else:
        out.result = commit.get("result")
    return out


@router.post("/v1/actors/{type}/{id}/ask/{handler}", response_model=Outcome,
             summary="Call a handler and wait for its durable outcome")
async def ask(type: str, id: str, handler: str, body: AskRequest, request: Request,
              who: Principal = INVOKE,
              idempotency_key: str | None = Header(default=None, max_length=200)) -> Outcome:
    svc = _svc(request)
    key = tenancy.actor(who.tenant, type, id)
    msg_id = message_id(who.tenant, idempotency_key, body.msg_id)
    timeout = min(body.timeout_s, svc.config.max_ask_timeout_s)
    rt = svc.runtime
    if rt is not None and type in rt.types:
        try:
            result = await rt.ask(key, handler, body.payload, msg_id=msg_id, timeout=timeout)
            return Outcome(msg_id=msg_id, outcome="completed", result=result)
        except TimeoutError:
            raise _no_outcome(msg_id, timeout) from None
        except errors.HandlerFailed:
            pass  # the commit says how it failed
        done = await svc.journal.outcome(key, msg_id)
        if done is None:
            raise _no_outcome(msg_id, timeout)
        return outcome_of(done, msg_id)
    await enqueue(svc, envelope(key, "call", handler, body.payload, msg_id))
    deadline, pause = time.monotonic() + timeout, 0.005
    while True:  # another process runs this type: its outcome lands in the journal
        done = await svc.journal.outcome(key, msg_id)
        if done is not None:
            return outcome_of(done, msg_id)
        if time.monotonic() >= deadline:
            raise _no_outcome(msg_id, timeout)
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.1)


def _no_outcome(msg_id: str, timeout: float) -> Problem:
    return Problem(504, "ask_timeout", "No outcome yet",
                   f"no outcome for {msg_id} within {timeout:g} s; the message stays queued "
                   "(ask again with the same msg_id to read its outcome)", msg_id=msg_id)


@router.post("/v1/actors/{type}/{id}/cancel", status_code=202, response_model=Queued,
             summary="Cancel the actor's current run (its saga compensates)")
async def cancel(type: str, id: str, body: CancelRequest, request: Request,
                 who: Principal = WRITE) -> Queued:
    svc = _svc(request)
    key = tenancy.actor(who.tenant, type, id)
    if not await _exists(svc, key):
        raise not_found(f"actor {type}/{id}")
    msg_id = f"cancel:{uuid.uuid4()}"
    env = {"id": msg_id, "target": key, "kind": "cancel", "payload": {"reason": body.reason},
           "deliver_at": 0.0}
    return Queued(msg_id=msg_id, created=await enqueue(svc, env))


def _strip(value: Any, tenant: str) -> Any:
    """Internal actor keys and activity names in a journal document, shown without the
    tenant's prefix."""
    if isinstance(value, str):
        return value.replace(f"/{tenant}{tenancy.ACTOR_SEP}", "/").replace(
            f"{tenant}{tenancy.ACTIVITY_SEP}", "")
    if isinstance(value, list):
        return [_strip(v, tenant) for v in value]
    if isinstance(value, dict):
        return {k: _strip(v, tenant) for k, v in value.items()}
    return value


@router.get("/v1/actors/{type}/{id}", summary="Committed state, run in progress, recent outcomes")
async def show(type: str, id: str, request: Request, who: Principal = READ,
               last: int = Query(default=10, ge=0, le=200)) -> dict[str, Any]:
    svc = _svc(request)
    key = tenancy.actor(who.tenant, type, id)
    tail = await svc.journal.read_tail(key)
    pending = await svc.journal.inbox(key, float("inf"), calls=100)
    if not tail and not pending:
        raise not_found(f"actor {type}/{id}")
    recent = [] if not tail else await svc.journal.read(key, after_seq=max(-1, tail[-1]["seq"]
                                                                             - 200))
    handlers = {c["message"]["id"]: c["message"].get("handler") or c["message"].get("name")
                for c in recent if isinstance(c.get("message"), dict)}
    outcomes = [{**outcome_of(c, (c.get("run") or {}).get("msg", "")).model_dump(),
                 "seq": c["seq"], "handler": handlers.get((c.get("run") or {}).get("msg"))}
                for c in recent if c.get("kind") in OUTCOMES]
    shown: dict[str, Any] = _strip({
                   "actor": f"{type}/{id}", "seq": tail[-1]["seq"] if tail else None,
                   "state": current_state(tail),
                   "run_in_progress": any(c.get("run") for c in after_last_state(tail)),
                   "pending": [{"id": e["id"], "kind": e.get("kind"),
                                "name": e.get("handler") or e.get("name")} for e in pending],
                   "recent": outcomes[-last:] if last else []}, who.tenant)
    return shown


@router.get("/v1/actors/{type}/{id}/journal", summary="Every commit, with each activity "
                                                       "step's resources")
async def journal(type: str, id: str, request: Request, who: Principal = READ,
                  after_seq: int = Query(default=-1, ge=-1, le=2**63 - 1),
                  limit: int = Query(default=500, ge=1, le=5000)) -> dict[str, Any]:
    svc = _svc(request)
    key = tenancy.actor(who.tenant, type, id)
    commits = await svc.journal.read(key, after_seq=after_seq)
    if not commits and not await _exists(svc, key):
        raise not_found(f"actor {type}/{id}")
    shown = commits[:limit]
    return {"actor": f"{type}/{id}", "commits": _strip(shown, who.tenant),
            "more": len(commits) > limit}


@router.get("/v1/runs", response_model=RunPage,
            summary="Runs of the tenant's actors, newest first, filtered (the run index)")
async def runs(request: Request, who: Principal = READ,
               type: str | None = Query(default=None, max_length=200),
               status: str | None = Query(default=None, description="running, parked, "
                                          "completed, failed, rejected, cancelled, "
                                          "dead_lettered"),
               activity: str | None = Query(default=None, max_length=200),
               id_prefix: str | None = Query(default=None, max_length=200,
                                             description="actor ids starting with this"),
               since: str | None = Query(default=None, description="started at or after: "
                                         "epoch s, ISO 8601 or an age (15m, 2h, 7d)"),
               until: str | None = Query(default=None, description="started before"),
               ended_since: str | None = Query(default=None),
               ended_until: str | None = Query(default=None),
               limit: int = Query(default=50, ge=1, le=1000),
               after: str | None = Query(default=None, max_length=2000)) -> RunPage:
    from runtime.service.visibility import FilterInvalid, list_runs

    svc = _svc(request)
    try:
        rows = await list_runs(
            svc.journal, type=type, status=status, activity=activity,
            id_prefix=f"{who.tenant}{tenancy.ACTOR_SEP}{id_prefix or ''}", since=since,
            until=until, ended_since=ended_since, ended_until=ended_until, limit=limit,
            after=after)
    except FilterInvalid as exc:
        name = str(exc).partition(":")[0]
        raise Problem(422, "request_invalid", "Request invalid", str(exc), errors_=[
            {"in": "query", "pointer": f"/{name}", "message": str(exc)}]) from None
    shown = [{**_strip(r, who.tenant), "cursor": r["cursor"]} for r in rows]
    return RunPage.model_validate({"runs": shown,
                                   "next": rows[-1]["cursor"] if len(rows) == limit else None})
