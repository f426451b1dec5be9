"""The component's entry point, generated around a user's module by `loom activity build`.

`run(input)` decodes the JSON input, calls the handler (converting dataclass parameters),
encodes the result (dataclasses and TypedDicts alike) and turns exceptions into the
world's `error` record. The handler module's name is substituted at build time.
"""

import dataclasses
import importlib
import json
import traceback
import typing

import loom
from componentize_py_types import Err
from wit_world.imports.types import Error

_handler = importlib.import_module("__LOOM_HANDLER_MODULE__")  # the name is set by the build

TRACEBACK_CHARS = 4000
MESSAGE_CHARS = 2000


def _convert(value, hint):
    """Build dataclass parameters (recursively) from JSON values; the rest is as parsed."""
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        hints = typing.get_type_hints(hint)
        return hint(**{k: _convert(v, hints.get(k)) for k, v in value.items()})
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is list and args and isinstance(value, list):
        return [_convert(v, args[0]) for v in value]
    if origin is dict and len(args) == 2 and isinstance(value, dict):
        return {k: _convert(v, args[1]) for k, v in value.items()}
    if origin is typing.Union and value is not None:
        for arg in args:
            if dataclasses.is_dataclass(arg) and isinstance(value, dict):
                try:
                    return _convert(value, arg)
                except TypeError:
                    continue
    return value


def _plain(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


_FUNC = getattr(_handler, "run", None)
_PARAM = None
if _FUNC is not None:
    try:
        _hints = typing.get_type_hints(_FUNC)
    except Exception:
        _hints = {}
    _names = [n for n in _FUNC.__code__.co_varnames[:_FUNC.__code__.co_argcount]]
    _PARAM = _hints.get(_names[0]) if _names else None


def _error(code, message, retryable=False, details=None):
    text = None if details is None else json.dumps(details, default=str)
    return Err(Error(code=code, message=message[:MESSAGE_CHARS], retryable=retryable,
                     details=text))


class WitWorld:
    def run(self, input: str) -> str:
        if _FUNC is None:
            raise _error("guest_error", "the activity module defines no run() function")
        try:
            result = _FUNC(_convert(json.loads(input), _PARAM))
            return json.dumps(result, default=_plain, separators=(",", ":"),
                              ensure_ascii=False, allow_nan=False)
        except loom.ActivityError as exc:
            raise _error(exc.code, exc.message, exc.retryable, exc.details) from None
        except MemoryError:
            raise _error("memory_limit", "MemoryError: the heap reached limits.memory_bytes",
                         details={"type": "MemoryError"}) from None
        except RecursionError as exc:
            raise _error("stack_overflow", f"RecursionError: {exc}",
                         details={"type": "RecursionError"}) from None
        except Exception as exc:
            # the frames only (the message is sent on its own), innermost kept when cut
            tb = "".join(traceback.format_tb(exc.__traceback__))
            if len(tb) > TRACEBACK_CHARS:
                tb = "...\n" + tb[-TRACEBACK_CHARS:]
            raise _error("guest_error", str(exc),
                         details={"type": type(exc).__name__, "traceback": tb}) from None
