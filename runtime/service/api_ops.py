"""/v1/cluster (admin), /v1/dead-letters (the tenant's), /v1/schedules."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from fastapi import APIRouter, Request

from runtime.actors.host import MAX_PAYLOAD_DEPTH
from runtime.service import tenancy
from runtime.service.auth import ADMIN, READ, WRITE
from runtime.service.cron import Cron, CronInvalid
from runtime.service.keys import Principal
from runtime.service.models import ScheduleRequest
from runtime.service.problems import Problem, not_found
from runtime.service.store import Schedule
from schemas.fast_check import nests_deeper

router = APIRouter(tags=["operations"])


def _svc(request: Request) -> Any:
    return request.app.state.service


@router.get("/v1/cluster", summary="Workers, partitions, leases, due actors, dead letters "
                                   "(the whole fleet: admin keys only)")
async def cluster(request: Request, who: Principal = ADMIN) -> dict[str, Any]:
    from runtime.cluster.status import fleet_status, read_journal_view

    svc = _svc(request)
    view = await read_journal_view(svc.journal.inner)
    settings = svc.settings
    if settings.redis_url:
        breakers = settings.breaker_url if settings.breaker_url.startswith(
            ("redis://", "rediss://")) else None
        out: dict[str, Any] = await asyncio.to_thread(
            fleet_status, settings.redis_url, int(settings.lease_ttl_s * 1000), view,
            limits=svc.admission.limiter, breaker_url=breakers)
        if out.get("fleet"):
            return out
    owners = await svc.journal.owners()
    return {"fleet": False, "redis": settings.redis_url or None,
            "workers": [{"id": o, "actors": n} for o, n in owners.items()],
            "due": len(view.due), "run_versions": view.run_versions,
            "dead_letters": len(view.dead_letters),
            "limits": svc.admission.usage(),
            "breakers_not_closed": {name: "open" for (name,), v in svc.breaker_states() if v},
            "this_server": {"activations": len(svc.runtime.activations) if svc.runtime else 0,
                            "types": sorted(svc.runtime.types) if svc.runtime else []}}


def _mine(entry: dict[str, Any], tenant: str) -> dict[str, Any] | None:
    parts = tenancy.split_actor(entry["actor"])
    if parts is None or parts[0] != tenant:
        return None
    return {"actor": f"{parts[1]}/{parts[2]}", "msg_id": entry["msg"],
            "deliveries": entry.get("deliveries"), "error": entry.get("error"),
            "at": entry.get("at"),
            "handler": (entry.get("envelope") or {}).get("handler"),
            "payload": (entry.get("envelope") or {}).get("payload")}


@router.get("/v1/dead-letters", summary="The tenant's dead-lettered messages")
async def dead_letters(request: Request, who: Principal = READ) -> list[dict[str, Any]]:
    entries = await _svc(request).journal.dead_letters(10_000)
    return [m for e in entries if (m := _mine(e, who.tenant)) is not None]


async def _find(svc: Any, tenant: str, type: str, id: str, msg_id: str) -> dict[str, Any]:
    key = tenancy.actor(tenant, type, id)
    for e in await svc.journal.dead_letters(10_000):
        if e["actor"] == key and e["msg"] == msg_id:
            return dict(e)
    raise not_found(f"dead letter {msg_id} of {type}/{id}")


@router.post("/v1/dead-letters/{type}/{id}/{msg_id}/retry", status_code=202,
             summary="Send the message again (as a new message) and unlist it")
async def retry(type: str, id: str, msg_id: str, request: Request,
                who: Principal = WRITE) -> dict[str, Any]:
    svc = _svc(request)
    found = await _find(svc, who.tenant, type, id, msg_id)
    env = dict(found["envelope"])
    env.pop("n", None)
    env["id"] = f"{found['msg']}~retry-{uuid.uuid4().hex[:8]}"
    await svc.journal.enqueue(env)
    await svc.journal.drop_dead_letter(found["actor"], found["msg"])
    if svc.runtime is not None:
        svc.runtime.notify(found["actor"])
    return {"msg_id": env["id"]}


@router.delete("/v1/dead-letters/{type}/{id}/{msg_id}", status_code=204,
               summary="Unlist a dead letter")
async def drop(type: str, id: str, msg_id: str, request: Request, who: Principal = WRITE) -> None:
    svc = _svc(request)
    found = await _find(svc, who.tenant, type, id, msg_id)
    await svc.journal.drop_dead_letter(found["actor"], found["msg"])


@router.post("/v1/schedules", status_code=201, summary="Add a cron schedule")
async def add_schedule(body: ScheduleRequest, request: Request,
                       who: Principal = WRITE) -> dict[str, Any]:
    svc = _svc(request)
    try:
        Cron(body.cron)
    except CronInvalid as exc:
        raise Problem(422, "request_invalid", "Request invalid", str(exc),
                      errors_=[{"in": "body", "pointer": "/cron", "message": str(exc)}]
                      ) from None
    if nests_deeper(body.payload, MAX_PAYLOAD_DEPTH):  # its ticks could never be journaled
        raise Problem(422, "request_invalid", "Request invalid",
                      f"the payload nests deeper than {MAX_PAYLOAD_DEPTH} levels",
                      errors_=[{"in": "body", "pointer": "/payload",
                                "message": f"nests deeper than {MAX_PAYLOAD_DEPTH} levels"}])
    now = time.time()
    s = Schedule(who.tenant, body.name, body.cron, body.target, body.handler, body.payload,
                 body.missed, now, now)
    if not await asyncio.to_thread(svc.store.add_schedule, s):
        raise Problem(409, "schedule_exists", "Schedule exists",
                      f"schedule {body.name} exists; remove it first")
    return s.public()


@router.get("/v1/schedules", summary="The tenant's schedules")
async def list_schedules(request: Request, who: Principal = READ) -> list[dict[str, Any]]:
    return [s.public() for s in await asyncio.to_thread(_svc(request).store.schedules,
                                                        who.tenant)]


@router.delete("/v1/schedules/{name}", status_code=204, summary="Remove a schedule")
async def remove_schedule(name: str, request: Request, who: Principal = WRITE) -> None:
    if not await asyncio.to_thread(_svc(request).store.remove_schedule, who.tenant, name):
        raise not_found(f"schedule {name}")
