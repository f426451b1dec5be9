"""The activity registry: manifests and content-addressed wasm in a blob store.

Layout (no database needed):
    wasm/<sha256>.wasm                  the module bytes, written once
    manifests/<name>/<version>.json     the manifest, written once, after its wasm
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from runtime import errors
from runtime.backends.blob import BlobStore, Progress
from schemas.manifest import ActivityManifest, semver_key


@dataclass(frozen=True)
class UploadResult:
    manifest: ActivityManifest
    created: bool
    """False when this exact version was already stored with identical content."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_manifest(raw: Any, *, source: str = "manifest") -> ActivityManifest:
    """Validate a manifest dict (or JSON text); errors name each bad field."""
    if isinstance(raw, str | bytes):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise errors.ManifestInvalid(
                f"{source} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from None
    if isinstance(raw, ActivityManifest):
        return raw
    try:
        return ActivityManifest.model_validate(raw)
    except ValidationError as exc:
        raise errors.ManifestInvalid(
            f"{source} is invalid: " + "; ".join(_describe(e) for e in exc.errors()),
            details=[{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()],
        ) from None


def _describe(err: Any) -> str:
    loc = ".".join(str(p) for p in err["loc"]) or "<root>"
    return f"{loc}: {err['msg']}"


class ActivityRegistry:
    def __init__(self, blob: BlobStore, *, latest_ttl_s: float = 2.0) -> None:
        self.blob = blob
        self.latest_ttl_s = latest_ttl_s
        self._pinned: dict[tuple[str, str], ActivityManifest] = {}
        self._latest: dict[str, tuple[float, ActivityManifest]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def manifest_key(name: str, version: str) -> str:
        return f"manifests/{name}/{version}.json"

    @staticmethod
    def wasm_key(sha256: str) -> str:
        return f"wasm/{sha256}.wasm"

    def store(self, wasm: bytes, manifest: ActivityManifest, *,
              progress: Progress | None = None) -> UploadResult:
        """Store an already verified (wasm, manifest) pair. Versions are immutable."""
        if sha256_hex(wasm) != manifest.sha256:
            raise errors.IntegrityError("wasm bytes do not match the manifest's sha256",
                                        activity=manifest.name, version=manifest.version)
        existing = self._read(manifest.name, manifest.version)
        if existing is not None:
            return self._same_or_conflict(existing, manifest)
        self.blob.put_if_absent(self.wasm_key(manifest.sha256), wasm, progress=progress)
        body = manifest.model_dump_json(indent=2).encode()
        if not self.blob.put_if_absent(self.manifest_key(manifest.name, manifest.version), body):
            winner = self._read(manifest.name, manifest.version)
            assert winner is not None
            return self._same_or_conflict(winner, manifest)
        with self._lock:
            self._latest.pop(manifest.name, None)
        return UploadResult(manifest, created=True)

    @staticmethod
    def _same_or_conflict(existing: ActivityManifest, new: ActivityManifest) -> UploadResult:
        if existing == new:
            return UploadResult(existing, created=False)
        what = "wasm bytes" if existing.sha256 != new.sha256 else "manifest"
        raise errors.VersionConflict(
            f"{new.ref} already exists with a different {what}; versions are immutable, "
            "publish a new version instead", activity=new.name, version=new.version)

    def _read(self, name: str, version: str) -> ActivityManifest | None:
        try:
            raw = self.blob.get(self.manifest_key(name, version))
        except errors.NotFound:
            return None
        return parse_manifest(raw, source=f"stored manifest {name}@{version}")

    def get(self, name: str, version: str | None = None) -> ActivityManifest:
        """Resolve `name@version`, or the latest version of `name` when version is None."""
        if version is not None:
            key = (name, version)
            found = self._pinned.get(key)
            if found is None:
                found = self._read(name, version)
                if found is None:
                    raise errors.NotFound(f"activity {name}@{version} is not registered",
                                          activity=name, version=version)
                self._pinned[key] = found
            return found
        cached = self._latest.get(name)
        now = time.monotonic()
        if cached is not None and now - cached[0] < self.latest_ttl_s:
            return cached[1]
        versions = self.versions(name)
        if not versions:
            raise errors.NotFound(f"activity {name!r} is not registered", activity=name)
        manifest = self.get(name, versions[-1])
        self._latest[name] = (now, manifest)
        return manifest

    def versions(self, name: str) -> list[str]:
        """Versions of `name`, lowest first (semver order)."""
        prefix = f"manifests/{name}/"
        keys = self.blob.list(prefix)
        found = [k[len(prefix):-len(".json")] for k in keys if k.endswith(".json")]
        return sorted(found, key=semver_key)

    def names(self) -> list[str]:
        return sorted({k.split("/")[1] for k in self.blob.list("manifests/") if k.count("/") == 2})

    def fetch_wasm(self, manifest: ActivityManifest) -> bytes:
        """The module bytes, verified against the manifest's sha256."""
        data = self.blob.get(self.wasm_key(manifest.sha256))
        if sha256_hex(data) != manifest.sha256:
            raise errors.IntegrityError(
                f"stored wasm for {manifest.ref} does not match its sha256 {manifest.sha256[:12]}…",
                activity=manifest.name, version=manifest.version)
        return data
