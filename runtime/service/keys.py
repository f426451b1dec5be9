"""API keys: `loom_<id>_<secret>`; the store keeps the id, the tenant, the scopes and a
SHA-256 of the secret (32 random bytes: a fast hash is enough for a secret nobody can guess,
unlike a password), compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

from runtime.service.store import KeyRecord, Store

SCOPES = ("read", "invoke", "write", "admin")
"""read: look; invoke: run activities, message actors, start workflows; write: upload,
cancel, schedules, dead letters; admin: everything, and the fleet's status."""
TENANT_PATTERN = re.compile(r"^[a-z][a-z0-9]{0,19}$")
_KEY = re.compile(r"^loom_([a-z0-9]{12})_([A-Za-z0-9_-]{43})$")


class KeyError_(ValueError):
    """A key or tenant that cannot be made (bad tenant name, unknown scope)."""


@dataclass(frozen=True)
class Principal:
    tenant: str
    key_id: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(store: Store, tenant: str, scopes: list[str], label: str = ""
               ) -> tuple[str, KeyRecord]:
    """Make a key; returns the full key (shown once) and what is stored."""
    if not TENANT_PATTERN.match(tenant):
        raise KeyError_(f"tenant {tenant!r} must match {TENANT_PATTERN.pattern} (lowercase "
                        "letters and digits, at most 20)")
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise KeyError_(f"scopes must be some of {', '.join(SCOPES)} (got "
                        f"{', '.join(unknown) or 'none'})")
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    record = KeyRecord(key_id, tenant, _digest(secret), frozenset(scopes), label, time.time())
    store.add_key(record)
    return f"loom_{key_id}_{secret}", record


class KeyRing:
    """Checks presented keys; revocations are seen within `ttl_s` (records are cached)."""

    def __init__(self, store: Store, ttl_s: float = 2.0) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[float, KeyRecord | None]] = {}

    def check(self, presented: str) -> Principal | None:
        m = _KEY.match(presented)
        if m is None:
            return None
        key_id, secret = m.groups()
        now = time.monotonic()
        hit = self._cache.get(key_id)
        if hit is None or hit[0] < now:
            record = self.store.key(key_id)
            if record is not None:  # misses are not kept: anyone can present new ids
                self._cache[key_id] = (now + self.ttl_s, record)
            else:
                self._cache.pop(key_id, None)
        else:
            record = hit[1]
        if record is None or record.revoked_at is not None:
            return None
        if not hmac.compare_digest(record.hash, _digest(secret)):
            return None
        return Principal(record.tenant, record.id, record.scopes)
