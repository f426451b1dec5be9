"""A workflow's flowchart as data (nodes and edges), read back from the Mermaid text that
`wdl.mermaid` writes, so the Studio can draw it as SVG and colour each step by status.

The text is ours (`wdl/graph.py`): one `name<open>"label"<close>` line per node, one
`a --> b` or `a -->|label| b` line per edge."""

from __future__ import annotations

import re
from typing import Any

_SHAPES = (('([', '])', "stadium"), ('{{', '}}', "hex"), ('[', ']', "box"),
           ('(', ')', "round"), ('{', '}', "diamond"))
_NODE = re.compile(r'^\s+(n\d+)([\[\(\{]+)"(.*)"([\]\)\}]+)\s*$')
_EDGE = re.compile(r'^\s+(n\d+) -->(?:\|(.*)\|)? (n\d+)\s*$')
_STEP = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*): ")


def parse(text: str) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Nodes `{id, label, shape, step}` in the order written (`step`: the workflow step a
    node belongs to, None for start, end and joins without one) and edges `{from, to,
    label}`. A compensation shows as a second label line (`undo: ...`)."""
    nodes: list[dict[str, Any]] = []
    edges: list[dict[str, str]] = []
    for line in text.splitlines():
        if m := _NODE.match(line):
            name, open_, label, _close = m.groups()
            shape = next((s for o, _c, s in _SHAPES if o == open_), "box")
            step = _STEP.match(label)
            nodes.append({"id": name, "label": label.replace("<br/>", "\n"), "shape": shape,
                          "step": step.group(1) if step else None})
        elif m := _EDGE.match(line):
            edges.append({"from": m.group(1), "to": m.group(3), "label": m.group(2) or ""})
    return nodes, edges
