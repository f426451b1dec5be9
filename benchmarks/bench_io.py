"""Shared by the benchmarks: report formatting and merging a section into `.loom/bench.json`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def write_section(key: str, result: dict[str, Any]) -> Path:
    """Replace the top-level `key` of .loom/bench.json, keeping every other section."""
    path = ROOT / ".loom" / "bench.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {}
    if path.is_file():
        try:
            loaded = json.loads(path.read_text())
            if isinstance(loaded, dict):
                doc = loaded
        except ValueError:
            print(f"WARNING: {path} was not valid JSON; rewriting it")
    doc[key] = result
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def fmt(v: float | None, spec: str = ".1f", none: str = "n/a") -> str:
    return none if v is None else format(v, spec)


def verdict(value: float | None, goal: float, *, at_most: bool) -> str:
    if value is None:
        return "n/a"
    return "PASS" if (value <= goal if at_most else value >= goal) else "MISS"
