"""How tenants' names live in shared stores: every name a tenant uses is prefixed inside
Loom, and the prefix is never shown back. A tenant cannot name another tenant's things, so
their absence is a plain 404 (no 403 that would tell a name exists).

- activities: `<tenant>--<name>` in the registry (one registry, one executor, one cache;
  warm instances are pooled per (activity, tenant) already);
- actors and workflow instances: `<type>/<tenant>~<id>` in the journal.

Activities uploaded without a tenant (the operator's, `loom activity upload`) are shared:
an actor of a tenant calling `echo` gets the tenant's own `echo` if it has one, else the
shared one.
"""

from __future__ import annotations

from runtime.actors.actor import TENANT_SEP
from schemas.manifest import NAME_PATTERN

ACTIVITY_SEP = "--"
ACTOR_SEP = TENANT_SEP
MAX_NAME = 63
_ = NAME_PATTERN


def activity(tenant: str, name: str) -> str:
    return f"{tenant}{ACTIVITY_SEP}{name}"


def activity_name(tenant: str, internal: str) -> str | None:
    """The tenant's own name of a registry name, or None if it is not the tenant's."""
    prefix = f"{tenant}{ACTIVITY_SEP}"
    return internal[len(prefix):] if internal.startswith(prefix) else None


def actor(tenant: str, type_: str, id_: str) -> str:
    return f"{type_}/{tenant}{ACTOR_SEP}{id_}"


def split_actor(key: str) -> tuple[str, str, str] | None:
    """(tenant, type, id) of an internal actor key, or None if it has no tenant."""
    type_, _, rest = key.partition("/")
    tenant, sep, id_ = rest.partition(ACTOR_SEP)
    if not sep or not tenant:
        return None
    return tenant, type_, id_


def tenant_of_actor(key: str) -> str:
    """What `ActorRuntime(tenant_of=...)` needs: the tenant an actor's calls run as."""
    parts = split_actor(key)
    return parts[0] if parts else key.partition("/")[0]
