"""Request and response bodies of the API (Pydantic; unknown fields are refused)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InvokeRequest(Strict):
    input: Any = Field(default_factory=dict, description="The activity's JSON input.")
    version: str | None = Field(default=None, description="Pin a version (default: latest).")
    idempotency_key: str | None = Field(default=None, max_length=200)
    timeout_ms: int | None = Field(default=None, gt=0, description="Shorten the deadline.")


class InvokeResponse(BaseModel):
    output: Any
    activity: str
    version: str
    idempotency_key: str
    duration_ms: float
    fuel_used: int | None
    memory_bytes: int
    warm: bool
    logs: list[dict[str, Any]]


class MessageRequest(Strict):
    payload: Any = None
    msg_id: str | None = Field(default=None, min_length=1, max_length=200,
                               description="A repeated id is delivered once.")


class SignalRequest(MessageRequest):
    key: str | None = Field(default=None, description="Correlation key of the wait.")


class AskRequest(MessageRequest):
    timeout_s: float = Field(default=30.0, gt=0, description="How long to wait for the outcome.")


class CancelRequest(Strict):
    reason: str = Field(default="cancelled through the API", max_length=500)


class Queued(BaseModel):
    msg_id: str
    created: bool = Field(description="False: that message id was queued before; nothing new.")


class Outcome(BaseModel):
    msg_id: str
    outcome: str = Field(description="completed, failed, rejected, cancelled, dead_lettered")
    result: Any = None
    error: dict[str, Any] | None = None


class WorkflowStart(Strict):
    workflow: dict[str, Any] = Field(description="A WDL document "
                                     "(schemas/json/workflow.schema.json).")
    input: Any = None
    instance: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]{1,100}$")


class ScheduleRequest(Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    cron: str = Field(description="'m h dom mon dow' (UTC) or '@every <n>s|m|h'", max_length=100)
    target: str = Field(pattern=r"^[^/\s]+/[^\s]+$", description="Actor address: type/id.")
    handler: str = Field(min_length=1, max_length=100)
    payload: Any = None
    missed: Literal["catch-up", "skip"] = Field(
        default="skip", description="After downtime: fire every missed tick, or only the latest.")


class RunRow(BaseModel):
    actor: str = Field(description="type/id, as the tenant names it")
    type: str
    msg: str = Field(description="The message id that started the run.")
    handler: str | None
    status: str = Field(description="running, parked, completed, failed, rejected, cancelled, "
                                    "dead_lettered")
    waiting: str | None = Field(description="While parked: timer or event.")
    started: float
    ended: float | None
    first_seq: int
    last_seq: int
    activities: list[str]
    error: dict[str, Any] | None
    cursor: str = Field(description="Pass as `after` for the rows after this one.")


class RunPage(BaseModel):
    runs: list[RunRow]
    next: str | None = Field(description="`after` for the next page; null on the last page.")
