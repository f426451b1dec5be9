"""The ASGI application: FastAPI routes, problem documents, body limits, metrics, spans.

FastAPI rather than bare Starlette: the API is described by Pydantic models already (the
manifest, the workflow language), and FastAPI turns them into request validation with field
paths and an OpenAPI 3.1 document for free; it *is* Starlette underneath, so middleware,
static files and the test client are Starlette's."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from opentelemetry import trace
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles

from runtime import errors
from runtime.service import api_activities, api_actors, api_ops, api_workflows, problems, tracing
from runtime.service.service import Service

STUDIO = Path(__file__).parent / "studio"
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class _TooLarge(Exception):
    pass


class BodyLimit:
    """Refuse bodies over the limit (413 problem) before a handler sees any of them: by
    Content-Length when given, else while streaming. Uploads have their own, larger limit."""

    def __init__(self, app: Any, json_limit: int, upload_limit: int) -> None:
        self.app, self.json_limit, self.upload_limit = app, json_limit, upload_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope["path"] == "/v1/activities" and scope["method"] == "POST"
        limit = self.upload_limit if upload else self.json_limit
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await self._refuse(scope, send, limit)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _TooLarge()
            return message

        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except _TooLarge:
            if not started:
                await self._refuse(scope, send, limit)

    @staticmethod
    async def _refuse(scope: Scope, send: Send, limit: int) -> None:
        p = problems.Problem(413, "body_too_large", "Request body too large",
                             f"the body exceeds {limit:,} bytes", limit=limit)
        response = JSONResponse(p.body(scope["path"]), status_code=413,
                                media_type=problems.MEDIA_TYPE)
        await response(scope, _drain, send)


async def _drain() -> Message:
    return {"type": "http.disconnect"}


def create_app(service: Service, *, manage: bool = True) -> FastAPI:
    """`manage`: start and stop the service with the app (False when the caller does)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if manage:
            await service.start()
        try:
            yield
        finally:
            if manage:
                await service.stop()

    app = FastAPI(title="Loom", version="1", lifespan=lifespan,
                  description="Sandboxed WebAssembly activities and durable actors, per tenant. "
                              "Authenticate with `Authorization: Bearer <key>` (`loom keys "
                              "create`). Errors are RFC 9457 problem documents.")
    app.state.service = service
    app.add_exception_handler(RequestValidationError, problems.validation_handler)
    app.add_exception_handler(problems.Problem, problems.problem_handler)
    app.add_exception_handler(errors.LoomError, problems.loom_handler)
    app.add_exception_handler(StarletteHTTPException, problems.http_handler)
    for module in (api_activities, api_actors, api_workflows, api_ops):
        app.include_router(module.router)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        await service.sample_inbox()
        return Response(generate_latest(service.metrics.registry),
                        media_type=CONTENT_TYPE_LATEST)

    if service.config.studio and STUDIO.is_dir():
        app.mount("/studio", StaticFiles(directory=STUDIO, html=True), name="studio")

        @app.get("/", include_in_schema=False)
        async def root() -> RedirectResponse:
            return RedirectResponse("/studio/")

    @app.middleware("http")
    async def observe(request: Request, call_next: Any) -> Response:
        parent = tracing.extract(request.headers.get("traceparent"))
        started = time.perf_counter()
        with tracing.tracer().start_as_current_span(
                f"{request.method} {request.url.path}", context=parent,
                kind=trace.SpanKind.SERVER,
                attributes={"http.request.method": request.method,
                            "url.path": request.url.path}) as span:
            response: Response = await call_next(request)
            route = request.scope.get("route")
            path = getattr(route, "path", "unmatched")
            span.update_name(f"{request.method} {path}")
            span.set_attribute("http.response.status_code", response.status_code)
            if getattr(request.state, "tenant", None):
                span.set_attribute("loom.tenant", request.state.tenant)
        service.metrics.requests.labels(path, request.method,
                                        str(response.status_code)).observe(
            time.perf_counter() - started)
        return response

    app.add_middleware(BodyLimit, json_limit=service.config.max_body_bytes,
                       upload_limit=service.config.max_upload_bytes)
    return app
