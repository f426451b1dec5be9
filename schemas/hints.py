"""Input and output JSON Schemas from a handler's type hints (Python activities).

`schemas_for(run)` derives the manifest's `input_schema` from the handler's single
parameter and `output_schema` from its return annotation, with
`pydantic.TypeAdapter(...).json_schema()`: TypedDicts, dataclasses, Pydantic models,
nested types (as `$defs`/`$ref`), unions, `Literal`, `list`, `dict`, `Optional`. Each
schema is checked by the manifest's compiler (schemas/json_schema.py) before it is
returned, so a schema from here never fails at upload.

`schemas_for_file(path)` does the same for a guest source file (an activity written for
componentize-py) without running it in the sandbox: the file is executed on the host with
stub modules standing in for the guest-only imports (`loom`, the generated WIT bindings).
"""

from __future__ import annotations

import inspect
import sys
import threading
import types
import typing
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib.abc import Loader, MetaPathFinder
from importlib.machinery import ModuleSpec
from pathlib import Path
from typing import Any

import typing_extensions
from pydantic import PydanticSchemaGenerationError, PydanticUserError, TypeAdapter
from pydantic.errors import PydanticInvalidForJsonSchema

from schemas.errors import GuestSourceError, HintError, SignatureError
from schemas.json_schema import SchemaError, compile_schema

__all__ = ["GUEST_ONLY_MODULES", "schemas_for", "schemas_for_file"]

GUEST_ONLY_MODULES = ("loom", "wit_world", "componentize_py_types", "componentize_py_runtime",
                      "componentize_py_async_support", "poll_loop")
"""Top-level modules that exist only inside the component; stubbed (with their
submodules) while a guest file is loaded on the host."""

LOOM_FUNCTIONS = ("log", "http", "secret", "env", "idempotency_key")
"""The guest SDK's capability functions (activities/sdk/python/loom.py)."""

_loading = threading.Lock()  # sys.modules is process-wide: one guest file at a time


