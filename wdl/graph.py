"""Mermaid flowchart of a workflow (`loom wdl graph`)."""

from __future__ import annotations

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


def _label(text: str) -> str:
    return text.replace('"', "'")


class _Graph:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.n = 0

    def node(self, shape: str, label: str) -> str:
        self.n += 1
        name = f"n{self.n}"
        open_, close = {"box": ("[", "]"), "round": ("(", ")"), "diamond": ("{", "}"),
                        "stadium": ("([", "])"), "hex": ("{{", "}}")}[shape]
        self.lines.append(f'    {name}{open_}"{_label(label)}"{close}')
        return name

    def edge(self, a: str, b: str, label: str = "") -> None:
        self.lines.append(f"    {a} -->|{_label(label)}| {b}" if label else f"    {a} --> {b}")

    def steps(self, steps: list[Step], entry: str, label: str = "") -> str:
        prev, pending = entry, label
        for step in steps:
            prev = self.step(step, prev, pending)
            pending = ""
        return prev

    def step(self, step: Step, prev: str, label: str) -> str:
        comp = f"<br/>undo: {step.compensation.activity}" if step.compensation else ""
        if isinstance(step, ActivityStep):
            node = self.node("box", f"{step.id}: {step.activity}{comp}")
        elif isinstance(step, AgentStep):
            node = self.node("round", f"{step.id}: ask {step.type}.{step.handler}{comp}")
        elif isinstance(step, SleepStep):
            node = self.node("stadium", f"{step.id}: sleep {step.seconds}s")
        elif isinstance(step, WaitStep):
            node = self.node("hex", f"{step.id}: wait {step.event}"
                             + (f" ({step.timeout_s}s)" if step.timeout_s else ""))
            self.edge(prev, node, label)
            if step.on_timeout:
                join = self.node("round", f"{step.id} done")
                self.edge(node, join, "event")
                end = self.steps(step.on_timeout, node, "timeout")
                self.edge(end, join)
                return join
            return node
        elif isinstance(step, ParallelStep):
            fork = self.node("round", f"{step.id}: parallel")
            self.edge(prev, fork, label)
            join = self.node("round", f"{step.id}: join")
            for branch in step.branches:
                self.edge(self.steps(branch, fork), join)
            return join
        else:
            assert isinstance(step, ConditionStep)
            cond = self.node("diamond", f"{step.id}: {step.if_}")
            self.edge(prev, cond, label)
            join = self.node("round", f"{step.id}: end")
            self.edge(self.steps(step.then, cond, "yes"), join, "" if step.then else "yes")
            self.edge(self.steps(step.else_, cond, "no"), join, "" if step.else_ else "no")
            return join
        self.edge(prev, node, label)
        return node


def mermaid(wf: Workflow) -> str:
    g = _Graph()
    start = g.node("stadium", f"start {wf.ref}")
    end = g.steps(wf.steps, start)
    g.edge(end, g.node("stadium", "end"))
    return "flowchart TD\n" + "\n".join(g.lines) + "\n"
