"""Loom's guest SDK for Python activities (ABI component-v1).

Inside the component, `import loom` gives the host capabilities granted by the
manifest; each one not granted traps with `capability_denied`, as in the C SDK:

    loom.log("priced", level="info", order=7)      # needs capabilities.log
    loom.http("GET", "https://api.example.com/x")   # needs capabilities.http (allowlist)
    loom.secret("API_TOKEN")                        # needs capabilities.secrets
    loom.env("REGION")                              # needs capabilities.env
    loom.idempotency_key()                          # always available

Raise `loom.ActivityError(message, code=..., retryable=True)` to return a structured
error the caller's retry policy can act on; any other exception becomes a
non-retryable `guest_error` carrying its type, message and (truncated) traceback.
"""

from __future__ import annotations

import json
from typing import Any

from wit_world.imports import host

__all__ = ["ActivityError", "env", "http", "idempotency_key", "log", "secret"]


class ActivityError(Exception):
    """A handler's own failure, returned to the host as a typed error."""

    def __init__(self, message: str, *, code: str = "activity_error", retryable: bool = False,
                 details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.retryable = retryable
        self.details = details


def log(message: str, level: str = "info", **fields: Any) -> None:
    host.log(level, str(message), json.dumps(fields, default=str))


def http(method: str, url: str, *, headers: dict[str, str] | None = None,
         body: str | None = None) -> dict[str, Any]:
    """Returns {"ok": True, "status", "headers", "body"} or {"ok": False, "error": {...}}.

    `body` is text (send JSON as `json.dumps(value)`); `headers` a dict of names to values.
    Anything else raises TypeError here: the host would otherwise send no body at all.
    """
    if body is not None and not isinstance(body, str):
        raise TypeError(f"loom.http: body must be a str or None, not {type(body).__name__} "
                        "(send JSON as json.dumps(value))")
    if headers is not None and not isinstance(headers, dict):
        raise TypeError(f"loom.http: headers must be a dict, not {type(headers).__name__}")
    request = {"method": method, "url": url, "headers": headers or {}, "body": body}
    answer: dict[str, Any] = json.loads(host.http(json.dumps(request)))
    return answer


def secret(name: str) -> str | None:
    return host.secret(name)


def env(name: str) -> str | None:
    return host.env(name)


def idempotency_key() -> str:
    return host.idempotency_key()
