"""Actors the service tests run inside `loom serve --module tests/service_actors.py`: the
demo's counter (`runtime/service/demo_actors.py`)."""

from __future__ import annotations

from runtime.service import demo_actors


class Counter(demo_actors.Counter, type_name="counter"):
    """add, tick, echo (the `echo` activity), boom (fails), park (waits for `go`)."""
