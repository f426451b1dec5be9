"""The activity manifest: what an uploaded `.wasm` is, what it may do, and its limits."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from schemas.errors import ErrorCode
from schemas.json_schema import SchemaError, compile_schema

SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?"
)
NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,62}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
MiB = 1024 * 1024


def _check_semver(v: str) -> str:
    if not SEMVER.fullmatch(v):
        raise ValueError(f"{v!r} is not a semantic version (MAJOR.MINOR.PATCH)")
    return v


SemVer = Annotated[str, AfterValidator(_check_semver),
                   Field(json_schema_extra={"pattern": SEMVER.pattern})]
"""A semantic version string (semver.org 2.0.0)."""


class Strict(BaseModel):
    """Base for every contract: unknown fields are an error, models are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class AbiKind(StrEnum):
    """How the host talks to the guest. See `activities/README.md`."""

    CORE_V1 = "core-v1"
    WASI_COMMAND = "wasi-command"
    COMPONENT_V1 = "component-v1"
    """A component of the `loom:activity` world (activities/wit/loom.wit): Python, JS."""


class HttpTarget(Strict):
    """One allowlist entry for outbound HTTP."""

    scheme: Literal["http", "https"] = "https"
    host: Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9.\-\[\]:]+$")]
    port: Annotated[int | None, Field(ge=1, le=65535)] = None

    def effective_port(self) -> int:
        return self.port if self.port is not None else (443 if self.scheme == "https" else 80)


class HttpCapability(Strict):
    allow: list[HttpTarget] = Field(min_length=1)
    allow_private: bool = Field(
        default=False,
        description="Permit private, loopback and link-local addresses (off by default).",
    )
    timeout_ms: Annotated[int, Field(gt=0, le=120_000)] = 5_000
    max_response_bytes: Annotated[int, Field(gt=0, le=64 * MiB)] = 1 * MiB
    max_requests: Annotated[int, Field(gt=0, le=10_000)] = 16


class ReadOnlyDir(Strict):
    host_path: Annotated[str, Field(min_length=1)]
    guest_path: Annotated[str, Field(min_length=1, pattern=r"^/")]


class Capabilities(Strict):
    """Everything a guest may reach beyond its own memory. Deny by default."""

    env: list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]] = Field(
        default_factory=list, description="Host environment variable names exposed to the guest."
    )
    secrets: list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]] = Field(
        default_factory=list, description="Secret names the guest may read via the host call."
    )
    dirs: list[ReadOnlyDir] = Field(default_factory=list)
    http: HttpCapability | None = None
    log: bool = False
    clock: bool = False


class Limits(Strict):
    memory_bytes: Annotated[int, Field(gt=0, le=4096 * MiB)] = 64 * MiB
    timeout_ms: Annotated[int, Field(gt=0, le=3_600_000)] = 5_000
    fuel: Annotated[int | None, Field(gt=0)] = None
    stack_bytes: Annotated[int, Field(ge=64 * 1024, le=8 * MiB)] = 512 * 1024
    max_input_bytes: Annotated[int, Field(gt=0, le=256 * MiB)] = 1 * MiB
    max_output_bytes: Annotated[int, Field(gt=0, le=256 * MiB)] = 1 * MiB
    max_log_bytes: Annotated[int, Field(ge=0, le=16 * MiB)] = 64 * 1024
    host_call_timeout_ms: Annotated[int, Field(gt=0, le=120_000)] = 10_000


class RetryPolicy(Strict):
    max_attempts: Annotated[int, Field(ge=1, le=1000)] = 3
    initial_interval_ms: Annotated[int, Field(ge=0)] = 200
    backoff_coefficient: Annotated[float, Field(ge=1.0, le=100.0)] = 2.0
    max_interval_ms: Annotated[int, Field(ge=0)] = 30_000
    jitter: bool = True
    non_retryable: list[ErrorCode] = Field(default_factory=list)

    @model_validator(mode="after")
    def _interval_order(self) -> RetryPolicy:
        if self.max_interval_ms < self.initial_interval_ms:
            raise ValueError("max_interval_ms must be >= initial_interval_ms")
        return self


class ActivityManifest(Strict):
    """Describes one immutable activity version."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    version: SemVer
    sha256: Annotated[str, Field(pattern=SHA256_PATTERN)]
    abi: AbiKind = AbiKind.CORE_V1
    description: str = ""
    input_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    output_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    capabilities: Capabilities = Field(default_factory=Capabilities)
    limits: Limits = Field(default_factory=Limits)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    reuse_instances: bool = Field(
        default=False,
        description="Keep a warm instance between calls of one tenant (guest state survives).",
    )

    @field_validator("input_schema", "output_schema")
    @classmethod
    def _supported_schema(cls, v: dict[str, Any]) -> dict[str, Any]:
        try:
            compile_schema(v)
        except SchemaError as exc:
            raise ValueError(str(exc)) from None
        return v

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


def semver_key(version: str) -> tuple[Any, ...]:
    """Sort key implementing semver precedence (pre-releases before releases)."""
    m = SEMVER.fullmatch(version)
    if m is None:
        raise ValueError(f"{version!r} is not a semantic version")
    major, minor, patch, pre = int(m[1]), int(m[2]), int(m[3]), m[4]
    if pre is None:
        return (major, minor, patch, 1, ())
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
    return (major, minor, patch, 0, parts)
