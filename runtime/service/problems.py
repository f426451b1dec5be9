"""RFC 9457 problem documents (`application/problem+json`) for every error the API returns.

`type` is a relative URI `/problems/<code>` (docs/service.md lists them); `errors` names each
offending field with a JSON pointer into the request body (or the query parameter)."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from runtime import errors

MEDIA_TYPE = "application/problem+json"

_STATUS: dict[type[errors.LoomError], int] = {
    errors.NotFound: 404, errors.InputInvalid: 422, errors.ManifestInvalid: 422,
    errors.ModuleInvalid: 422, errors.WorkflowInvalid: 422, errors.InputTooLarge: 413,
    errors.VersionConflict: 409, errors.IntegrityError: 422, errors.Timeout: 504,
    errors.CircuitOpen: 503, errors.StorageError: 503, errors.CapabilityDenied: 422,
}


class Problem(Exception):
    """Raise anywhere in a route to answer with a problem document."""

    def __init__(self, status: int, code: str, title: str, detail: str = "", *,
                 errors_: list[dict[str, str]] | None = None,
                 headers_: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail or title)
        self.status, self.code, self.title, self.detail = status, code, title, detail
        self.errors = errors_
        self.headers = headers_
        self.extra = extra

    def body(self, instance: str) -> dict[str, Any]:
        doc: dict[str, Any] = {"type": f"/problems/{self.code}", "title": self.title,
                               "status": self.status, "code": self.code, "instance": instance}
        if self.detail:
            doc["detail"] = self.detail
        if self.errors:
            doc["errors"] = self.errors
        doc.update(self.extra)
        return doc


def not_found(what: str) -> Problem:
    return Problem(404, "not_found", "Not found", f"{what} does not exist")


def respond(problem: Problem, request: Request) -> JSONResponse:
    headers = problem.headers or ({"Retry-After": "1"} if problem.status == 503 else None)
    return JSONResponse(problem.body(request.url.path), status_code=problem.status,
                        media_type=MEDIA_TYPE, headers=headers)


def from_loom(exc: errors.LoomError) -> Problem:
    status = next((s for cls, s in _STATUS.items() if isinstance(exc, cls)), 422)
    extra: dict[str, Any] = {"retryable": exc.retryable}
    if exc.activity:
        extra["activity"] = exc.activity.split("--", 1)[-1]  # never the tenant's prefix
    if exc.version:
        extra["version"] = exc.version
    detail = exc.message.replace(f"{exc.activity}", extra.get("activity", "")) \
        if exc.activity else exc.message
    problems = None
    if isinstance(exc.details, list):
        problems = [{"pointer": "/" + "/".join(str(p) for p in d.get("loc", ())),
                     "message": str(d.get("msg"))} for d in exc.details if isinstance(d, dict)]
    title = "Not found" if status == 404 else exc.code.value.replace("_", " ").capitalize()
    return Problem(status, exc.code.value, title, _strip_tenants(detail), errors_=problems,
                   **extra)


def _strip_tenants(text: str) -> str:
    """Error texts from lower layers name internal (tenant-prefixed) names; users never see
    the prefix: `acme--echo` -> `echo`, `order/acme~7` -> `order/7`."""
    import re

    return re.sub(r"\b[a-z][a-z0-9]{0,19}(?:--|~)", "", text)


def _pointer(loc: tuple[Any, ...]) -> tuple[str, str]:
    where, *rest = loc or ("body",)
    return str(where), "/" + "/".join(str(p) for p in rest)


async def validation_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems, malformed = [], False
    for err in exc.errors():
        where, pointer = _pointer(tuple(err.get("loc", ())))
        if err.get("type") == "json_invalid":
            malformed = True
        message = "unknown field" if err.get("type") == "extra_forbidden" else str(err["msg"])
        problems.append({"in": where, "pointer": pointer, "message": message})
    if malformed:
        problem = Problem(400, "malformed_json", "Malformed JSON",
                          "the request body is not valid JSON", errors_=problems)
    else:
        fields = ", ".join(p["pointer"] if p["in"] == "body" else f"{p['in']}:{p['pointer']}"
                           for p in problems)
        problem = Problem(422, "request_invalid", "Request invalid",
                          f"invalid fields: {fields}", errors_=problems)
    return respond(problem, request)


async def problem_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Problem)
    return respond(exc, request)


async def loom_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.LoomError)
    return respond(from_loom(exc), request)


async def http_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return respond(Problem(exc.status_code, code, str(exc.detail)), request)
