"""Find the actor classes of a module given as a dotted name or a file path."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from types import ModuleType

from runtime import errors
from runtime.actors.actor import Actor


def load_module(spec: str) -> ModuleType:
    path = Path(spec)
    if spec.endswith(".py") or path.is_file():
        if not path.is_file():
            raise errors.NotFound(f"actor module file {spec} does not exist")
        name = f"loom_actors_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise errors.NotFound(f"cannot load {spec} as a Python module")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        raise errors.NotFound(f"actor module {spec!r} not found: {exc}") from None


def actor_classes(module: ModuleType) -> list[type[Actor]]:
    """Actor subclasses defined in `module` (not imported into it)."""
    return [obj for _, obj in inspect.getmembers(module, inspect.isclass)
            if issubclass(obj, Actor) and obj is not Actor and obj.__module__ == module.__name__]
