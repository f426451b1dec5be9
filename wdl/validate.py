"""Validate a workflow before anything runs; report every problem with its JSON path."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from runtime import errors
from schemas.json_schema import SchemaError, compile_schema
from schemas.wdl import (
    ActivityStep,
    AgentStep,
    ConditionStep,
    ParallelStep,
    SleepStep,
    Step,
    WaitStep,
    Workflow,
)
from wdl.expressions import (
    LITERALS,
    ExpressionError,
    compile_expression,
    compile_path,
    references,
    roots,
)

ActivityCheck = Callable[[str, str | None], bool]
"""known(name, version) -> whether the registry has that activity."""


def output_var(step: Any) -> str | None:
    if isinstance(step, ActivityStep | AgentStep | ParallelStep | WaitStep):
        return step.output or step.id
    return None


def load(source: str | Path | dict[str, Any], *,
         known_activity: ActivityCheck | None = None) -> Workflow:
    """Parse and validate a workflow from a file path, JSON text or a dict."""
    name = "workflow"
    raw: Any = source
    if isinstance(source, Path) or (isinstance(source, str) and not source.lstrip()
                                    .startswith("{")):
        name = str(source)
        try:
            raw = json.loads(Path(source).read_text())
        except OSError as exc:
            raise errors.WorkflowInvalid(name, [{"path": "", "message": str(exc)}]) from None
        except json.JSONDecodeError as exc:
            raise errors.WorkflowInvalid(name, [{
                "path": "", "message": f"not JSON: {exc.msg} at line {exc.lineno} column "
                                       f"{exc.colno}"}]) from None
    elif isinstance(source, str):
        try:
            raw = json.loads(source)
        except json.JSONDecodeError as exc:
            raise errors.WorkflowInvalid(name, [{"path": "", "message": f"not JSON: {exc.msg}"}]
                                         ) from None
    return validate(raw, source=name, known_activity=known_activity)


def validate(raw: Any, *, source: str = "workflow",
             known_activity: ActivityCheck | None = None) -> Workflow:
    try:
        wf = Workflow.model_validate(raw)
    except ValidationError as exc:
        problems = [{"path": _pointer(e["loc"]), "message": e["msg"]} for e in exc.errors()]
        raise errors.WorkflowInvalid(source, problems) from None
    problems = _Checker(wf, known_activity).run()
    if problems:
        raise errors.WorkflowInvalid(f"{source} ({wf.ref})", problems)
    return wf


class _Checker:
    def __init__(self, wf: Workflow, known: ActivityCheck | None) -> None:
        self.wf = wf
        self.known = known
        self.problems: list[dict[str, str]] = []
        self.ids: dict[str, str] = {}
        self.all_vars: dict[str, str] = {}

    def problem(self, path: str, message: str) -> None:
        self.problems.append({"path": path, "message": message})

    def run(self) -> list[dict[str, str]]:
        for key in ("input_schema", "output_schema"):
            schema = getattr(self.wf, key)
            if schema is not None:
                try:
                    compile_schema(schema)
                except SchemaError as exc:
                    self.problem(f"/{key}", str(exc))
        self._collect(self.wf.steps, "/steps")
        defined = self._steps(self.wf.steps, "/steps", {"input"})
        self._refs(self.wf.output, "/output", defined)
        return self.problems

    def _collect(self, steps: list[Step], path: str) -> None:
        """Record every step id and output variable (to tell 'later' from 'undefined')."""
        for i, step in enumerate(steps):
            here = f"{path}/{i}"
            if step.id in self.ids:
                self.problem(f"{here}/id", f"duplicate step id {step.id!r} (first at "
                                           f"{self.ids[step.id]})")
            else:
                self.ids[step.id] = here
            var = output_var(step)
            if var is not None:
                if var == "input":
                    self.problem(f"{here}/output", "'input' is reserved for the workflow input")
                elif var in LITERALS:  # `{{ true.x }}` would read the literal, not the step
                    where = "output" if getattr(step, "output", None) else "id"
                    self.problem(f"{here}/{where}", f"{var!r} is a literal in expressions; "
                                 "name the step's output otherwise")
                self.all_vars.setdefault(var, here)
            for sub, key in _children(step):
                self._collect(sub, f"{here}/{key}")

    def _refs(self, value: Any, path: str, defined: set[str]) -> None:
        for pointer, text in references(value, path):
            try:
                node = compile_path(text)
            except ExpressionError as exc:
                self.problem(pointer, str(exc))
                continue
            self._names(roots(node), pointer, defined)

    def _names(self, names: set[str], pointer: str, defined: set[str]) -> None:
        for name in sorted(names - defined):
            if name in self.all_vars:
                self.problem(pointer, f"refers to {name!r}, produced by "
                             f"{self.all_vars[name]} which does not run before this point "
                             "(a forward reference or cycle)")
            else:
                self.problem(pointer, f"refers to undefined variable {name!r}")

    def _steps(self, steps: list[Step], path: str, defined: set[str]) -> set[str]:
        defined = set(defined)
        for i, step in enumerate(steps):
            here = f"{path}/{i}"
            if isinstance(step, ActivityStep):
                self._refs(step.input, f"{here}/input", defined)
                if self.known is not None and not self.known(step.activity, step.version):
                    what = f"{step.activity}@{step.version}" if step.version else step.activity
                    self.problem(f"{here}/activity", f"activity {what} is not registered")
            elif isinstance(step, AgentStep):
                self._refs(step.input, f"{here}/input", defined)
                self._refs(step.actor_id, f"{here}/actor_id", defined)
            elif isinstance(step, ParallelStep):
                produced: set[str] = set()
                for b, branch in enumerate(step.branches):
                    produced |= self._steps(branch, f"{here}/branches/{b}", defined) - defined
                defined |= produced
            elif isinstance(step, ConditionStep):
                try:
                    self._names(roots(compile_expression(step.if_)), f"{here}/if", defined)
                except ExpressionError as exc:
                    self.problem(f"{here}/if", str(exc))
                then = self._steps(step.then, f"{here}/then", defined)
                other = self._steps(step.else_, f"{here}/else", defined)
                defined |= then | other  # may be unset at run time: referencing it is allowed
            elif isinstance(step, WaitStep) and step.on_timeout is not None:
                defined |= self._steps(step.on_timeout, f"{here}/on_timeout", defined)
            elif isinstance(step, SleepStep | WaitStep):
                pass
            var = output_var(step)
            if var is not None:
                defined.add(var)
            if step.compensation is not None:
                comp = step.compensation
                self._refs(comp.input, f"{here}/compensation/input", defined)
                if self.known is not None and not self.known(comp.activity, comp.version):
                    self.problem(f"{here}/compensation/activity",
                                 f"activity {comp.activity} is not registered")
        return defined


STEP_KINDS = {"activity", "agent", "parallel", "condition", "wait", "sleep"}
ALIASES = {"if_": "if", "else_": "else"}


def _pointer(loc: tuple[Any, ...]) -> str:
    """A JSON pointer from a pydantic location, without the union tags pydantic inserts."""
    parts: list[str] = []
    for i, part in enumerate(loc):
        if isinstance(part, str) and part in STEP_KINDS and i > 0 and isinstance(loc[i - 1], int):
            continue
        text = ALIASES.get(str(part), str(part))
        parts.append(text.replace("~", "~0").replace("/", "~1"))
    return "/" + "/".join(parts)


def declared_vars(steps: list[Step]) -> set[str]:
    """Every output variable any step (at any depth) can set."""
    found: set[str] = set()
    for step in steps:
        var = output_var(step)
        if var is not None:
            found.add(var)
        for sub, _ in _children(step):
            found |= declared_vars(sub)
    return found


def _children(step: Any) -> list[tuple[list[Step], str]]:
    if isinstance(step, ParallelStep):
        return [(b, f"branches/{i}") for i, b in enumerate(step.branches)]
    if isinstance(step, ConditionStep):
        return [(step.then, "then"), (step.else_, "else")]
    if isinstance(step, WaitStep) and step.on_timeout is not None:
        return [(step.on_timeout, "on_timeout")]
    return []
