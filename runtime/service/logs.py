"""Opt-in structured logs (`loom serve --json-logs`, `LOOM_JSON_LOGS=1 loom worker`): one JSON
object per line with the logger, level, message, the current trace id, and the fields a
record carries in `extra=` (actor, seq, idempotency_key, tenant, request) or, failing that,
the current span does as `loom.*` attributes: a guest's log line inside an activity span
gets its actor and idempotency key, a turn's line its actor and seq."""

from __future__ import annotations

import json
import logging
from typing import Any

from opentelemetry import trace

from runtime.service import tracing

FIELDS = ("actor", "seq", "idempotency_key", "tenant", "activity", "request_id", "route",
          "status", "msg_id")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {"ts": round(record.created, 6), "level": record.levelname.lower(),
                               "logger": record.name, "message": record.getMessage()}
        trace_id = tracing.trace_id()
        if trace_id:
            doc["trace_id"] = trace_id
        attributes = getattr(trace.get_current_span(), "attributes", None) or {}
        for name in FIELDS:
            if getattr(record, name, None) is not None:
                doc[name] = getattr(record, name)
            elif attributes.get(f"loom.{name}") not in (None, ""):
                doc[name] = attributes[f"loom.{name}"]
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def use_json_logs(stream: Any = None) -> logging.Handler:
    """Replace the root logger's handlers with one JSON handler; returns it."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    return handler
