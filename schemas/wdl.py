"""WDL: JSON workflow definitions (a discriminated union of step kinds).

Values anywhere in a step's `input` may contain `{{ path }}` references to the workflow
input (`input.x`) and to earlier steps' outputs (`<output var>.y`); a string that is
exactly one reference keeps the referenced JSON type. Conditions use a small expression
language: comparisons, `and`/`or`/`not`, `in`, literals and paths.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo

from schemas.manifest import NAME_PATTERN, RetryPolicy, SemVer

STEP_ID = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
ACTOR_TYPE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,99}$")
"""An actor type name as an agent step may name it: no '/' (it ends the type in an address
`<type>/<id>`; runtime/actors/actor.py refuses it in a type name) and no '~' (it separates a
tenant from its own id, `<type>/<tenant>~<id>`: runtime/service/tenancy.py). A `type`
holding '/' would carry the start of the actor id, ahead of the tenant prefix that keeps a
tenant's agent steps inside its tenant (wdl/engine.py)."""


def _check_actor_type(v: str, info: ValidationInfo) -> str:
    if not ACTOR_TYPE.fullmatch(v):
        step = info.data.get("id")  # absent when the step's id was refused itself
        who = f"agent step {step!r}" if isinstance(step, str) else "agent step"
        raise ValueError(f"{who}: {v!r} is not an actor type name (1-100 "
                         "letters, digits, '_' or '-', starting with a letter or '_'; "
                         "no '/' or '~')")
    return v


ActorType = Annotated[str, AfterValidator(_check_actor_type),
                      Field(json_schema_extra={"pattern": ACTOR_TYPE.pattern})]


class WdlModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Compensation(WdlModel):
    """The activity that undoes a completed step (runs with its own idempotency keys)."""

    activity: Annotated[str, Field(pattern=NAME_PATTERN)]
    version: str | None = None
    input: Any = None


class StepBase(WdlModel):
    id: Annotated[str, Field(pattern=STEP_ID)]
    description: str = ""
    compensation: Compensation | None = None


class ActivityStep(StepBase):
    kind: Literal["activity"]
    activity: Annotated[str, Field(pattern=NAME_PATTERN)]
    version: str | None = None
    input: Any = None
    output: Annotated[str | None, Field(pattern=STEP_ID)] = None
    retry: RetryPolicy | None = None
    timeout_ms: Annotated[int | None, Field(gt=0)] = None


class AgentStep(StepBase):
    """Ask a child actor (`type`/`actor_id`) to run `handler` with `input`; returns its result."""

    kind: Literal["agent"]
    type: ActorType
    actor_id: Annotated[str, Field(min_length=1)]
    handler: str = "run"
    input: Any = None
    output: Annotated[str | None, Field(pattern=STEP_ID)] = None
    timeout_s: Annotated[float | None, Field(gt=0)] = None


class ParallelStep(StepBase):
    """Run branches concurrently; the output is the list of each branch's last output."""

    kind: Literal["parallel"]
    branches: Annotated[list[list[Step]], Field(min_length=1)]
    output: Annotated[str | None, Field(pattern=STEP_ID)] = None


class ConditionStep(StepBase):
    kind: Literal["condition"]
    if_: Annotated[str, Field(alias="if", min_length=1)]
    then: list[Step] = Field(default_factory=list)
    else_: list[Step] = Field(default_factory=list, alias="else")


class WaitStep(StepBase):
    """Wait for an external event; on timeout run `on_timeout` (or fail if it is absent)."""

    kind: Literal["wait"]
    event: Annotated[str, Field(min_length=1)]
    timeout_s: Annotated[float | None, Field(gt=0)] = None
    output: Annotated[str | None, Field(pattern=STEP_ID)] = None
    on_timeout: list[Step] | None = None


class SleepStep(StepBase):
    kind: Literal["sleep"]
    seconds: Annotated[float, Field(ge=0)]


Step = Annotated[
    ActivityStep | AgentStep | ParallelStep | ConditionStep | WaitStep | SleepStep,
    Field(discriminator="kind"),
]


class Workflow(WdlModel):
    """A workflow definition. Running instances keep the version they started with."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    version: SemVer
    description: str = ""
    input_schema: dict[str, Any] | None = None
    output_schema: dict[str, Any] | None = None
    steps: Annotated[list[Step], Field(min_length=1)]
    output: Any = None

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


for _model in (ParallelStep, ConditionStep, WaitStep, Workflow):
    _model.model_rebuild()