def schemas_for(func: Callable[..., object]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(input schema, output schema) of a one-parameter handler, from its annotations.

    Raises SignatureError naming the function and the parameter when there is not
    exactly one parameter, an annotation is missing or cannot be resolved, or Pydantic
    cannot turn it into a JSON Schema the manifest compiler accepts.
    """
    name = getattr(func, "__qualname__", None) or repr(func)
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError) as exc:
        raise SignatureError(f"has no inspectable signature ({exc})", function=name) from None
    params = list(signature.parameters.values())
    if len(params) != 1:
        shown = ", ".join(p.name for p in params) or "none"
        raise SignatureError(f"a handler takes exactly one parameter (the input), not "
                             f"{len(params)} ({shown})", function=name,
                             param=params[1].name if len(params) > 1 else None)
    param = params[0]
    if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.KEYWORD_ONLY):
        raise SignatureError("the input must be a positional parameter, not "
                             f"{param.kind.description}", function=name, param=param.name)
    hints: dict[str, Any] = {}
    for key, annotation in (("input", param.annotation),
                            ("return", signature.return_annotation)):
        where = param.name if key == "input" else "return"
        if annotation is inspect.Parameter.empty:
            raise SignatureError("has no type annotation; annotate it with the JSON shape "
                                 "(a TypedDict, dataclass, Pydantic model or builtin type)",
                                 function=name, param=where)
        hints[key] = _resolve(annotation, func, name, where)
    return (_schema(hints["input"], name, param.name),
            _schema(hints["return"], name, "return"))


def schemas_for_file(path: Path, func: str = "run") -> tuple[dict[str, Any], dict[str, Any]]:
    """(input schema, output schema) of the handler `func` in a guest Python source file.

    The file runs on the host under a unique module name, with stubs for the guest-only
    modules (GUEST_ONLY_MODULES; `loom.*` functions raise if called while loading);
    sys.modules is restored afterwards. Raises GuestSourceError (file and line) when the
    file cannot be read, parsed or imported or has no such function, and SignatureError
    (with file and line) for a handler whose hints give no schema.
    """
    path = Path(path)
    shown = str(path)
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise GuestSourceError(f"cannot read the file ({exc})", file=shown) from None
    try:
        code = compile(source, shown, "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise GuestSourceError(f"syntax error: {exc.msg}", file=shown,
                               line=exc.lineno) from None
    module_name = f"_loom_guest_{uuid.uuid4().hex}"
    module = types.ModuleType(module_name)
    module.__file__ = str(path.resolve())
    with _loading, _guest_modules(module):
        try:
            exec(code, module.__dict__)
        except ImportError as exc:
            missing = f" {exc.name!r}" if exc.name else ""
            raise GuestSourceError(
                f"cannot import{missing} on the host ({exc}); guest files may import the "
                f"standard library, pure-Python packages installed here and "
                f"{', '.join(GUEST_ONLY_MODULES)}", file=shown,
                line=_line_in(exc, shown)) from None
        except Exception as exc:
            raise GuestSourceError(f"loading the file raised {type(exc).__name__}: {exc}",
                                   file=shown, line=_line_in(exc, shown)) from None
        handler = module.__dict__.get(func)
        if handler is None or not callable(handler):
            what = "has no" if handler is None else "has a non-callable"
            raise GuestSourceError(f"{what} function {func!r} (the handler)", file=shown)
        line = getattr(getattr(handler, "__code__", None), "co_firstlineno", None)
        try:
            return schemas_for(handler)
        except HintError as exc:
            raise exc.located(shown, line) from None


# -- annotations -> schemas --------------------------------------------------------------------

def _resolve(annotation: Any, func: Callable[..., object], name: str, where: str) -> Any:
    """The annotation with string (postponed) annotations evaluated."""
    if isinstance(annotation, str):
        try:
            hints = typing.get_type_hints(func, include_extras=True)
        except Exception as exc:  # NameError, SyntaxError, TypeError from user code
            raise SignatureError(f"annotation {annotation!r} cannot be resolved: "
                                 f"{type(exc).__name__}: {exc}", function=name,
                                 param=where) from None
        annotation = hints.get(where, annotation)
    return annotation


def _schema(annotation: Any, name: str, where: str) -> dict[str, Any]:
    if annotation is None or annotation is type(None):
        annotation = type(None)
    try:
        schema = TypeAdapter(_portable(annotation, {})).json_schema()
    except (PydanticSchemaGenerationError, PydanticInvalidForJsonSchema,
            PydanticUserError) as exc:
        reason = str(exc).strip().splitlines()[0]
        raise SignatureError(f"Pydantic cannot make a JSON Schema of {_show(annotation)}: "
                             f"{reason}", function=name, param=where) from None
    except (TypeError, NameError, AttributeError) as exc:
        raise SignatureError(f"Pydantic cannot make a JSON Schema of {_show(annotation)}: "
                             f"{type(exc).__name__}: {exc}", function=name,
                             param=where) from None
    try:
        compile_schema(schema)
    except SchemaError as exc:
        raise SignatureError(f"the JSON Schema of {_show(annotation)} is outside what "
                             f"manifests support: {exc}", function=name,
                             param=where) from None
    return schema


def _show(annotation: Any) -> str:
    return getattr(annotation, "__qualname__", None) or repr(annotation)


def _portable(annotation: Any, seen: dict[Any, Any]) -> Any:
    """`annotation` with `typing.TypedDict` classes replaced by typing_extensions ones.

    Guest files written for componentize-py use `from typing import TypedDict`, which
    Pydantic refuses on Python < 3.12. The replacement keeps the name, docstring, keys
    and required keys, so the schema is the same as on 3.12.
    """
    if sys.version_info >= (3, 12):
        return annotation
    if typing_extensions.is_typeddict(annotation) and type(annotation).__module__ == "typing":
        return _typed_dict(annotation, seen)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is None or not args:
        return annotation
    if origin is typing.Annotated:
        return typing.Annotated[(_portable(args[0], seen), *annotation.__metadata__)]
    if origin is typing.Literal:
        return annotation
    new = tuple(_portable(a, seen) if a is not Ellipsis else a for a in args)
    if new == args:
        return annotation
    if origin is types.UnionType or origin is typing.Union:
        return typing.Union[new]  # noqa: UP007
    if origin in (typing.Required, typing.NotRequired, typing_extensions.Required,
                  typing_extensions.NotRequired, typing.ClassVar):
        return origin[new[0]]
    try:
        return origin[new] if len(new) > 1 else origin[new[0]]
    except TypeError:
        return annotation


def _typed_dict(cls: Any, seen: dict[Any, Any]) -> Any:
    if cls in seen:
        return seen[cls]
    # Created empty and filled in after, so a TypedDict that refers to itself terminates.
    factory: Any = typing_extensions.TypedDict
    twin: Any = factory(cls.__name__, {}, total=cls.__total__)
    twin.__module__, twin.__qualname__, twin.__doc__ = (
        cls.__module__, cls.__qualname__, cls.__doc__)
    seen[cls] = twin
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
    except Exception:  # an unresolved name: Pydantic reports it with the type's name
        hints = dict(cls.__annotations__)
    twin.__annotations__ = {k: _portable(v, seen) for k, v in hints.items()}
    twin.__required_keys__ = frozenset(cls.__required_keys__)
    twin.__optional_keys__ = frozenset(cls.__optional_keys__)
    return twin


# -- loading a guest file ----------------------------------------------------------------------

def _line_in(exc: BaseException, file: str) -> int | None:
    """The last line of `file` in the traceback of `exc`."""
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == file:
            line = tb.tb_lineno
        tb = tb.tb_next
    if line is None and isinstance(exc, SyntaxError) and exc.filename == file:
        line = exc.lineno
    return line


def _guest_only(name: str) -> bool:
    return name.split(".", 1)[0] in GUEST_ONLY_MODULES


class _Stub(types.ModuleType):
    """A guest-only module: every attribute is a class (usable as a base, callable)."""

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        value = type(attr, (Exception,), {"__module__": self.__name__})
        setattr(self, attr, value)
        return value


def _host_only(name: str) -> Callable[..., object]:
    def call(*args: object, **kwargs: object) -> object:
        raise RuntimeError(f"loom.{name}() runs only inside the component, not while "
                           "the host reads the handler's type hints")
    call.__name__ = name
    return call


class _StubFinder(MetaPathFinder, Loader):
    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: types.ModuleType | None = None) -> ModuleSpec | None:
        if not _guest_only(fullname):
            return None
        return ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec: ModuleSpec) -> types.ModuleType:
        module = _Stub(spec.name)
        module.__path__ = []
        if spec.name == "loom":
            for name in LOOM_FUNCTIONS:
                setattr(module, name, _host_only(name))
            module.ActivityError = type(  # type: ignore[attr-defined]
                "ActivityError", (Exception,), {"__module__": "loom"})
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        return None


@contextmanager
def _guest_modules(module: types.ModuleType) -> Iterator[None]:
    """Make `module` and the guest-only stubs importable; restore sys.modules after."""
    saved = {k: v for k, v in sys.modules.items() if _guest_only(k)}
    for k in saved:
        del sys.modules[k]
    finder = _StubFinder()
    sys.meta_path.insert(0, finder)
    sys.modules[module.__name__] = module  # dataclasses and get_type_hints look it up
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        sys.modules.pop(module.__name__, None)
        for k in [k for k in sys.modules if _guest_only(k)]:
            del sys.modules[k]
        sys.modules.update(saved)

