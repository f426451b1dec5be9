"""JSON the guest sends to the host: the core-v1 error result and host-call requests."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class GuestErrorResult(BaseModel):
    """What a core-v1 guest returns with bit 63 set."""

    model_config = ConfigDict(extra="allow")

    message: str
    retryable: bool = False
    code: str | None = None


class LogRequest(BaseModel):
    op: Literal["log"]
    level: Literal["debug", "info", "warning", "warn", "error"] = "info"
    message: str
    fields: dict[str, Any] = Field(default_factory=dict)


class EnvRequest(BaseModel):
    op: Literal["env"]
    name: str


class SecretRequest(BaseModel):
    op: Literal["secret"]
    name: str


class IdempotencyKeyRequest(BaseModel):
    op: Literal["idempotency_key"]


class HttpRequest(BaseModel):
    op: Literal["http"]
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    body: str | None = None


HostCallRequest = Annotated[
    LogRequest | EnvRequest | SecretRequest | IdempotencyKeyRequest | HttpRequest,
    Field(discriminator="op"),
]
