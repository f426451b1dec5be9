"""/v1/activities: upload (multipart: `wasm` and `manifest`), list, show, invoke, recent calls."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from runtime import errors
from runtime.service import tenancy
from runtime.service.auth import INVOKE, READ, WRITE
from runtime.service.keys import Principal
from runtime.service.models import InvokeRequest, InvokeResponse
from runtime.service.problems import Problem, not_found

router = APIRouter(prefix="/v1/activities", tags=["activities"])


def _svc(request: Request) -> Any:
    return request.app.state.service


def _public(manifest: Any, tenant: str) -> dict[str, Any]:
    doc: dict[str, Any] = manifest.model_dump(mode="json")
    doc["name"] = tenancy.activity_name(tenant, manifest.name) or manifest.name
    return doc


def _own(svc: Any, tenant: str, name: str, version: str | None = None) -> Any:
    try:
        return svc.executor.registry.get(tenancy.activity(tenant, name), version)
    except errors.NotFound:
        raise not_found(f"activity {name}{'@' + version if version else ''}") from None


async def _bytes(part: Any) -> bytes:
    if isinstance(part, UploadFile):
        await part.seek(0)
        return await part.read()
    return str(part).encode()


@router.post("", status_code=201, summary="Upload a wasm module and its manifest",
             openapi_extra={"requestBody": {"content": {"multipart/form-data": {"schema": {
                 "type": "object", "required": ["wasm", "manifest"], "properties": {
                     "wasm": {"type": "string", "format": "binary"},
                     "manifest": {"type": "string", "format": "binary"}}}}}}})
async def upload(request: Request, who: Principal = WRITE) -> dict[str, Any]:
    svc = _svc(request)
    form = await request.form(max_files=2, max_fields=2,
                              max_part_size=svc.config.max_upload_bytes)
    wasm_part, manifest_part = form.get("wasm"), form.get("manifest")
    missing = [n for n, p in (("wasm", wasm_part), ("manifest", manifest_part)) if p is None]
    if missing:
        raise Problem(422, "request_invalid", "Request invalid", "missing form fields",
                      errors_=[{"in": "form", "pointer": f"/{n}", "message": "required"}
                               for n in missing])
    wasm, raw_manifest = await _bytes(wasm_part), await _bytes(manifest_part)
    try:
        manifest = json.loads(raw_manifest)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise Problem(400, "malformed_json", "Malformed JSON", f"manifest: {exc}",
                      errors_=[{"in": "form", "pointer": "/manifest", "message": str(exc)}]
                      ) from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("name"), str):
        raise Problem(422, "manifest_invalid", "Manifest invalid", "manifest.name is required",
                      errors_=[{"in": "form", "pointer": "/manifest/name",
                                "message": "required"}])
    name = manifest["name"]
    if tenancy.ACTIVITY_SEP in name:
        raise Problem(422, "manifest_invalid", "Manifest invalid",
                      f"name: '{tenancy.ACTIVITY_SEP}' is reserved",
                      errors_=[{"in": "form", "pointer": "/manifest/name",
                                "message": f"'{tenancy.ACTIVITY_SEP}' is reserved"}])
    internal = tenancy.activity(who.tenant, name)
    if len(internal) > tenancy.MAX_NAME:
        raise Problem(422, "manifest_invalid", "Manifest invalid",
                      f"name is too long for this tenant (at most "
                      f"{tenancy.MAX_NAME - len(who.tenant) - 2} characters)",
                      errors_=[{"in": "form", "pointer": "/manifest/name",
                                "message": "too long"}])
    result = await run_in_threadpool(svc.executor.upload, wasm, {**manifest, "name": internal})
    return {"created": result.created, "manifest": _public(result.manifest, who.tenant)}


@router.get("", summary="List the tenant's activities")
async def list_(request: Request, who: Principal = READ) -> list[dict[str, Any]]:
    reg = _svc(request).executor.registry
    out = []
    for internal in await run_in_threadpool(reg.names):
        name = tenancy.activity_name(who.tenant, internal)
        if name is None:
            continue
        versions = reg.versions(internal)
        try:
            latest: str | None = reg.get(internal).version
        except errors.NotFound:
            latest = None
        out.append({"name": name, "latest": latest, "versions": versions})
    return out


@router.get("/{name}", summary="Versions and the latest manifest")
async def show(name: str, request: Request, who: Principal = READ) -> dict[str, Any]:
    svc = _svc(request)
    m = _own(svc, who.tenant, name)
    internal = tenancy.activity(who.tenant, name)
    return {"name": name, "versions": svc.executor.registry.versions(internal),
            "latest": _public(m, who.tenant),
            "recent_calls": list(svc.calls.recent.get(internal, []))}


@router.get("/{name}/{version}", summary="One version's manifest")
async def show_version(name: str, version: str, request: Request,
                       who: Principal = READ) -> dict[str, Any]:
    return _public(_own(_svc(request), who.tenant, name, version), who.tenant)


@router.post("/{name}/invoke", summary="Run the activity once and return its output",
             responses={429: {"description": "Over the activity's limit (LOOM_LIMITS) or the "
                              "tenant's quota: a problem document with Retry-After"}})
async def invoke(name: str, body: InvokeRequest, request: Request,
                 who: Principal = INVOKE) -> InvokeResponse:
    svc = _svc(request)
    _own(svc, who.tenant, name, body.version)
    internal = tenancy.activity(who.tenant, name)
    key = request.headers.get("idempotency-key") or body.idempotency_key
    release = await svc.admission.invoke(name, who.tenant)  # 429 over a limit: never waits
    try:
        result = await run_in_threadpool(svc.calls.execute, internal, body.input,
                                         version=body.version, tenant=who.tenant,
                                         idempotency_key=key, timeout_ms=body.timeout_ms)
    finally:
        await release()
    return InvokeResponse(output=result.output, activity=name, version=result.version,
                          idempotency_key=result.idempotency_key,
                          duration_ms=result.duration_ms, fuel_used=result.fuel_used,
                          memory_bytes=result.memory_bytes, warm=result.reused_instance,
                          logs=result.logs)
