"""The service tests' `loom serve` harness: `runtime/service/harness.py`, with the tests'
own actors (`tests/service_actors.py`) loaded by default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime.service.harness import LOOM, ROOT, free_port, upload
from runtime.service.harness import Server as _Server

__all__ = ["LOOM", "ROOT", "Server", "free_port", "upload"]


class Server(_Server):
    def __init__(self, home: Path, *, modules: tuple[str, ...] = ("tests/service_actors.py",),
                 env: dict[str, str] | None = None, **kw: Any) -> None:
        super().__init__(home, modules=modules, env=env, **kw)
