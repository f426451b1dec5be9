"""Pydantic models of every JSON contract; JSON Schema exports live in schemas/json/."""

from schemas.errors import ErrorCode
from schemas.guest import GuestErrorResult, HostCallRequest
from schemas.manifest import (
    AbiKind,
    ActivityManifest,
    Capabilities,
    HttpCapability,
    HttpTarget,
    Limits,
    ReadOnlyDir,
    RetryPolicy,
)

__all__ = ["AbiKind", "ActivityManifest", "Capabilities", "ErrorCode", "GuestErrorResult",
           "HostCallRequest", "HttpCapability", "HttpTarget", "Limits", "ReadOnlyDir",
           "RetryPolicy"]
