"""The actor API: subclass `Actor`, mark async handlers with `@handler`, state is JSON.

    class Counter(Actor, type_name="counter"):
        State = CounterState              # a Pydantic model, or leave None for a dict

        @handler
        async def add(self, ctx: ActorContext, payload: dict) -> int:
            self.state.total += payload["n"]
            return self.state.total
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple, TypeVar

from pydantic import BaseModel

F = TypeVar("F", bound=Callable[..., Any])


TENANT_SEP = "~"
"""Between a tenant and its own id in an actor id (`<type>/<tenant>~<id>`, the service's
naming: runtime/service/tenancy.py)."""


class ActorRef(NamedTuple):
    type: str
    id: str

    def __str__(self) -> str:
        return f"{self.type}/{self.id}"

    @classmethod
    def parse(cls, key: str) -> ActorRef:
        type_, sep, id_ = key.partition("/")
        if not sep or not type_ or not id_:
            raise ValueError(f"actor address {key!r} must look like 'type/id'")
        return cls(type_, id_)


def handler(fn: F | None = None, *, name: str | None = None) -> Any:
    """Mark an `async def h(self, ctx, payload)` as a message handler (optionally renamed)."""

    def mark(f: F) -> F:
        if not inspect.iscoroutinefunction(f):
            raise TypeError(f"handler {f.__qualname__} must be an async def")
        f._loom_handler = name or f.__name__  # type: ignore[attr-defined]
        return f

    return mark(fn) if fn is not None else mark


def invariant(fn: F) -> F:
    """Mark `def check(self, before, after, events) -> bool | str | None` as a commit-time
    invariant. Return False or a message to refuse the step; it must be pure."""
    fn._loom_invariant = fn.__name__  # type: ignore[attr-defined]
    return fn


class Actor:
    """Base class of durable actors. One live activation per (type, id)."""

    type_name: ClassVar[str]
    State: ClassVar[type[BaseModel] | None] = None
    handlers: ClassVar[dict[str, str]]
    invariants: ClassVar[dict[str, str]]
    state: Any

    def __init_subclass__(cls, type_name: str | None = None, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        cls.type_name = type_name or getattr(cls, "type_name", None) or cls.__name__.lower()
        if "/" in cls.type_name:
            raise ValueError(f"actor type name {cls.type_name!r} must not contain '/'")
        cls.handlers = {}
        cls.invariants = {}
        for klass in reversed(cls.__mro__):
            for attr, value in vars(klass).items():
                if hasattr(value, "_loom_handler"):
                    cls.handlers[value._loom_handler] = attr
                if hasattr(value, "_loom_invariant"):
                    cls.invariants[value._loom_invariant] = attr

    def initial_state(self) -> Any:
        """The state of a never-seen actor. Override for a non-empty default."""
        return self.State() if self.State is not None else {}

    def dump_state(self) -> Any:
        if isinstance(self.state, BaseModel):
            return self.state.model_dump(mode="json")
        return self.state

    def load_state(self, data: Any) -> None:
        self.state = self.State.model_validate(data) if self.State is not None else data
