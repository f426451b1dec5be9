"""`Authorization: Bearer loom_<id>_<secret>` -> the tenant and scopes of the request."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from runtime.service.keys import Principal
from runtime.service.problems import Problem

_bearer = HTTPBearer(auto_error=False, description="An API key from `loom keys create`.")


def scope(name: str) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """A dependency: the caller's principal, if its key is valid and grants `name`."""

    async def check(request: Request,
                    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
                    ) -> Principal:
        if creds is None:
            raise Problem(401, "unauthenticated", "Unauthenticated",
                          "send an API key as `Authorization: Bearer <key>`")
        principal = request.app.state.service.keyring.check(creds.credentials)
        if principal is None:
            raise Problem(401, "unauthenticated", "Unauthenticated",
                          "the API key is unknown or revoked")
        if not principal.allows(name):
            raise Problem(403, "scope_missing", "Scope missing",
                          f"this key lacks the {name!r} scope")
        request.state.tenant = principal.tenant
        await request.app.state.service.admission.request(principal.tenant)
        return principal  # type: ignore[no-any-return]

    return check


READ, INVOKE, WRITE, ADMIN = (Depends(scope(s)) for s in ("read", "invoke", "write", "admin"))
