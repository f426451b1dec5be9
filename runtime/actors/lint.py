"""Determinism lint for actor modules: no ambient clock, randomness, environment or I/O.

Actor code is replayed, so anything that can differ between runs must come from the
context (`ctx.now()`, `ctx.random()`, `ctx.uuid()`, activities for I/O). A line may opt
out with a comment that states why:  `# loom: allow(reason why this is deterministic)`.
"""

from __future__ import annotations

import ast
import inspect
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from runtime import errors

FORBIDDEN_MODULES = {
    "random": "use ctx.random()",
    "secrets": "use ctx.random() or an activity",
    "socket": "network I/O belongs in an activity",
    "ssl": "network I/O belongs in an activity",
    "subprocess": "processes belong in an activity",
    "requests": "network I/O belongs in an activity",
    "httpx": "network I/O belongs in an activity",
    "aiohttp": "network I/O belongs in an activity",
    "urllib.request": "network I/O belongs in an activity",
    "http.client": "network I/O belongs in an activity",
}
FORBIDDEN_ATTRS = {
    "time.time": "use ctx.now()", "time.time_ns": "use ctx.now()",
    "time.monotonic": "use ctx.now()", "time.monotonic_ns": "use ctx.now()",
    "time.perf_counter": "use ctx.now()", "time.localtime": "use ctx.now()",
    "time.gmtime": "use ctx.now()", "time.sleep": "use await ctx.sleep()",
    "datetime.now": "use ctx.now()", "datetime.utcnow": "use ctx.now()",
    "datetime.today": "use ctx.now()", "date.today": "use ctx.now()",
    "uuid.uuid1": "use ctx.uuid()", "uuid.uuid4": "use ctx.uuid()",
    "os.environ": "pass configuration in messages or state",
    "os.getenv": "pass configuration in messages or state",
    "os.urandom": "use ctx.random()", "os.system": "processes belong in an activity",
    "os.remove": "file I/O belongs in an activity", "os.listdir": "file I/O belongs in an activity",
    "asyncio.sleep": "use await ctx.sleep()",
}
FORBIDDEN_FROM = {("time", n) for n in ("time", "time_ns", "monotonic", "perf_counter", "sleep")}
FORBIDDEN_FROM |= {("uuid", "uuid1"), ("uuid", "uuid4"), ("os", "environ"), ("os", "getenv"),
                   ("os", "urandom"), ("asyncio", "sleep")}
FORBIDDEN_CALLS = {"open": "file I/O belongs in an activity", "input": "no console I/O"}
ESCAPE = re.compile(r"#\s*loom:\s*allow\((?P<reason>[^)]*)\)")


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.rule}: {self.message}"


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def check_source(source: str, path: str = "<actor module>") -> list[Violation]:
    """Return every violation in `source` (escaped lines excluded, bad escapes included)."""
    tree = ast.parse(source, filename=path)
    lines = source.splitlines()
    found: list[Violation] = []

    def flag(node: ast.AST, rule: str, message: str) -> None:
        line = getattr(node, "lineno", 0)
        text = lines[line - 1] if 0 < line <= len(lines) else ""
        escape = ESCAPE.search(text)
        if escape is not None:
            if escape.group("reason").strip():
                return
            found.append(Violation(path, line, "escape-without-reason",
                                   "`# loom: allow(...)` must say why the line is safe"))
            return
        found.append(Violation(path, line, rule, message))

    # Names bound by imports, so aliases resolve: `import time as t` makes `t` mean `time`,
    # `from datetime import datetime as dt` makes `dt` mean `datetime.datetime`.
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                aliases[alias.asname or alias.name.split(".")[0]] = (
                    alias.name if alias.asname else alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"

    def canonical(dotted: str) -> str:
        root, _, rest = dotted.partition(".")
        full = aliases.get(root, root)
        return f"{full}.{rest}" if rest else full

    def forbidden_attr(dotted: str) -> str | None:
        full = canonical(dotted)
        for pattern, advice in FORBIDDEN_ATTRS.items():
            if full == pattern or full.endswith("." + pattern):
                return advice
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in FORBIDDEN_MODULES:
                    flag(node, "forbidden-import", f"import {alias.name}: "
                         f"{FORBIDDEN_MODULES[alias.name]}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module in FORBIDDEN_MODULES:
                flag(node, "forbidden-import", f"from {node.module} import ...: "
                     f"{FORBIDDEN_MODULES[node.module]}")
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if full in FORBIDDEN_MODULES:
                    flag(node, "forbidden-import", f"from {node.module} import {alias.name}: "
                         f"{FORBIDDEN_MODULES[full]}")
                elif (node.module, alias.name) in FORBIDDEN_FROM:
                    flag(node, "ambient-nondeterminism",
                         f"from {node.module} import {alias.name}: not replayable")
        elif isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            advice = forbidden_attr(dotted) if dotted is not None else None
            if dotted is not None and advice is not None:
                flag(node, "ambient-nondeterminism", f"{dotted}: {advice}")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in FORBIDDEN_CALLS and node.func.id not in aliases):
            flag(node, "io", f"{node.func.id}(): {FORBIDDEN_CALLS[node.func.id]}")
    return sorted(found, key=lambda v: v.line)


def check_file(path: str | Path) -> list[Violation]:
    p = Path(path)
    return check_source(p.read_text(), str(p))


def check_class(cls: type) -> None:
    """Lint the module that defines `cls`; raise LintError listing every violation."""
    module = sys.modules.get(cls.__module__)
    try:
        source = inspect.getsource(module) if module is not None else None
        path = inspect.getsourcefile(module) if module is not None else None
    except (OSError, TypeError):
        return  # no source (e.g. interactive): nothing to check
    if source is None:
        return
    violations = check_source(source, path or cls.__module__)
    if violations:
        raise errors.LintError(
            f"actor {cls.__qualname__} is not replay-safe:\n  "
            + "\n  ".join(str(v) for v in violations),
            details=[v.__dict__ for v in violations])
