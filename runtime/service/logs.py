"""Opt-in structured logs (`loom serve --json-logs`): one JSON object per line with the
logger, level, message, the current trace id, and whatever `extra=` fields a record carries
(actor, seq, idempotency_key, tenant, request)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

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
        for name in FIELDS:
            if hasattr(record, name):
                doc[name] = getattr(record, name)
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
    _ = time
    return handler
