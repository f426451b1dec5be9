"""The activity registry: manifests and content-addressed wasm in a blob store.

Layout (no database needed):
    wasm/<sha256>.wasm                  the module bytes, written once
    manifests/<name>/<version>.json     the manifest, written once, after its wasm
    yanked/<name>/<version>.json        present while the version is yanked: still served
                                        to callers that pin it, never chosen as "latest"
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
from schemas.json_text import JsonTextError, parse_json_text
from schemas.manifest import (
    ActivityManifest,
    Capabilities,
    HttpCapability,
    HttpTarget,
    Limits,
    ReadOnlyDir,
    RetryPolicy,
    semver_key,
)


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
            raw = parse_json_text(raw, source)
        except JsonTextError as exc:
            raise errors.ManifestInvalid(str(exc)) from None
    if isinstance(raw, ActivityManifest):
        return raw
    if not isinstance(raw, dict):
        raise errors.ManifestInvalid(
            f"{source} must be a JSON object with name, version, abi, ..., not {_kind(raw)}",
            details=[{"loc": [], "msg": "must be a JSON object"}])
    try:
        return ActivityManifest.model_validate(raw)
    except ValidationError as exc:
        problems = [(_field(e["loc"]), _message(e)) for e in exc.errors()]
        raise errors.ManifestInvalid(
            f"{source} is invalid: " + "; ".join(f"{loc}: {msg}" for loc, msg in problems),
            details=[{"loc": list(e["loc"]), "msg": msg}
                     for e, (_, msg) in zip(exc.errors(), problems, strict=True)],
        ) from None


_PATTERN_MEANING = {
    ("name",): "must be 1-63 lowercase letters, digits, '_' or '-', starting with a letter",
    ("sha256",): "must be the 64 lowercase hex digits of the wasm's SHA-256 (or leave it out "
                 "and it is computed at upload)",
}


_MODELS: dict[str, Any] = {
    "": ActivityManifest, "limits": Limits, "capabilities": Capabilities,
    "capabilities.http": HttpCapability, "capabilities.http.allow": HttpTarget,
    "capabilities.dirs": ReadOnlyDir, "retry": RetryPolicy}


def _kind(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _field(loc: tuple[Any, ...]) -> str:
    """A dotted field path, list positions as numbers: capabilities.http.allow.0.host."""
    return ".".join(str(p) for p in loc) or "manifest"


def _message(err: Any) -> str:
    """Pydantic's message without its internals (model names, 'Value error,' prefixes)."""
    loc, kind, msg = tuple(err["loc"]), err["type"], str(err["msg"])
    if kind == "string_pattern_mismatch" and loc in _PATTERN_MEANING:
        return _PATTERN_MEANING[loc]
    if kind == "extra_forbidden":
        parent = ".".join(str(p) for p in loc[:-1] if not isinstance(p, int))
        model = _MODELS.get(parent)
        known = f" (allowed here: {', '.join(model.model_fields)})" if model else ""
        return f"unknown field{known}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a JSON object, not {_kind(err.get('input'))}"
    return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")


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

    @staticmethod
    def yank_key(name: str, version: str) -> str:
        return f"yanked/{name}/{version}.json"

    # -- yanking -------------------------------------------------------------------------------
    def yank(self, name: str, version: str, *, reason: str = "") -> None:
        """Withdraw `name@version` from "latest"; pinned callers still get it."""
        self.get(name, version)  # NotFound if there is no such version
        body = json.dumps({"reason": reason, "at": time.time()}).encode()
        self.blob.put_if_absent(self.yank_key(name, version), body)
        with self._lock:
            self._latest.pop(name, None)

    def unyank(self, name: str, version: str) -> None:
        self.get(name, version)
        self.blob.delete(self.yank_key(name, version))
        with self._lock:
            self._latest.pop(name, None)

    def yanked(self, name: str) -> set[str]:
        prefix = f"yanked/{name}/"
        return {k[len(prefix):-len(".json")] for k in self.blob.list(prefix)
                if k.endswith(".json")}

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
        if existing.sha256 != new.sha256:
            what = (f"with different wasm bytes (stored sha256 {existing.sha256[:12]}…, "
                    f"uploaded {new.sha256[:12]}…)")
        else:
            old, fresh = existing.model_dump(), new.model_dump()
            fields = [k for k in fresh if old.get(k) != fresh.get(k)]
            what = f"with a different manifest (fields that differ: {', '.join(fields)})"
        raise errors.VersionConflict(
            f"{new.ref} already exists {what}; versions are immutable, so publish this as a "
            "new version (bump \"version\" in the manifest)",
            activity=new.name, version=new.version)

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
        yanked = self.yanked(name)
        eligible = [v for v in versions if v not in yanked]
        if not eligible:
            raise errors.NotFound(
                f"every version of {name!r} is yanked ({', '.join(versions)}); pin one as "
                f"{name}@<version>, or `loom activity yank --undo {name}@<version>`",
                activity=name)
        manifest = self.get(name, eligible[-1])
        self._latest[name] = (now, manifest)
        return manifest

    def cached(self, name: str, version: str | None = None) -> ActivityManifest | None:
        """What `get` would answer now if it needs no storage read, else None."""
        if version is not None:
            return self._pinned.get((name, version))
        cached = self._latest.get(name)
        if cached is None or time.monotonic() - cached[0] >= self.latest_ttl_s:
            return None
        return cached[1]

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
